//! A container's CPU time and memory use read back from its cgroup files (v1 on the host,
//! v2 in the VM), and a lock that keeps CPU-measuring tests from overlapping.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Serialises the CPU-measuring tests across test processes (nextest runs one per test).
pub struct CpuLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl CpuLock {
    pub fn take() -> Result<CpuLock> {
        let file = File::create("/tmp/chaos-test-resources-cpu.lock")?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("flock: {e}"))?;
        Ok(CpuLock(lock))
    }
}

/// The container's CPU time and memory use, from its cgroup (v1 here; v2 in the VM).
pub struct Accounting {
    v2: bool,
    cpu_dir: PathBuf,
    memory_dir: PathBuf,
}

impl Accounting {
    pub fn of(pid: u32) -> Result<Accounting> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let root = Path::new("/sys/fs/cgroup");
        let path_of = |controller: &str| -> Option<String> {
            text.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.trim_start_matches('/').to_string())
            })
        };
        match (path_of("cpuacct"), path_of("memory")) {
            (Some(cpu), Some(memory)) => Ok(Accounting {
                v2: false,
                cpu_dir: root.join("cpuacct").join(cpu),
                memory_dir: root.join("memory").join(memory),
            }),
            _ => {
                let path = text
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .context("neither v1 controllers nor a 0:: line")?;
                let dir = root.join(path.trim_start_matches('/'));
                Ok(Accounting {
                    v2: true,
                    cpu_dir: dir.clone(),
                    memory_dir: dir,
                })
            }
        }
    }

    pub fn cpu_ns(&self) -> Result<u64> {
        if self.v2 {
            let text = std::fs::read_to_string(self.cpu_dir.join("cpu.stat"))?;
            let usec: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .context("no usage_usec")?
                .trim()
                .parse()?;
            return Ok(usec * 1000);
        }
        Ok(std::fs::read_to_string(self.cpu_dir.join("cpuacct.usage"))?
            .trim()
            .parse()?)
    }

    pub fn memory_bytes(&self) -> Result<u64> {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        Ok(std::fs::read_to_string(self.memory_dir.join(file))?
            .trim()
            .parse()?)
    }

    /// Percent of one core the container used over `window`.
    pub fn cpu_percent_over(&self, window: Duration) -> Result<f64> {
        let (start, at) = (self.cpu_ns()?, Instant::now());
        std::thread::sleep(window);
        let used = self.cpu_ns()?.saturating_sub(start);
        Ok(used as f64 / at.elapsed().as_nanos() as f64 * 100.0)
    }

    /// What the container used over `window`, beside what the machine left idle meanwhile:
    /// a fill cannot reach its level when the machine has no CPU to give it.
    pub fn cpu_window(&self, window: Duration) -> Result<CpuWindow> {
        let (start, idle_start, at) = (self.cpu_ns()?, machine_idle_ticks()?, Instant::now());
        std::thread::sleep(window);
        let used = self.cpu_ns()?.saturating_sub(start);
        let idle = machine_idle_ticks()?;
        let elapsed = at.elapsed();
        // /proc/stat counts in USER_HZ ticks (100 per second on Linux).
        let idle_seconds = idle.saturating_sub(idle_start) as f64 / 100.0;
        Ok(CpuWindow {
            container_percent: used as f64 / elapsed.as_nanos() as f64 * 100.0,
            machine_idle_percent: idle_seconds / elapsed.as_secs_f64() * 100.0,
        })
    }

    /// Over `window`: the container's use and that of the processes `pids` (its workload)
    /// in it, both in percent of one core.
    pub fn workload_window(&self, pids: &[u32], window: Duration) -> Result<WorkloadWindow> {
        let (start, workload_start, at) = (self.cpu_ns()?, processes_cpu_ns(pids)?, Instant::now());
        std::thread::sleep(window);
        let used = self.cpu_ns()?.saturating_sub(start);
        let workload = processes_cpu_ns(pids)?.saturating_sub(workload_start);
        let elapsed_ns = at.elapsed().as_nanos() as f64;
        Ok(WorkloadWindow {
            container_percent: used as f64 / elapsed_ns * 100.0,
            workload_percent: workload as f64 / elapsed_ns * 100.0,
        })
    }

    /// The processes in the container's cgroup (the stressors run there too).
    pub fn pids(&self) -> Result<BTreeSet<u32>> {
        Ok(
            std::fs::read_to_string(self.memory_dir.join("cgroup.procs"))?
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect(),
        )
    }
}

/// A container's CPU use and its workload's over one window, in percent of one core.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadWindow {
    pub container_percent: f64,
    pub workload_percent: f64,
}

impl WorkloadWindow {
    /// The workload's part of what the container got, in percent: unlike its percent of the
    /// limit it does not depend on how much CPU a busy machine left the container.
    pub fn workload_share_percent(&self) -> f64 {
        if self.container_percent <= 0.0 {
            return 0.0;
        }
        self.workload_percent / self.container_percent * 100.0
    }
}

/// CPU time (user + system) of the processes `pids`, all their threads, in ns.
pub fn processes_cpu_ns(pids: &[u32]) -> Result<u64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading the stat of process {pid}"))?;
        // Fields after the command's closing parenthesis; utime and stime are the 12th and
        // 13th of them.
        let after = stat.rsplit_once(')').context("no ')' in stat")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        for index in [11, 12] {
            ticks += fields
                .get(index)
                .context("short stat")?
                .parse::<u64>()
                .context("a CPU time in stat")?;
        }
    }
    // USER_HZ is 100 on Linux.
    Ok(ticks * 10_000_000)
}

/// A container's CPU use over a window, and the machine's idle CPU over the same window,
/// both in percent of one core (the idle of a two-core machine ranges to 200).
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    pub container_percent: f64,
    pub machine_idle_percent: f64,
}

impl CpuWindow {
    /// Whether the container reached `floor`, or the machine had no CPU to give it: a
    /// shortfall counts only when the machine left more idle than the shortfall (plus 10
    /// points of measuring noise) in the same window.
    pub fn reached_or_machine_busy(&self, floor: f64) -> bool {
        let shortfall = floor - self.container_percent;
        shortfall <= 0.0 || self.machine_idle_percent < shortfall + 10.0
    }
}

/// The idle and iowait ticks of all CPUs together, from the `cpu` line of /proc/stat.
fn machine_idle_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait ...
    Ok(fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0))
}
