//! CPU and memory faults through a real agent against real containerd containers with
//! limits. Every level is measured from the container's own cgroup accounting (cpuacct /
//! cpu.stat, memory usage), not from what the agent reports, and the agent's status is
//! checked against it.
//!
//! The CPU measurements share the machine with whatever else runs: the tests that measure CPU
//! hold an exclusive file lock so that they do not load the two cores against each other.
//!
//! The safety tests start the agent with the `oom_score_adj` a `system-node-critical` pod gets
//! (-997), which a stressor would inherit, and read back what the kernel holds: the stressors'
//! scores, who the OOM killer took under a shared parent limit, and that a refused request
//! left no stressor and no fault behind.

use chaos_tests::accounting::{Accounting, CpuLock, CpuWindow};
use chaos_tests::agent::state_dir;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chaos_proto::api;
use chaos_tests::agent::{AgentOptions, TestAgent, journal_len, make_certs};
use chaos_tests::containerd::{ContainerSpec, TestContainer};

const MIB: u64 = 1 << 20;

fn cpu_request(
    target: &str,
    load: u32,
    mode: api::CpuMode,
    duration: Duration,
) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Cpu(api::CpuFault {
            load_percent: load,
            cores: 0,
            mode: mode as i32,
        })),
        ..Default::default()
    }
}

fn memory_request(target: &str, size: u64, percent: u32, duration: Duration) -> api::InjectRequest {
    memory_fault_request(
        target,
        api::MemoryFault {
            size_bytes: size,
            percent,
            ..Default::default()
        },
        duration,
    )
}

fn memory_fault_request(
    target: &str,
    fault: api::MemoryFault,
    duration: Duration,
) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Memory(fault)),
        ..Default::default()
    }
}

fn dry_run(mut request: api::InjectRequest) -> api::InjectRequest {
    request.dry_run = true;
    request
}

async fn inject(agent: &TestAgent, request: api::InjectRequest) -> Result<api::Fault> {
    chaos_tests::agent::inject_fault(&mut agent.client().await?, request).await
}

/// The status an inject that must be refused got; an error if it was accepted.
async fn refused(agent: &TestAgent, request: api::InjectRequest) -> Result<tonic::Status> {
    let mut client = agent.client().await?;
    match client.inject(request).await {
        Ok(answer) => bail!("accepted: {:?}", answer.into_inner().fault),
        Err(status) => Ok(status),
    }
}

/// A refusal changed nothing: no stressor runs, no fault is listed or journaled.
async fn assert_nothing_changed(agent: &TestAgent, state: &Path) -> Result<()> {
    let stressors = stressors_of(agent.pid());
    assert!(stressors.is_empty(), "stressors started: {stressors:?}");
    let mut client = agent.client().await?;
    let faults = client
        .list(api::ListRequest {
            include_ended: true,
        })
        .await?
        .into_inner()
        .faults;
    assert!(faults.is_empty(), "{faults:?}");
    assert_eq!(journal_len(state), 0);
    Ok(())
}

async fn get(agent: &TestAgent, id: &str) -> Result<api::Fault> {
    let mut client = agent.client().await?;
    Ok(client
        .get(api::GetRequest { id: id.into() })
        .await?
        .into_inner())
}

/// Reverts `id` and waits for the agent's stressors to be gone, at most 2 s (scaled).
async fn revert_and_await_stressors(agent: &TestAgent, id: &str) -> Result<()> {
    let mut client = agent.client().await?;
    client
        .revert(api::RevertRequest {
            id: id.into(),
            all: false,
        })
        .await?;
    let reverted = Instant::now();
    while stressors_of(agent.pid()).iter().any(|p| alive(*p)) {
        assert!(
            reverted.elapsed() < chaos_tests::scaled(Duration::from_secs(2)),
            "a stressor outlived the revert by 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn cpu_status(fault: &api::Fault) -> api::CpuStatus {
    match &fault.status {
        Some(api::fault::Status::Cpu(c)) => *c,
        other => panic!("no cpu status: {other:?}"),
    }
}

fn memory_status(fault: &api::Fault) -> api::MemoryStatus {
    match &fault.status {
        Some(api::fault::Status::Memory(m)) => *m,
        other => panic!("no memory status: {other:?}"),
    }
}

/// Stressor processes the agent started (its children running the `stress` subcommand).
fn stressors_of(agent_pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_stressor = args.iter().any(|a| *a == b"stress");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            is_stressor && ppid == Some(agent_pid)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes (it holds no CPU or memory).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The agent's `oom_score_adj` as `priorityClassName: system-node-critical` sets it; the
/// stressors it starts from now on inherit it unless the agent changes theirs.
const NODE_CRITICAL_OOM_SCORE_ADJ: i32 = -997;

/// Gives the agent the node-critical score. Lowering a score needs CAP_SYS_RESOURCE, which
/// the VM's root has; a sandbox without it (this build host) keeps the agent at the test's
/// own score, said in the output. Returns the agent's score.
fn make_node_critical(agent: &TestAgent) -> Result<i32> {
    let file = format!("/proc/{}/oom_score_adj", agent.pid());
    match std::fs::write(&file, NODE_CRITICAL_OOM_SCORE_ADJ.to_string()) {
        Ok(()) => assert_eq!(oom_score_adj(agent.pid())?, NODE_CRITICAL_OOM_SCORE_ADJ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => println!(
            "cannot lower the agent's oom_score_adj here (no CAP_SYS_RESOURCE): it keeps {}",
            oom_score_adj(agent.pid())?
        ),
        Err(e) => return Err(e).with_context(|| format!("writing {file}")),
    }
    oom_score_adj(agent.pid())
}

fn oom_score_adj(pid: u32) -> Result<i32> {
    read_proc_number(pid, "oom_score_adj")
}

/// The kernel's own OOM badness of the process (`/proc/PID/oom_score`, 0..=2000): the
/// OOM killer takes the highest.
fn oom_score(pid: u32) -> Result<i32> {
    read_proc_number(pid, "oom_score")
}

fn read_proc_number(pid: u32, file: &str) -> Result<i32> {
    let path = format!("/proc/{pid}/{file}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{path}: {text:?}"))
}

/// Resident anonymous memory of a process; None once it is gone (or a zombie).
fn resident_anon(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The container's processes named `comm`, from its own cgroup.
fn processes_named(container: &TestContainer, comm: &str) -> Result<Vec<u32>> {
    let procs = std::fs::read_to_string(container.cgroup_dir()?.join("cgroup.procs"))?;
    Ok(procs
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .collect())
}

/// A cgroup the test makes to hold containers under one memory limit, as a pod's cgroup
/// holds its containers (`ctr run --cgroup PARENT/ID` puts them under it). v2: one directory
/// with `memory.max` (and no swap); v1: one under the memory hierarchy with
/// `memory.limit_in_bytes`, runc makes it in the other hierarchies. Declare it before the
/// containers so that they are gone when it drops: it then removes its directory from
/// every hierarchy, also after a failed test.
struct SharedParent {
    name: String,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl SharedParent {
    fn create(memory_limit: u64) -> Result<SharedParent> {
        let parent = SharedParent {
            name: format!(
                "chaos-test-parent-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        };
        let root = Path::new(CGROUP_ROOT);
        let v2 = root.join("cgroup.controllers").is_file();
        let dir = if v2 {
            root.join(&parent.name)
        } else {
            root.join("memory").join(&parent.name)
        };
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if v2 {
            std::fs::write(dir.join("memory.max"), memory_limit.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                std::fs::write(swap, "0")?;
            }
        } else {
            std::fs::write(dir.join("memory.limit_in_bytes"), memory_limit.to_string())?;
        }
        Ok(parent)
    }

    /// The cgroup path containers are created under.
    fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Every directory of this parent: one per hierarchy (v1), or the one (v2).
    fn directories(&self) -> Vec<PathBuf> {
        let root = Path::new(CGROUP_ROOT);
        let mut dirs = vec![root.join(&self.name)];
        if let Ok(entries) = std::fs::read_dir(root) {
            dirs.extend(
                entries
                    .flatten()
                    .map(|e| e.path().join(&self.name))
                    .filter(|d| d.is_dir()),
            );
        }
        dirs.retain(|d| d.is_dir());
        dirs
    }
}

impl Drop for SharedParent {
    fn drop(&mut self) {
        for dir in self.directories() {
            // A container's cgroup that runc could not remove goes first; rmdir of a cgroup
            // whose last tasks are still exiting is EBUSY for a moment: retry, bounded.
            let mut leftovers: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            leftovers.push(dir);
            for cgroup in leftovers {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match std::fs::remove_dir(&cgroup) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(e) if Instant::now() >= deadline => {
                            eprintln!("cleanup: cannot remove {}: {e}", cgroup.display());
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
        }
    }
}

fn container_under(parent: &SharedParent, command: &[&str]) -> Result<TestContainer> {
    TestContainer::start(ContainerSpec {
        cgroup_parent: Some(parent.path()),
        command: command.iter().map(|a| a.to_string()).collect(),
        ..ContainerSpec::default()
    })
}

fn one_cpu_container(memory: Option<u64>) -> Result<TestContainer> {
    TestContainer::start(ContainerSpec {
        cpus: Some(1.0),
        memory_limit_bytes: memory,
        ..ContainerSpec::default()
    })
}

/// A CPU load inside a container's cgroup that is not the agent's fault: the agent binary's
/// own stressor in `add` mode, run by the test (so the agent sees a workload process, not one
/// of its stressors), which joins the container's cgroups between fork and exec. Ours, not
/// stress-ng: its closed loop holds the level under the VM's emulation, where stress-ng's
/// open-loop `--cpu-load 30` measured 66 % (ci10). Killed on drop.
struct BackgroundLoad(std::process::Child, tempfile::NamedTempFile);

impl BackgroundLoad {
    fn in_container(
        container: &TestContainer,
        percent: u32,
        duration: Duration,
    ) -> Result<BackgroundLoad> {
        let root = std::path::Path::new("/sys/fs/cgroup");
        let procs: Vec<std::path::PathBuf> = container
            .cgroup_memberships()?
            .into_iter()
            .filter_map(|m| {
                let relative = m.path.trim_start_matches('/').to_string();
                let dir = if m.is_unified() {
                    root.join(&relative)
                } else {
                    let controller = m.controllers.iter().find(|c| !c.starts_with("name="))?;
                    root.join(controller).join(&relative)
                };
                let file = dir.join("cgroup.procs");
                file.exists().then_some(file)
            })
            .collect();
        anyhow::ensure!(!procs.is_empty(), "no cgroup of the container to join");
        // Its output goes to a file a failure can show.
        let log = tempfile::NamedTempFile::new()?;
        let mut command = std::process::Command::new(chaos_tests::agent::binary("chaos-agent")?);
        command
            .args([
                "stress",
                "cpu",
                "--mode",
                "add",
                "--percent",
                &percent.to_string(),
            ])
            .args(["--duration-ms", &duration.as_millis().to_string()])
            .args(["--parent", &std::process::id().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?);
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only open, write and close run here (std puts a
        // short path's C string on the stack).
        unsafe {
            command.pre_exec(move || {
                for file in &procs {
                    std::fs::write(file, b"0")?;
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .context("starting the background stressor")?;
        // Already in the cgroups (joined before exec): release it.
        use std::io::Write;
        let go = child.stdin.take().context("no stdin")?.write_all(b"go\n");
        let load = BackgroundLoad(child, log);
        go.context("releasing the background stressor")?;
        Ok(load)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.1.path()).unwrap_or_default()
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        // One process (its workers are threads): a KILL takes all of it.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn assert_near(what: &str, measured: f64, want: f64, tolerance: f64) {
    assert!(
        (measured - want).abs() <= tolerance,
        "{what}: measured {measured:.2}, want {want} ± {tolerance}"
    );
}

/// A fill's contract: the container's total at `want` within `tolerance`, never above it, and
/// below it only when the machine had no spare CPU to give (other work on a busy machine
/// takes its share first: a fresh-clone CI beside four builds measured 30.68 % for a 50 %
/// fill with the machine saturated). Precision figures belong to bench/resources.
fn assert_fill_level(what: &str, window: CpuWindow, want: f64, tolerance: f64) {
    let CpuWindow {
        container_percent: measured,
        machine_idle_percent: idle,
    } = window;
    assert!(
        measured <= want + tolerance,
        "{what}: measured {measured:.2}, above {want} + {tolerance}"
    );
    assert!(
        window.reached_or_machine_busy(want - tolerance),
        "{what}: measured {measured:.2}, want {want} ± {tolerance}, while the machine had {idle:.1} % of a core idle"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_fill_holds_an_idle_one_cpu_container_at_half_and_stops_at_the_deadline() -> Result<()>
{
    let _lock = CpuLock::take()?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(None)?;
    let accounting = Accounting::of(container.pid()?)?;

    let fault = inject(
        &agent,
        cpu_request(
            &container.target(),
            50,
            api::CpuMode::Fill,
            Duration::from_secs(14),
        ),
    )
    .await?;
    let injected = Instant::now();
    assert_eq!(fault.state, api::FaultState::Active as i32, "{fault:?}");
    assert_eq!(cpu_status(&fault).limit_cores, 1.0);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = tokio::task::block_in_place(|| accounting.cpu_window(Duration::from_secs(8)))?;
    let measured = window.container_percent;
    let status = cpu_status(&get(&agent, &fault.id).await?);
    println!("fill 50 %: cgroup measured {window:?}, agent status {status:?}");
    assert_fill_level("container CPU", window, 50.0, 3.0);
    assert_near(
        "agent's achieved_percent",
        status.achieved_percent,
        measured,
        5.0,
    );
    assert_eq!(status.stressors_running, 1);

    // The fault expires 14 s after injection; one second later the extra use is gone.
    let deadline = injected + Duration::from_secs(14);
    tokio::time::sleep_until((deadline + Duration::from_millis(1000)).into()).await;
    let after =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_millis(500)))?;
    println!("after the deadline: {after:.2} %");
    assert!(
        after < 3.0,
        "CPU still in use after the deadline: {after:.2} %"
    );
    let ended = get(&agent, &fault.id).await?;
    assert_eq!(ended.state, api::FaultState::Expired as i32, "{ended:?}");
    assert!(stressors_of(agent.pid()).iter().all(|p| !alive(*p)));
    Ok(())
}

/// The background workload is OUR stressor in `add` mode at 30 %, run by the test in the
/// container's own cgroup: a busybox loop cannot hold 30 %.
#[tokio::test(flavor = "multi_thread")]
async fn cpu_fill_tops_a_busy_container_up_to_seventy_percent() -> Result<()> {
    let _lock = CpuLock::take()?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(None)?;
    let accounting = Accounting::of(container.pid()?)?;

    // The container's own busy workload: 30 % of a CPU, started inside the container's
    // cgroup (not a fault of the agent: a container holds one CPU fault).
    let workload = BackgroundLoad::in_container(&container, 30, Duration::from_secs(30))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let background =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_secs(3)))?;
    println!("background (30 %): {background:.2} %");
    assert!(
        (10.0..60.0).contains(&background),
        "the background workload is not a partial load: {background:.2} %; it said: {}",
        workload.output()
    );

    let fill = inject(
        &agent,
        cpu_request(
            &container.target(),
            70,
            api::CpuMode::Fill,
            Duration::from_secs(14),
        ),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = tokio::task::block_in_place(|| accounting.cpu_window(Duration::from_secs(8)))?;
    let total = window.container_percent;
    let status = cpu_status(&get(&agent, &fill.id).await?);
    println!("fill 70 % over a busy workload: {window:?}, status {status:?}");
    // The contract is the container's total; how much of it the stressor supplies depends
    // on the workload (precision figures: bench/resources).
    assert_fill_level("container CPU", window, 70.0, 5.0);
    assert!(
        status.stressor_percent < total,
        "the fill did all the work: {status:?}"
    );

    // The fill is gone: its stressor left the cgroup (the workload's processes stay), and
    // when the fill had held its level, the container is back below it (the workload alone
    // may swing under emulation, so no tighter bound than that).
    revert_and_await_stressors(&agent, &fill.id).await?;
    let after =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_secs(2)))?;
    assert!(
        total < 65.0 || after < total - 10.0,
        "CPU after the revert {after:.2} %, with the fill {total:.2} %, the workload alone {background:.2} %"
    );
    Ok(())
}

/// Starve's contract, on a container whose workload alone takes its whole CPU (two busy
/// shell loops, more threads than its 1-CPU limit): the workload is left at most 100 - 80 % of
/// what the container gets while the fault holds, and gets it all back after the revert.
/// The share is of the container's own total, so a machine that gives the container less
/// than its limit does not make the check pass or fail (the node shares CPU between cgroups,
/// starve only acts inside one). Precision figures: bench/resources.
#[tokio::test(flavor = "multi_thread")]
async fn cpu_starve_takes_eighty_percent_from_a_busy_workload_and_gives_it_back() -> Result<()> {
    let _lock = CpuLock::take()?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = TestContainer::start(ContainerSpec {
        cpus: Some(1.0),
        command: ["/bin/sh", "-c", "while :; do :; done & while :; do :; done"]
            .map(String::from)
            .to_vec(),
        ..ContainerSpec::default()
    })?;
    let accounting = Accounting::of(container.pid()?)?;
    let loops = loop {
        let loops = processes_named(&container, "sh")?;
        if loops.len() == 2 {
            break loops;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alone =
        tokio::task::block_in_place(|| accounting.workload_window(&loops, Duration::from_secs(2)))?;
    println!("the workload alone: {alone:?}");
    assert!(
        alone.workload_share_percent() > 95.0,
        "the loops are not all the container does: {alone:?}"
    );

    let fault = inject(
        &agent,
        cpu_request(
            &container.target(),
            80,
            api::CpuMode::Starve,
            Duration::from_secs(30),
        ),
    )
    .await?;
    assert_eq!(fault.state, api::FaultState::Active as i32, "{fault:?}");
    // The default ceiling: 16 threads per CPU of the limit, reserved in the node's budget.
    assert_eq!(cpu_status(&fault).workers, 16, "{fault:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during =
        tokio::task::block_in_place(|| accounting.workload_window(&loops, Duration::from_secs(8)))?;
    let status = cpu_status(&get(&agent, &fault.id).await?);
    println!(
        "starve 80 %: {during:?}, the workload's share {:.1} %, status {status:?}",
        during.workload_share_percent()
    );
    // 20 % is the contract (the host measures 14-20 %); 15 points of margin for the VM's
    // software emulation on a busy machine, which measured 29.5 % (fill and add leave such a
    // workload 65-75 %: BENCHMARKS.md).
    assert!(
        during.workload_share_percent() <= 35.0,
        "the workload kept {:.1} % of the container's CPU under a starve of 80 %: {during:?}",
        during.workload_share_percent()
    );
    assert_eq!(status.stressors_running, 1, "{status:?}");

    revert_and_await_stressors(&agent, &fault.id).await?;
    let after =
        tokio::task::block_in_place(|| accounting.workload_window(&loops, Duration::from_secs(2)))?;
    println!("after the revert: {after:?}");
    assert!(
        after.workload_share_percent() > 95.0,
        "the workload did not get its CPU back: {after:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_raises_usage_by_256_mib_holds_it_idle_and_releases_it() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(Some(1024 * MIB))?;
    let accounting = Accounting::of(container.pid()?)?;
    let before = accounting.memory_bytes()?;

    let fault = inject(
        &agent,
        memory_request(&container.target(), 256 * MIB, 0, Duration::from_secs(30)),
    )
    .await?;
    let injected = Instant::now();
    let want = (before + 256 * MIB) as f64;
    let mut usage = accounting.memory_bytes()?;
    while (usage as f64) < want * 0.98
        && injected.elapsed() < chaos_tests::scaled(Duration::from_secs(2))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        usage = accounting.memory_bytes()?;
    }
    let rise = usage.saturating_sub(before);
    println!(
        "memory 256 MiB: rise {} KiB after {:?}",
        rise >> 10,
        injected.elapsed()
    );
    assert_near(
        "usage rise in MiB",
        rise as f64 / MIB as f64,
        256.0,
        256.0 * 0.02,
    );

    // Holding costs (almost) nothing: the container is otherwise idle. Measured once the
    // stressor holds all of it (its resident memory, as the agent reports it): the cgroup's
    // usage passes 98 % while the last pages are still being touched, and under the VM's
    // emulation that tail alone came to 2 % of a core over the window.
    let filled_by = Instant::now() + chaos_tests::scaled(Duration::from_secs(2));
    while memory_status(&get(&agent, &fault.id).await?).held_bytes < 255 * MIB {
        assert!(
            Instant::now() < filled_by,
            "the stressor never reported 255 MiB resident: {:?}",
            memory_status(&get(&agent, &fault.id).await?)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holding =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_secs(3)))?;
    println!("CPU while holding: {holding:.3} % of a core");
    assert!(holding <= 2.0, "holding costs {holding:.2} % of a core");
    let status = memory_status(&get(&agent, &fault.id).await?);
    assert!(status.held_bytes >= 255 * MIB, "{status:?}");
    assert_eq!(status.requested_bytes, 256 * MIB);
    assert_eq!(status.limit_bytes, 1024 * MIB);
    assert_eq!(status.oom_kills, 0);

    let mut client = agent.client().await?;
    client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?;
    let reverted = Instant::now();
    let mut usage = accounting.memory_bytes()?;
    while usage > before + 256 * MIB / 50 && reverted.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        usage = accounting.memory_bytes()?;
    }
    println!(
        "after revert: {} KiB above the start, {:?}",
        usage.saturating_sub(before) >> 10,
        reverted.elapsed()
    );
    assert!(
        usage <= before + 256 * MIB / 50,
        "usage {usage} still above {before} 1 s after revert"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_percent_is_of_the_containers_limit_and_released_at_the_deadline() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(Some(512 * MIB))?;
    let accounting = Accounting::of(container.pid()?)?;
    let before = accounting.memory_bytes()?;

    // The fill's time is the kernel's page faults, stretched in the VM (CHAOS_TEST_SLOWDOWN):
    // a fixed 2 s saw 145 of 256 MiB there with debug binaries. The deadline is stretched
    // with it so that the fill is measured before it ends.
    let duration = chaos_tests::scaled(Duration::from_secs(4));
    let fault = inject(&agent, memory_request(&container.target(), 0, 50, duration)).await?;
    let injected = Instant::now();
    let status = memory_status(&fault);
    assert_eq!(status.requested_bytes, 256 * MIB, "50 % of 512 MiB");
    let want = before + 256 * MIB * 99 / 100;
    let mut usage = accounting.memory_bytes()?;
    while usage < want && injected.elapsed() < duration / 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        usage = accounting.memory_bytes()?;
    }
    let rise = usage.saturating_sub(before);
    println!(
        "memory 50 %: rise {} KiB after {:?}",
        rise >> 10,
        injected.elapsed()
    );
    assert_near(
        "usage rise in MiB",
        rise as f64 / MIB as f64,
        256.0,
        256.0 * 0.02,
    );

    tokio::time::sleep_until((injected + duration + Duration::from_secs(1)).into()).await;
    let usage = accounting.memory_bytes()?;
    assert!(
        usage <= before + 256 * MIB / 50,
        "usage {usage} still above {before} 1 s after the deadline"
    );
    let ended = get(&agent, &fault.id).await?;
    assert_eq!(ended.state, api::FaultState::Expired as i32, "{ended:?}");
    Ok(())
}

/// A fill of exactly the limit (more is refused) cannot fit: the fill's own page tables
/// and the container's processes are charged to the same limit.
#[tokio::test(flavor = "multi_thread")]
async fn memory_up_to_the_limit_is_reported_as_an_oom_kill() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(Some(64 * MIB))?;
    let fault = inject(
        &agent,
        memory_request(&container.target(), 64 * MIB, 0, Duration::from_secs(20)),
    )
    .await?;
    let started = Instant::now();
    let mut status = memory_status(&fault);
    // memory.events counts the kill before the agent has reaped the killed stressor:
    // wait for both (bounded).
    while (status.oom_kills == 0 || status.stressors_running > 0)
        && started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = memory_status(&get(&agent, &fault.id).await?);
    }
    println!("over the limit: {status:?}");
    assert!(status.oom_kills >= 1, "{status:?}");
    assert_eq!(
        status.stressors_running, 0,
        "the OOM killer took the stressor"
    );
    let metrics = agent.scrape()?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("chaos_agent_oom_kills_total{kind=\"memory\"}"))
        .context("no OOM metric")?;
    let count: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
    assert!(count >= 1.0, "{line}");
    // The container's own workload survived: only the stressor was over the limit.
    assert_eq!(container.task_status()?, "RUNNING");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_agent_leaves_no_stressor_and_the_restart_lists_nothing_active() -> Result<()>
{
    let (tls, state) = (make_certs()?, state_dir()?);
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(Some(512 * MIB))?;
    inject(
        &agent,
        cpu_request(
            &container.target(),
            20,
            api::CpuMode::Add,
            Duration::from_secs(60),
        ),
    )
    .await?;
    inject(
        &agent,
        memory_request(&container.target(), 32 * MIB, 0, Duration::from_secs(60)),
    )
    .await?;
    let stressors = stressors_of(agent.pid());
    assert_eq!(stressors.len(), 2, "{stressors:?}");
    // The stressors are in the container's own cgroup.
    let container_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", container.pid()?))?;
    for pid in &stressors {
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        for line in container_cgroup
            .lines()
            .filter(|l| l.contains(":memory:") || l.contains(":cpu"))
        {
            assert!(
                theirs.lines().any(|t| t == line),
                "stressor {pid} not in {line}: {theirs}"
            );
        }
    }

    agent.kill_hard()?;
    let killed = Instant::now();
    while stressors.iter().any(|p| alive(*p)) && killed.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let survivors: Vec<u32> = stressors.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        survivors.is_empty(),
        "stressors outlived the agent: {survivors:?}"
    );
    println!(
        "stressors gone {:?} after SIGKILL of the agent",
        killed.elapsed()
    );

    let restarted = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = restarted.client().await?;
    let active = client
        .list(api::ListRequest {
            include_ended: false,
        })
        .await?
        .into_inner()
        .faults;
    assert!(active.is_empty(), "{active:?}");
    let ended = client
        .list(api::ListRequest {
            include_ended: true,
        })
        .await?
        .into_inner()
        .faults;
    assert_eq!(
        ended
            .iter()
            .filter(|f| f.state == api::FaultState::Recovered as i32)
            .count(),
        2,
        "{ended:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stressors_are_the_oom_killers_first_choice_whatever_the_agents_score() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let agent_score = make_node_critical(&agent)?;
    let container = one_cpu_container(Some(512 * MIB))?;
    let mut cpu = cpu_request(
        &container.target(),
        10,
        api::CpuMode::Add,
        Duration::from_secs(30),
    );
    if let Some(api::inject_request::Fault::Cpu(c)) = &mut cpu.fault {
        c.cores = 1;
    }
    inject(&agent, cpu).await?;
    inject(
        &agent,
        memory_request(&container.target(), 16 * MIB, 0, Duration::from_secs(30)),
    )
    .await?;
    let stressors = stressors_of(agent.pid());
    assert_eq!(stressors.len(), 2, "{stressors:?}");
    let init_score = oom_score(container.pid()?)?;
    for pid in &stressors {
        let (adj, score) = (oom_score_adj(*pid)?, oom_score(*pid)?);
        println!(
            "stressor {pid}: oom_score_adj {adj}, oom_score {score} (container init {init_score})"
        );
        assert_eq!(adj, 1000, "stressor {pid}");
        // The kernel ranks it above the workload it shares the cgroup with.
        assert!(
            score > init_score,
            "stressor {pid}: {score} <= {init_score}"
        );
    }
    // The agent keeps its own protection.
    assert_eq!(oom_score_adj(agent.pid())?, agent_score);
    agent
        .client()
        .await?
        .revert(api::RevertRequest {
            id: String::new(),
            all: true,
        })
        .await?;
    Ok(())
}

/// The test that matters: a victim holding memory and a neighbour under one parent limit
/// (two containers of one pod). The fill alone fits the limit, victim + fill do not. The OOM
/// killer must take the stressor, not the victim. The victim holds more than the fill, so
/// even a stressor with the victim's own score would lose the OOM killer's ranking to it;
/// with the agent's inherited -997 (in the VM) it would be the last process taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_fault_under_a_shared_parent_limit_oom_kills_its_stressor_not_the_neighbour()
-> Result<()> {
    const PARENT_LIMIT: u64 = 256 * MIB;
    const VICTIM_HOLDS: u64 = 160 * MIB;
    const FILL: u64 = 128 * MIB;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let agent_score = make_node_critical(&agent)?;
    let parent = SharedParent::create(PARENT_LIMIT)?;
    // dd holds its 160 MiB block, read from /dev/zero, while it waits forever to write it
    // into a pipe nobody reads: a busybox process with resident anonymous memory.
    let victim = container_under(
        &parent,
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero bs=160M count=1 | sleep infinity",
        ],
    )?;
    let neighbour = container_under(&parent, &[])?;

    let started = Instant::now();
    let victim_pid = loop {
        let holding = processes_named(&victim, "dd")?
            .into_iter()
            .find(|pid| resident_anon(*pid).is_some_and(|b| b >= VICTIM_HOLDS * 95 / 100));
        match holding {
            Some(pid) => break pid,
            None if started.elapsed() < chaos_tests::scaled(Duration::from_secs(10)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => bail!(
                "the victim never held {VICTIM_HOLDS} bytes: {:?}",
                processes_named(&victim, "dd")?
                    .iter()
                    .map(|p| resident_anon(*p))
                    .collect::<Vec<_>>()
            ),
        }
    };
    let victim_held = resident_anon(victim_pid).unwrap_or(0);
    println!(
        "victim dd {victim_pid} holds {} MiB, oom_score_adj {}; agent's {agent_score}",
        victim_held / MIB,
        oom_score_adj(victim_pid)?
    );

    let fault = inject(
        &agent,
        memory_request(&neighbour.target(), FILL, 0, Duration::from_secs(60)),
    )
    .await?;
    let status = memory_status(&fault);
    // The neighbour has no limit of its own: the parent's is its effective limit.
    assert_eq!(status.limit_bytes, PARENT_LIMIT, "{status:?}");

    // Until the OOM killer has acted (on whichever process) and the agent has seen it.
    let injected = Instant::now();
    let mut status = memory_status(&get(&agent, &fault.id).await?);
    while resident_anon(victim_pid).is_some()
        && (status.oom_kills == 0 || status.stressors_running > 0)
        && injected.elapsed() < chaos_tests::scaled(Duration::from_secs(10))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = memory_status(&get(&agent, &fault.id).await?);
    }
    let victim_after = resident_anon(victim_pid);
    println!(
        "after {:?}: victim holds {:?} MiB, fault status {status:?}",
        injected.elapsed(),
        victim_after.map(|b| b / MIB)
    );
    assert!(
        victim_after.is_some_and(|b| b >= victim_held * 95 / 100),
        "the OOM killer took the victim (it holds {victim_after:?} bytes); fault status {status:?}"
    );
    assert!(
        status.oom_kills >= 1,
        "no OOM kill in the neighbour: {status:?}"
    );
    assert_eq!(status.stressors_running, 0, "{status:?}");
    assert_eq!(victim.task_status()?, "RUNNING");
    assert_eq!(neighbour.task_status()?, "RUNNING");
    agent
        .client()
        .await?
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_above_the_effective_limit_is_refused_naming_the_parents_limit() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let parent = SharedParent::create(128 * MIB)?;
    // Its own limit is above the parent's: the parent's bounds it.
    let container = TestContainer::start(ContainerSpec {
        cgroup_parent: Some(parent.path()),
        memory_limit_bytes: Some(512 * MIB),
        ..ContainerSpec::default()
    })?;

    let status = refused(
        &agent,
        memory_request(&container.target(), 200 * MIB, 0, Duration::from_secs(10)),
    )
    .await?;
    println!("{status:?}");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    for part in ["memory.size_bytes", &(128 * MIB).to_string(), &parent.name] {
        assert!(
            status.message().contains(part),
            "{part:?}: {}",
            status.message()
        );
    }
    assert_nothing_changed(&agent, state.path()).await?;

    // Within the parent's limit it is accepted (a dry run: nothing is held).
    let accepted = inject(
        &agent,
        dry_run(memory_request(
            &container.target(),
            64 * MIB,
            0,
            Duration::from_secs(10),
        )),
    )
    .await?;
    assert_eq!(memory_status(&accepted).limit_bytes, 128 * MIB);
    Ok(())
}

/// `MemTotal` or `MemAvailable` of this node in bytes.
fn meminfo(key: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/meminfo"))?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_percent_of_an_unlimited_container_is_refused_unless_node_memory_is_asked_for()
-> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = TestContainer::start(ContainerSpec::default())?;
    let percent = |allow_node_memory| {
        memory_fault_request(
            &container.target(),
            api::MemoryFault {
                percent: 1,
                allow_node_memory,
                ..Default::default()
            },
            Duration::from_secs(10),
        )
    };
    let status = refused(&agent, percent(false)).await?;
    println!("{status:?}");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("memory.percent"), "{status:?}");
    assert!(status.message().contains("no memory limit"), "{status:?}");
    assert!(status.message().contains("allow_node_memory"), "{status:?}");
    assert_nothing_changed(&agent, state.path()).await?;

    let accepted = inject(&agent, dry_run(percent(true))).await?;
    let one_percent = meminfo("MemTotal")? / 100 / 4096 * 4096;
    assert_eq!(memory_status(&accepted).requested_bytes, one_percent);
    assert_eq!(memory_status(&accepted).limit_bytes, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fill_beyond_the_agents_share_of_mem_available_is_refused_not_shrunk() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    // At most 1 % of MemAvailable: a fill above it needs no memory this test could miss.
    let agent = TestAgent::start(AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec!["--max-memory-fill-percent-of-available".into(), "1".into()],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
    })?;
    let available = meminfo("MemAvailable")?;
    // The container's own limit is above the agent's share, so it does not bound the fill;
    // the fill is within the limit (3 % of MemAvailable against 4 %).
    let container = one_cpu_container(Some(available * 4 / 100 / 4096 * 4096))?;
    let fill = available * 3 / 100;
    let status = refused(
        &agent,
        memory_request(&container.target(), fill, 0, Duration::from_secs(10)),
    )
    .await?;
    println!("MemAvailable {available}, fill {fill}: {status:?}");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    for part in [
        "MemAvailable",
        &format!("memory.size_bytes {fill}"),
        "--max-memory-fill-percent-of-available",
    ] {
        assert!(
            status.message().contains(part),
            "{part:?}: {}",
            status.message()
        );
    }
    assert_nothing_changed(&agent, state.path()).await?;

    // A tenth of the share passes (a dry run: nothing is held).
    inject(
        &agent,
        dry_run(memory_request(
            &container.target(),
            available / 1000,
            0,
            Duration::from_secs(10),
        )),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_workers_beyond_the_containers_cpus_are_refused_naming_the_count() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(None)?;
    let with_cores = |cores| {
        let mut request = cpu_request(
            &container.target(),
            50,
            api::CpuMode::Fill,
            Duration::from_secs(10),
        );
        if let Some(api::inject_request::Fault::Cpu(c)) = &mut request.fault {
            c.cores = cores;
        }
        request
    };
    let status = refused(&agent, with_cores(2)).await?;
    println!("{status:?}");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("cpu.cores"), "{status:?}");
    assert!(
        status
            .message()
            .contains("2 workers is more than the 1 CPU(s)"),
        "{status:?}"
    );
    assert_nothing_changed(&agent, state.path()).await?;
    let accepted = inject(&agent, dry_run(with_cores(1))).await?;
    assert_eq!(cpu_status(&accepted).workers, 1);
    Ok(())
}
