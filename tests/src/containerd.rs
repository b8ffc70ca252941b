//! A real containerd container for integration tests, driven through the `ctr` CLI.
//!
//! The container stands in for a Kubernetes pod's container: it carries the labels the CRI plugin
//! sets (`io.kubernetes.pod.namespace`, `io.kubernetes.pod.name`, `io.kubernetes.container.name`)
//! and lives in the CRI namespace `k8s.io` by default, so the agent can resolve
//! `pod:NS/NAME/CONTAINER` and `container:ID` against it. No image registry is reachable, so the
//! root filesystem is a per-container directory holding the static busybox and its applet links.
//!
//! Dropping a [`TestContainer`] kills its task and removes task, container and rootfs; it never
//! panics, so it is safe on a failing test's unwinding path.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::command::{CommandOutput, run_bounded};

/// Where the fixtures expect containerd (the `ctr` default).
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The namespace Kubernetes' CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The static busybox from Debian's `busybox-static`, copied into every rootfs.
pub const BUSYBOX: &str = "/bin/busybox";

pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Upper bound for one `ctr` call; generous because the VM runs 5-20x slower.
const CTR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long teardown waits for a killed task to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const STATUS_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The container has no image config, so it gets no PATH unless we give it one.
const CONTAINER_PATH_ENV: &str = "PATH=/bin:/sbin:/usr/bin:/usr/sbin";

/// What to run. `Default` gives a `chaos-test` pod in the `k8s.io` namespace sleeping forever.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// containerd namespace (`-n`); `k8s.io` is what the CRI plugin uses.
    pub runtime_namespace: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub container_name: String,
    /// argv inside the container; empty means `/bin/sleep infinity`. Every busybox applet is
    /// on PATH (`/bin`), e.g. `sh`, `sleep`, `httpd`, `nc`, `ip`.
    pub command: Vec<String>,
    /// CFS quota in CPUs (`ctr run --cpus`).
    pub cpus: Option<f64>,
    /// Memory limit in bytes (`ctr run --memory-limit`).
    pub memory_limit_bytes: Option<u64>,
    /// A network namespace to join instead of a fresh one (`--with-ns network:PATH`), the way a
    /// CNI plugin hands a pod its network; see [`crate::netns::TestNetns::path`].
    pub netns: Option<PathBuf>,
    /// A cgroup path to create the container's cgroup under (`ctr run --cgroup PARENT/ID`),
    /// the way a pod's cgroup holds its containers; None: containerd's `/<namespace>/<id>`.
    pub cgroup_parent: Option<String>,
    /// Host directories bind-mounted read-write into the container: (host path, path
    /// inside), as a pod's volumes are.
    pub bind_mounts: Vec<(PathBuf, String)>,
    /// Host directories bind-mounted read-only: (host path, path inside), e.g. the host's
    /// libraries for a program that is not busybox.
    pub read_only_mounts: Vec<(PathBuf, String)>,
}

impl Default for ContainerSpec {
    fn default() -> Self {
        ContainerSpec {
            runtime_namespace: CRI_NAMESPACE.to_string(),
            pod_namespace: "chaos-test".to_string(),
            pod_name: "chaos-test-pod".to_string(),
            container_name: "main".to_string(),
            command: Vec::new(),
            cpus: None,
            memory_limit_bytes: None,
            netns: None,
            cgroup_parent: None,
            bind_mounts: Vec::new(),
            read_only_mounts: Vec::new(),
        }
    }
}

impl ContainerSpec {
    /// A spec for container `container` of pod `namespace/name`, otherwise default.
    pub fn pod(namespace: &str, name: &str, container: &str) -> ContainerSpec {
        ContainerSpec {
            pod_namespace: namespace.to_string(),
            pod_name: name.to_string(),
            container_name: container.to_string(),
            ..ContainerSpec::default()
        }
    }

    fn argv(&self) -> Vec<String> {
        if self.command.is_empty() {
            vec!["/bin/sleep".to_string(), "infinity".to_string()]
        } else {
            self.command.clone()
        }
    }
}

/// A running container; removed with everything it owns on drop.
#[derive(Debug)]
pub struct TestContainer {
    /// containerd container id, also the task id: `chaos-test-<12 hex>`.
    pub id: String,
    pub runtime_namespace: String,
    pub spec: ContainerSpec,
    /// Holds `rootfs/` and `stdio.log` (the container's stdout and stderr).
    workdir: TempDir,
}

impl TestContainer {
    /// Creates and starts a detached container (`ctr run -d --rootfs`) with a unique id.
    pub fn start(spec: ContainerSpec) -> Result<TestContainer> {
        ensure_containerd()?;
        let id = format!(
            "chaos-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let workdir = tempfile::Builder::new()
            .prefix("chaos-test-container-")
            .tempdir()
            .context("creating the container's work directory")?;
        let rootfs = workdir.path().join("rootfs");
        build_busybox_rootfs(&rootfs)?;

        // Built before `ctr run` so that a half-created container is still removed on failure.
        let container = TestContainer {
            id,
            runtime_namespace: spec.runtime_namespace.clone(),
            spec,
            workdir,
        };
        let args = run_args(
            &container.spec,
            &container.id,
            &rootfs,
            &container.log_path(),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctr(&container.runtime_namespace, &args)?.check()?;
        container.wait_started(Duration::from_secs(30))?;
        Ok(container)
    }

    /// `container:<id>` in the form the agent's target syntax accepts.
    pub fn target(&self) -> String {
        format!("container:{}", self.id)
    }

    /// `pod:<namespace>/<name>/<container>` as the agent's target syntax spells it.
    pub fn pod_target(&self) -> String {
        format!(
            "pod:{}/{}/{}",
            self.spec.pod_namespace, self.spec.pod_name, self.spec.container_name
        )
    }

    /// The task's init process as the host sees it (from `ctr task ls`).
    pub fn pid(&self) -> Result<u32> {
        match task_row(&self.runtime_namespace, &self.id)? {
            Some(row) if row.pid > 0 => Ok(row.pid),
            Some(row) => bail!("task {} has no process (status {})", self.id, row.status),
            None => bail!("task {} is absent", self.id),
        }
    }

    /// `RUNNING`, `STOPPED`, `CREATED`, `PAUSED`, ... or `absent` when there is no task.
    pub fn task_status(&self) -> Result<String> {
        task_status(&self.runtime_namespace, &self.id)
    }

    /// Polls the task status until it equals `want` (case-insensitive), at most `timeout`.
    pub fn wait_status(&self, want: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.task_status()?;
            if status.eq_ignore_ascii_case(want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "task {} is {status}, not {want}, after {timeout:?}; its output: {}",
                    self.id,
                    self.log().unwrap_or_default().trim()
                );
            }
            std::thread::sleep(STATUS_POLL_INTERVAL);
        }
    }

    /// `ctr run -d` returns once the task is started; a short-lived command may already have
    /// exited, so RUNNING and STOPPED both count as started.
    fn wait_started(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.task_status()?;
            if status == "RUNNING" || status == "STOPPED" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "task {} is {status} {timeout:?} after `ctr run -d`",
                    self.id
                );
            }
            std::thread::sleep(STATUS_POLL_INTERVAL);
        }
    }

    /// Runs `argv` inside the running container (`ctr task exec`), bounded in time.
    /// The result carries the exit status; call `.check()` to require success.
    pub fn exec(&self, argv: &[&str]) -> Result<CommandOutput> {
        let exec_id = format!(
            "chaos-test-exec-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut args = vec!["task", "exec", "--exec-id", &exec_id, &self.id];
        args.extend_from_slice(argv);
        ctr(&self.runtime_namespace, &args)
    }

    /// The cgroup lines of the task's process, as the kernel shows them in /proc/PID/cgroup.
    pub fn cgroup_memberships(&self) -> Result<Vec<CgroupMembership>> {
        cgroup_memberships_of_pid(self.pid()?)
    }

    /// The container's cgroup path as the kernel shows it, e.g. `/k8s.io/chaos-test-…`: on
    /// cgroup v1 the path in the `cpu` hierarchy (where runc writes the limits), on v2 the
    /// unified path.
    pub fn cgroup_path(&self) -> Result<String> {
        Ok(container_cgroup(&self.cgroup_memberships()?)?.path.clone())
    }

    /// The container's cgroup directory in the mounted cgroupfs, e.g.
    /// `/sys/fs/cgroup/cpu/k8s.io/<id>` (v1) or `/sys/fs/cgroup/k8s.io/<id>` (v2).
    pub fn cgroup_dir(&self) -> Result<PathBuf> {
        cgroup_dir_of_pid(self.pid()?)
    }

    /// Whether the kernel shows the container's cgroup frozen: v1 `freezer.state` is
    /// FROZEN, or cgroup2's `cgroup.events` says `frozen 1`.
    pub fn is_frozen(&self) -> Result<bool> {
        let (dir, v1) = freezer_dir_of_pid(self.pid()?)?;
        if v1 {
            let state = fs::read_to_string(dir.join("freezer.state"))?;
            return Ok(state.trim() == "FROZEN");
        }
        let events = fs::read_to_string(dir.join("cgroup.events"))?;
        Ok(events.lines().any(|line| line.trim() == "frozen 1"))
    }

    /// What the container wrote to stdout and stderr so far.
    pub fn log(&self) -> Result<String> {
        let path = self.log_path();
        match fs::read(&path) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.workdir.path().join("stdio.log")
    }

    /// Kill, wait for the stop, remove task and container. Errors are collected, not raised,
    /// so every step is attempted.
    fn teardown(&self) -> Vec<String> {
        let namespace = &self.runtime_namespace;
        let mut problems = Vec::new();
        if !matches!(self.task_status().as_deref(), Ok("absent")) {
            let _ = ctr(namespace, &["task", "kill", "-s", "KILL", &self.id]);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                match self.task_status().as_deref() {
                    Ok("STOPPED") | Ok("absent") => break,
                    _ => std::thread::sleep(STATUS_POLL_INTERVAL),
                }
            }
            if let Err(error) =
                ctr(namespace, &["task", "rm", "-f", &self.id]).and_then(CommandOutput::check)
            {
                problems.push(error.to_string());
            }
        }
        // A failed `ctr run` may never have created the container: "not found" is fine.
        if let Err(error) =
            ctr(namespace, &["container", "rm", &self.id]).and_then(CommandOutput::check)
            && !error.to_string().contains("not found")
        {
            problems.push(error.to_string());
        }
        problems
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        for problem in self.teardown() {
            eprintln!("chaos-tests: cleaning up container {}: {problem}", self.id);
        }
        // The TempDir field then removes the rootfs and the log.
    }
}

/// `run -d [flags] --rootfs ROOTFS ID ARGV...`: `--rootfs` is a switch, so every flag goes
/// before the rootfs directory, which is the first positional argument.
fn run_args(spec: &ContainerSpec, id: &str, rootfs: &Path, log_path: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), "-d".into()];
    for (key, value) in [
        (LABEL_POD_NAMESPACE, &spec.pod_namespace),
        (LABEL_POD_NAME, &spec.pod_name),
        (LABEL_CONTAINER_NAME, &spec.container_name),
    ] {
        args.push("--label".into());
        args.push(format!("{key}={value}"));
    }
    args.push("--env".into());
    args.push(CONTAINER_PATH_ENV.into());
    // The task's stdout/stderr go to a file: `ctr run -d` exits at once, so nobody would
    // read a FIFO, and the log helps when a test fails.
    args.push("--log-uri".into());
    args.push(format!("file://{}", log_path.display()));
    if let Some(cpus) = spec.cpus {
        args.push("--cpus".into());
        args.push(cpus.to_string());
    }
    if let Some(bytes) = spec.memory_limit_bytes {
        args.push("--memory-limit".into());
        args.push(bytes.to_string());
    }
    if let Some(netns) = &spec.netns {
        args.push("--with-ns".into());
        args.push(format!("network:{}", netns.display()));
    }
    if let Some(parent) = &spec.cgroup_parent {
        args.push("--cgroup".into());
        args.push(format!("{}/{id}", parent.trim_end_matches('/')));
    }
    let mounts = (spec.bind_mounts.iter().map(|m| (m, "rw")))
        .chain(spec.read_only_mounts.iter().map(|m| (m, "ro")));
    for ((host, inside), mode) in mounts {
        args.push("--mount".into());
        args.push(format!(
            "type=bind,src={},dst={inside},options=rbind:{mode}",
            host.display()
        ));
    }
    args.push("--rootfs".into());
    args.push(rootfs.display().to_string());
    args.push(id.to_string());
    args.extend(spec.argv());
    args
}

/// Fails with a clear message unless containerd answers on [`CONTAINERD_SOCKET`].
pub fn ensure_containerd() -> Result<()> {
    let output = run_bounded(
        "ctr",
        &[
            "--address",
            CONTAINERD_SOCKET,
            "--connect-timeout",
            "3s",
            "--timeout",
            "10s",
            "version",
        ],
        Duration::from_secs(15),
    )
    .context("running `ctr version` (apt-get install containerd runc)")?;
    if !output.success() || !output.stdout.contains("Server:") {
        bail!(
            "containerd does not answer on {CONTAINERD_SOCKET}: {}. These tests need a running \
             containerd; `scripts/test` starts one (or run `containerd >/tmp/containerd.log 2>&1 &` as root)",
            output.stderr.trim()
        );
    }
    Ok(())
}

/// Runs `ctr -n NAMESPACE ARGS...` against [`CONTAINERD_SOCKET`], bounded in time.
pub fn ctr(namespace: &str, args: &[&str]) -> Result<CommandOutput> {
    let timeout = format!("{}s", CTR_TIMEOUT.as_secs());
    let mut full = vec![
        "--address",
        CONTAINERD_SOCKET,
        "--timeout",
        &timeout,
        "-n",
        namespace,
    ];
    full.extend_from_slice(args);
    run_bounded("ctr", &full, CTR_TIMEOUT + Duration::from_secs(5))
}

/// A task's status by id: `RUNNING`, `STOPPED`, ... or `absent`. Works after the fixture is gone.
pub fn task_status(namespace: &str, id: &str) -> Result<String> {
    Ok(task_row(namespace, id)?.map_or_else(|| "absent".to_string(), |row| row.status))
}

/// Whether containerd still knows container `id` (`ctr container ls -q`).
pub fn container_exists(namespace: &str, id: &str) -> Result<bool> {
    let output = ctr(namespace, &["container", "ls", "-q"])?.check()?;
    Ok(output.stdout.lines().any(|line| line.trim() == id))
}

/// The labels containerd stores for container `id` (from `ctr container info`).
pub fn container_labels(
    namespace: &str,
    id: &str,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let output = ctr(namespace, &["container", "info", id])?.check()?;
    let info: serde_json::Value =
        serde_json::from_str(&output.stdout).context("parsing `ctr container info` JSON")?;
    match info.get("Labels") {
        Some(serde_json::Value::Object(labels)) => Ok(labels.clone()),
        Some(serde_json::Value::Null) | None => Ok(serde_json::Map::new()),
        Some(other) => bail!("unexpected Labels in `ctr container info`: {other}"),
    }
}

struct TaskRow {
    pid: u32,
    status: String,
}

/// Finds `id` in `ctr task ls` (columns TASK, PID, STATUS).
fn task_row(namespace: &str, id: &str) -> Result<Option<TaskRow>> {
    let output = ctr(namespace, &["task", "ls"])?.check()?;
    Ok(parse_task_ls(&output.stdout, id))
}

fn parse_task_ls(table: &str, id: &str) -> Option<TaskRow> {
    table.lines().skip(1).find_map(|line| {
        let mut columns = line.split_whitespace();
        if columns.next()? != id {
            return None;
        }
        let pid = columns.next()?.parse().ok()?;
        let status = columns.next()?.to_string();
        Some(TaskRow { pid, status })
    })
}

/// Writes a minimal root filesystem: `/bin/busybox`, a link per applet, and the mount points.
fn build_busybox_rootfs(rootfs: &Path) -> Result<()> {
    let bin = rootfs.join("bin");
    for dir in [
        &bin,
        &rootfs.join("proc"),
        &rootfs.join("sys"),
        &rootfs.join("dev"),
        &rootfs.join("tmp"),
        &rootfs.join("etc"),
    ] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(BUSYBOX, bin.join("busybox"))
        .with_context(|| format!("copying {BUSYBOX} (apt-get install busybox-static)"))?;
    for applet in busybox_applets()? {
        if applet != "busybox" {
            symlink("busybox", bin.join(&applet))
                .with_context(|| format!("linking applet {applet}"))?;
        }
    }
    // Some applets (httpd, id, ps) look users up.
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")
        .context("writing /etc/passwd")?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").context("writing /etc/group")?;
    Ok(())
}

fn busybox_applets() -> Result<Vec<String>> {
    let output = run_bounded(BUSYBOX, &["--list"], Duration::from_secs(10))?.check()?;
    Ok(output
        .stdout
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .map(String::from)
        .collect())
}

/// One line of /proc/PID/cgroup: `hierarchy-ID:controller-list:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMembership {
    pub hierarchy_id: u32,
    /// Empty for the unified (v2) hierarchy; `name=systemd` style names are kept as they are.
    pub controllers: Vec<String>,
    pub path: String,
}

impl CgroupMembership {
    pub fn is_unified(&self) -> bool {
        self.hierarchy_id == 0 && self.controllers.is_empty()
    }
}

/// Parses /proc/PID/cgroup.
pub fn cgroup_memberships_of_pid(pid: u32) -> Result<Vec<CgroupMembership>> {
    let path = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_proc_cgroup(&text)
}

fn parse_proc_cgroup(text: &str) -> Result<Vec<CgroupMembership>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                bail!("malformed /proc/PID/cgroup line {line:?}");
            };
            Ok(CgroupMembership {
                hierarchy_id: id
                    .parse()
                    .with_context(|| format!("hierarchy id in {line:?}"))?,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The membership that holds a container's limits: the v1 `cpu` hierarchy when there is one
/// (hybrid hosts), else the unified hierarchy (pure v2).
fn container_cgroup(memberships: &[CgroupMembership]) -> Result<&CgroupMembership> {
    memberships
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == "cpu"))
        .or_else(|| memberships.iter().find(|m| m.is_unified()))
        .context("process is in neither a v1 cpu cgroup nor the unified hierarchy")
}

/// The directory of `pid`'s container cgroup in the mounted cgroupfs (see [`TestContainer::cgroup_dir`]).
pub fn cgroup_dir_of_pid(pid: u32) -> Result<PathBuf> {
    let memberships = cgroup_memberships_of_pid(pid)?;
    let membership = container_cgroup(&memberships)?;
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mount = cgroup_mount_point(&mountinfo, membership)
        .with_context(|| format!("no cgroupfs mount for {membership:?}"))?;
    Ok(mount.join(membership.path.trim_start_matches('/')))
}

/// The directory of `pid`'s freezer and whether it is v1: the v1 `freezer` hierarchy
/// where there is one, else the cgroup2 directory.
pub fn freezer_dir_of_pid(pid: u32) -> Result<(PathBuf, bool)> {
    controller_dir_of_pid(pid, "freezer")
}

/// The directory of `pid`'s cgroup for a controller and whether it is v1: the v1
/// hierarchy of `v1_controller` (`freezer`, `blkio`) where there is one, else the cgroup2
/// directory.
pub fn controller_dir_of_pid(pid: u32, v1_controller: &str) -> Result<(PathBuf, bool)> {
    let memberships = cgroup_memberships_of_pid(pid)?;
    let (membership, v1) = match memberships
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == v1_controller))
    {
        Some(freezer) => (freezer, true),
        None => (
            memberships
                .iter()
                .find(|m| m.is_unified())
                .with_context(|| {
                    format!("neither a v1 {v1_controller} nor a cgroup2 membership")
                })?,
            false,
        ),
    };
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mount = cgroup_mount_point(&mountinfo, membership)
        .with_context(|| format!("no cgroupfs mount for {membership:?}"))?;
    Ok((mount.join(membership.path.trim_start_matches('/')), v1))
}

/// Finds where the hierarchy of `membership` is mounted: a `cgroup2` mount for the unified one,
/// a `cgroup` mount whose super options list the controllers for v1.
fn cgroup_mount_point(mountinfo: &str, membership: &CgroupMembership) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_root = before.split_whitespace().nth(3)?;
        let mount_point = before.split_whitespace().nth(4)?;
        let mut after = after.split_whitespace();
        let fs_type = after.next()?;
        let _source = after.next()?;
        let super_options: Vec<&str> = after.next()?.split(',').collect();
        // Only a mount of the hierarchy's root maps cgroup paths one to one.
        if mount_root != "/" {
            return None;
        }
        let matches = if membership.is_unified() {
            fs_type == "cgroup2"
        } else {
            fs_type == "cgroup"
                && membership
                    .controllers
                    .iter()
                    .all(|c| super_options.contains(&c.as_str()))
        };
        matches.then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_args_put_every_flag_before_the_rootfs() {
        let spec = ContainerSpec {
            cpus: Some(0.5),
            memory_limit_bytes: Some(64 << 20),
            netns: Some(PathBuf::from("/var/run/netns/chaos-test-x")),
            cgroup_parent: Some("/chaos-test-parent/".into()),
            bind_mounts: vec![(PathBuf::from("/tmp/d"), "/data".into())],
            read_only_mounts: vec![(PathBuf::from("/usr/lib"), "/lib".into())],
            command: vec!["/bin/sh".into(), "-c".into(), "sleep 5".into()],
            ..ContainerSpec::pod("dev", "db-0", "db")
        };
        let args = run_args(
            &spec,
            "chaos-test-abc",
            Path::new("/r"),
            Path::new("/w/stdio.log"),
        );
        let rootfs_at = args.iter().position(|a| a == "--rootfs").unwrap();
        assert_eq!(
            &args[rootfs_at + 1..],
            ["/r", "chaos-test-abc", "/bin/sh", "-c", "sleep 5"]
        );
        for flag in [
            "--label",
            "--cpus",
            "--memory-limit",
            "--with-ns",
            "--cgroup",
            "--env",
            "--log-uri",
            "--mount",
        ] {
            assert!(
                args[..rootfs_at].contains(&flag.to_string()),
                "{flag} missing before --rootfs: {args:?}"
            );
        }
        assert!(args.contains(&"io.kubernetes.pod.namespace=dev".to_string()));
        assert!(args.contains(&"io.kubernetes.pod.name=db-0".to_string()));
        assert!(args.contains(&"io.kubernetes.container.name=db".to_string()));
        assert!(args.contains(&"network:/var/run/netns/chaos-test-x".to_string()));
        assert!(args.contains(&"67108864".to_string()));
        assert!(args.contains(&"/chaos-test-parent/chaos-test-abc".to_string()));
        assert!(args.contains(&"type=bind,src=/tmp/d,dst=/data,options=rbind:rw".to_string()));
        assert!(args.contains(&"type=bind,src=/usr/lib,dst=/lib,options=rbind:ro".to_string()));
    }

    #[test]
    fn parses_task_ls() {
        let table = "TASK     PID     STATUS    \nchaos-test-a    4947    RUNNING\nchaos-test-b    0    STOPPED\n";
        let row = parse_task_ls(table, "chaos-test-a").unwrap();
        assert_eq!((row.pid, row.status.as_str()), (4947, "RUNNING"));
        assert_eq!(
            parse_task_ls(table, "chaos-test-b").unwrap().status,
            "STOPPED"
        );
        assert!(parse_task_ls(table, "chaos-test").is_none());
    }

    const HYBRID_CGROUP: &str =
        "9:name=systemd:/k8s.io/c1\n4:memory:/k8s.io/c1\n2:cpu,cpuacct:/k8s.io/c1\n0::/k8s.io/c1\n";
    const HYBRID_MOUNTINFO: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

    #[test]
    fn picks_the_v1_cpu_hierarchy_on_a_hybrid_host() {
        let memberships = parse_proc_cgroup(HYBRID_CGROUP).unwrap();
        let chosen = container_cgroup(&memberships).unwrap();
        assert_eq!(chosen.controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            cgroup_mount_point(HYBRID_MOUNTINFO, chosen).unwrap(),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
    }

    #[test]
    fn picks_the_unified_hierarchy_on_v2() {
        let memberships = parse_proc_cgroup("0::/k8s.io/c1\n").unwrap();
        let chosen = container_cgroup(&memberships).unwrap();
        assert!(chosen.is_unified());
        let mountinfo = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup_mount_point(mountinfo, chosen).unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
    }
}
