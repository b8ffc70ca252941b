//! Real, throw-away cgroups for tests (feature `test-support`).
//!
//! [`TestCgroup`] creates `chaos-test-<unique>` cgroups on the running kernel: on v1/hybrid one
//! directory under each of the cpu, cpuacct, cpuset, memory and pids hierarchies; on v2 a test
//! parent under the root with cpu, cpuset and memory enabled in ITS OWN `cgroup.subtree_control`
//! and a `leaf` child holding the processes (no-internal-process rule). Drop kills whatever is
//! still inside and removes every directory it created, also when the test panicked.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{CgroupError, CgroupFs, CgroupVersion, ProcessCgroup};

/// v1 controllers a test cgroup is created under (when the host mounts them).
const TEST_V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids"];
/// v2 controllers the test parent enables for its leaf.
const TEST_V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory"];
const CFS_PERIOD_US: u64 = 100_000;

/// Limits to put on the test cgroup at creation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TestLimits {
    /// CFS quota in cores (0.5 = half a CPU); None = no quota.
    pub cpu_quota_cores: Option<f64>,
    /// Hard memory limit in bytes; None = unlimited.
    pub memory_bytes: Option<u64>,
    /// Ten times the default CPU weight (v1 `cpu.shares` 10240, v2 `cpu.weight` 1000), so a
    /// CPU measurement is not starved by other work on a shared machine. The quota still caps it.
    pub high_cpu_weight: bool,
}

/// A real cgroup that exists for the lifetime of this value.
#[derive(Debug)]
pub struct TestCgroup {
    fs: CgroupFs,
    cgroup: ProcessCgroup,
    /// Directories to remove, deepest first.
    created: Vec<PathBuf>,
    /// The leaf directories holding processes (one per v1 hierarchy, one on v2).
    leaves: Vec<PathBuf>,
}

impl TestCgroup {
    /// Creates the cgroup on the host's cgroupfs (`/sys/fs/cgroup`).
    pub fn create(limits: TestLimits) -> Result<TestCgroup, CgroupError> {
        TestCgroup::create_in(CgroupFs::host(), limits)
    }

    pub fn create_in(fs: CgroupFs, limits: TestLimits) -> Result<TestCgroup, CgroupError> {
        let layout = fs.layout()?;
        let name = unique_name();
        let mut test = TestCgroup {
            fs,
            cgroup: ProcessCgroup {
                unified: None,
                v1: Default::default(),
            },
            created: Vec::new(),
            leaves: Vec::new(),
        };
        // On error the partly built value drops here and removes what was created.
        match layout.version {
            CgroupVersion::V2 => test.build_v2(&name, limits)?,
            CgroupVersion::V1 | CgroupVersion::Hybrid => test.build_v1(&name, limits)?,
        }
        Ok(test)
    }

    pub fn cgroup(&self) -> &ProcessCgroup {
        &self.cgroup
    }

    pub fn fs(&self) -> &CgroupFs {
        &self.fs
    }

    /// The cgroup path as `/proc/PID/cgroup` shows it (v1: under every hierarchy).
    pub fn path(&self) -> String {
        self.cgroup.display_path()
    }

    fn build_v1(&mut self, name: &str, limits: TestLimits) -> Result<(), CgroupError> {
        let path = format!("/{name}");
        for controller in TEST_V1_CONTROLLERS {
            let Some(hierarchy) = self.fs.v1_hierarchy(controller) else {
                continue;
            };
            let dir = hierarchy.join(name);
            // Co-mounted controllers (cpu,cpuacct) share one directory: create it once.
            if !self.created.contains(&dir) {
                make_dir(&dir)?;
                self.created.push(dir.clone());
                self.leaves.push(dir.clone());
            }
            self.cgroup.v1.insert(controller.to_string(), path.clone());
            match *controller {
                // A new v1 cpuset starts empty and rejects tasks: inherit the parent's sets.
                "cpuset" => {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let value = read_trimmed(&hierarchy.join(file))?;
                        write_file(&dir.join(file), &value)?;
                    }
                }
                "cpu" => {
                    if limits.high_cpu_weight {
                        write_file(&dir.join("cpu.shares"), "10240")?;
                    }
                    if let Some(cores) = limits.cpu_quota_cores {
                        write_file(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                        let quota = (cores * CFS_PERIOD_US as f64).round() as u64;
                        write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                }
                "memory" => {
                    if let Some(bytes) = limits.memory_bytes {
                        write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    }
                }
                _ => {}
            }
        }
        if self.cgroup.v1.is_empty() {
            return Err(CgroupError::Unsupported {
                root: self.fs.root().to_path_buf(),
                detail: "none of cpu, cpuacct, cpuset, memory, pids is mounted".to_string(),
            });
        }
        Ok(())
    }

    fn build_v2(&mut self, name: &str, limits: TestLimits) -> Result<(), CgroupError> {
        let root = self.fs.root().to_path_buf();
        let available = read_trimmed(&root.join("cgroup.subtree_control"))?;
        let missing: Vec<&str> = TEST_V2_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !available.split_whitespace().any(|a| a == *c))
            .collect();
        if !missing.is_empty() {
            // The root is not ours to change; the test environment must enable them.
            return Err(CgroupError::Unsupported {
                root,
                detail: format!(
                    "the root cgroup.subtree_control lacks {missing:?}; run \
                     `echo '+cpu +cpuset +memory' > /sys/fs/cgroup/cgroup.subtree_control` first"
                ),
            });
        }
        let parent = root.join(name);
        make_dir(&parent)?;
        self.created.push(parent.clone());
        let enable: Vec<String> = TEST_V2_CONTROLLERS
            .iter()
            .map(|c| format!("+{c}"))
            .collect();
        write_file(&parent.join("cgroup.subtree_control"), &enable.join(" "))?;
        let leaf = parent.join("leaf");
        make_dir(&leaf)?;
        self.created.insert(0, leaf.clone());
        self.leaves.push(leaf.clone());
        if let Some(cores) = limits.cpu_quota_cores {
            let quota = (cores * CFS_PERIOD_US as f64).round() as u64;
            write_file(&leaf.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
        }
        if limits.high_cpu_weight {
            // The parent competes with its siblings at the root: weight it, not only the leaf.
            write_file(&parent.join("cpu.weight"), "1000")?;
            write_file(&leaf.join("cpu.weight"), "1000")?;
        }
        if let Some(bytes) = limits.memory_bytes {
            write_file(&leaf.join("memory.max"), &bytes.to_string())?;
            // Without this a v2 cgroup under pressure swaps instead of OOM-killing.
            let swap = leaf.join("memory.swap.max");
            if swap.exists() {
                write_file(&swap, "0")?;
            }
        }
        self.cgroup.unified = Some(format!("/{name}/leaf"));
        Ok(())
    }

    /// SIGKILLs every process in the leaves until they are empty (bounded: 5 s).
    fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut any = false;
            for leaf in &self.leaves {
                let Ok(text) = std::fs::read_to_string(leaf.join("cgroup.procs")) else {
                    continue;
                };
                for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    any = true;
                    // SAFETY: kill(2) has no memory-safety preconditions; these pids are
                    // processes the test placed in its own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if !any {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.created {
            // rmdir fails with EBUSY while exiting tasks are still being released: retry briefly.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        eprintln!("chaos-test cleanup: cannot remove {}: {e}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// `chaos-test-<pid>-<nanos>`: unique per process and call, recognisable for manual cleanup.
fn unique_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 + d.as_secs() * 1_000_000_000)
        .unwrap_or(0);
    format!("chaos-test-{}-{:x}", std::process::id(), nanos)
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir(dir).map_err(|e| CgroupError::io(dir, e))
}

fn read_trimmed(file: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(file)
        .map(|t| t.trim().to_string())
        .map_err(|e| CgroupError::io(file, e))
}

fn write_file(file: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(file, value).map_err(|e| CgroupError::io(file, e))
}
