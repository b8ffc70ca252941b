//! Stressor child processes: the agent's own binary run as `chaos-agent stress cpu|memory|io`,
//! moved into the TARGET's own cgroup before it does any work, killed at revert.
//!
//! Why a dedicated spawner thread: PR_SET_PDEATHSIG (armed by the child) fires when the
//! parent THREAD that forked it exits, not the process. Tokio's blocking pool retires idle
//! threads, which would kill stressors mid-fault; this one thread lives as long as the agent.
//!
//! Why attach before work: memory a process touches is charged to the cgroup it is in at
//! the time, so the child waits for one line on stdin, the spawner writes its pid into the
//! target's `cgroup.procs` files, and only then releases it.
//!
//! Why the spawner sets the stressor's `oom_score_adj` (to 1000, before the attach): a child
//! inherits the agent's score, -997 under `priorityClassName: system-node-critical`, which
//! would make the stressor the LAST process the OOM killer takes, after the workload it
//! stresses and its neighbours. The spawner writes `/proc/PID/oom_score_adj` and reads it
//! back while the child still waits for its go line, so the child has not allocated
//! anything of its fill, and a failure fails the spawn (the child is killed, the inject
//! changes nothing) instead of surfacing later as a stressor that died or, worse, one that
//! runs with the agent's protection. Before the attach, so not even a brief window exists
//! in which a protected process sits in the target's cgroup.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chaos_cgroup::{CgroupError, CgroupFs, ProcessCgroup};
use tokio::sync::oneshot;

use crate::error::AgentError;
use crate::journal::UndoRecord;
use crate::procfs::{ProcessIdentity, ProcessInfo, Procfs};

/// The hidden subcommand of the agent binary that runs a stressor.
pub const SUBCOMMAND: &str = "stress";
/// How long a revert waits for a killed stressor to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
const REAP_POLL: Duration = Duration::from_millis(2);
/// The stressor's `oom_score_adj`: the kernel's highest, so that under any memory pressure
/// (its target's limit, a pod's or a parent's limit, the node's) the OOM killer takes a
/// stressor first. Raising a score needs no privilege.
pub const STRESSOR_OOM_SCORE_ADJ: i32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StressorError {
    #[error("cannot start the stressor process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot move the stressor into the target cgroup {cgroup}: {source}")]
    Attach {
        cgroup: String,
        #[source]
        source: CgroupError,
    },
    #[error(
        "cannot make stressor {pid} the OOM killer's first choice (oom_score_adj {STRESSOR_OOM_SCORE_ADJ}): {detail}"
    )]
    OomScore { pid: u32, detail: String },
    #[error("cannot release the stressor: {0}")]
    Release(#[source] std::io::Error),
    #[error("cannot read the stressor's identity: {0}")]
    Identity(String),
    #[error("the stressor spawner thread is gone")]
    SpawnerGone,
}

impl From<StressorError> for AgentError {
    fn from(err: StressorError) -> AgentError {
        match &err {
            StressorError::Attach {
                source: CgroupError::Unsupported { .. },
                ..
            } => AgentError::FailedPrecondition(err.to_string()),
            StressorError::Attach { source, .. } if source.is_not_found() => {
                AgentError::NotFound(format!("{err} (did the container stop?)"))
            }
            _ => AgentError::Internal(err.to_string()),
        }
    }
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct StressorRequest {
    /// Arguments after `chaos-agent --cgroup-root ROOT stress` (e.g. `cpu --percent 50 ...`).
    pub args: Vec<OsString>,
    /// The target's own cgroup; the stressor joins it, never a child of it.
    pub cgroup: ProcessCgroup,
    pub cgroups: CgroupFs,
}

/// A running stressor. Not reaped until [`Stressor::kill_and_reap`].
#[derive(Debug)]
pub struct Stressor {
    child: Child,
    pub identity: ProcessIdentity,
}

impl Stressor {
    pub fn pid(&self) -> u32 {
        self.identity.pid
    }

    /// True while the process has not exited (reaps it if it has).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL (a no-op if it already exited) and wait until it is reaped, bounded in time.
    /// Returns an error only if it is still there after the timeout.
    pub async fn kill_and_reap(&mut self) -> Result<(), String> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Ok(());
        }
        // The child is not reaped yet, so its pid cannot have been reused: kill is exact.
        let _ = self.child.kill();
        let started = tokio::time::Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if started.elapsed() < REAP_TIMEOUT => {
                    tokio::time::sleep(REAP_POLL).await;
                }
                Ok(None) => {
                    return Err(format!(
                        "stressor {} still running {} s after SIGKILL",
                        self.pid(),
                        REAP_TIMEOUT.as_secs()
                    ));
                }
                Err(e) => return Err(format!("waiting for stressor {}: {e}", self.pid())),
            }
        }
    }
}

/// Kills and reaps every stressor; the errors of those that would not go, joined.
pub async fn kill_all(stressors: &mut [Stressor]) -> Result<(), String> {
    let mut errors = Vec::new();
    for stressor in stressors.iter_mut() {
        if let Err(e) = stressor.kill_and_reap().await {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Starts one stressor per request, all or none: on an error the ones already started
/// are killed before the error is returned.
pub async fn spawn_all(requests: Vec<StressorRequest>) -> Result<Vec<Stressor>, StressorError> {
    let mut started = Vec::with_capacity(requests.len());
    for request in requests {
        match spawn(request).await {
            Ok(stressor) => started.push(stressor),
            Err(e) => {
                if let Err(kill_error) = kill_all(&mut started).await {
                    tracing::error!(error = %kill_error, "cannot kill stressors of a failed apply");
                }
                return Err(e);
            }
        }
    }
    Ok(started)
}

pub fn identities(stressors: &[Stressor]) -> Vec<ProcessIdentity> {
    stressors.iter().map(|s| s.identity).collect()
}

/// The journal's form for a fault whose only state on the node is its stressors (CPU,
/// memory): kill them. Tagged as every undo form is (see `journal::UndoRecord`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StressorUndo {
    KillProcesses { processes: Vec<ProcessIdentity> },
}

/// What the journal holds for a fault running `stressors`.
pub fn undo_record(stressors: &[Stressor]) -> UndoRecord {
    UndoRecord::of(&StressorUndo::KillProcesses {
        processes: identities(stressors),
    })
}

/// Kills the stressors a journal record lists, after a crash. A pid that exited or now
/// belongs to another process (its start time differs) is done: the stressor is gone.
pub fn replay(procfs: &Procfs, record: &UndoRecord) -> Result<(), String> {
    let StressorUndo::KillProcesses { processes } = record.read()?;
    crate::sys::signal_each(procfs, &processes, nix::sys::signal::Signal::SIGKILL)
}

struct Job {
    request: StressorRequest,
    reply: oneshot::Sender<Result<Stressor, StressorError>>,
}

/// Starts a stressor in the target cgroup, from the long-lived spawner thread.
pub async fn spawn(request: StressorRequest) -> Result<Stressor, StressorError> {
    let (reply, answer) = oneshot::channel();
    spawner()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send(Job { request, reply })
        .map_err(|_| StressorError::SpawnerGone)?;
    answer.await.map_err(|_| StressorError::SpawnerGone)?
}

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (jobs, receiver) = mpsc::channel::<Job>();
        // The sender lives in a static, so the loop ends only with the process.
        let started = std::thread::Builder::new()
            .name("stressor-spawner".into())
            .spawn(move || {
                for job in receiver {
                    let _ = job.reply.send(start(&job.request));
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the stressor spawner thread");
        }
        Mutex::new(jobs)
    })
}

/// A direct child of the agent running its `stress` subcommand for it (`--parent` names
/// the agent: the spawner's command line, see `stressor::start`), or one of its children
/// killed and not yet reaped (a zombie has no command line; the agent's only children in a
/// target's cgroup are its stressors).
pub fn is_own_stressor(process: &ProcessInfo, agent: u32) -> bool {
    let args: Vec<&str> = process.cmdline.split(' ').collect();
    let parent = agent.to_string();
    process.ppid == agent
        && (process.cmdline.is_empty()
            || (args.contains(&SUBCOMMAND)
                && args
                    .windows(2)
                    .any(|pair| pair[0] == "--parent" && pair[1] == parent)))
}

/// Runs on the spawner thread: spawn, OOM score, attach, release. On any error the child is
/// killed.
fn start(request: &StressorRequest) -> Result<Stressor, StressorError> {
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("--cgroup-root")
        .arg(request.cgroups.root())
        .arg(SUBCOMMAND)
        .args(&request.args)
        .arg("--parent")
        .arg(std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().map_err(StressorError::Spawn)?;
    let pid = child.id();
    let procfs = Procfs::default();
    let released = set_oom_score_adj(procfs.root(), pid, STRESSOR_OOM_SCORE_ADJ)
        .and_then(|()| attach_and_release(request, &mut child, pid));
    let identity = released.and_then(|()| {
        procfs
            .stat(pid)
            .map(|stat| ProcessIdentity {
                pid,
                start_time: stat.start_time,
            })
            .map_err(|e| StressorError::Identity(e.to_string()))
    });
    match identity {
        Ok(identity) => Ok(Stressor { child, identity }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Writes `value` to `<proc_root>/PID/oom_score_adj` and reads it back; a failed write, a
/// failed read or another value read back is an error.
pub fn set_oom_score_adj(proc_root: &Path, pid: u32, value: i32) -> Result<(), StressorError> {
    let file = proc_root.join(pid.to_string()).join("oom_score_adj");
    let failed = |detail: String| StressorError::OomScore { pid, detail };
    std::fs::write(&file, value.to_string())
        .map_err(|e| failed(format!("writing {}: {e}", file.display())))?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| failed(format!("reading {} back: {e}", file.display())))?;
    match text.trim().parse::<i32>() {
        Ok(read) if read == value => Ok(()),
        _ => Err(failed(format!(
            "{} reads {:?} after writing {value}",
            file.display(),
            text.trim()
        ))),
    }
}

fn attach_and_release(
    request: &StressorRequest,
    child: &mut Child,
    pid: u32,
) -> Result<(), StressorError> {
    request
        .cgroups
        .attach(&request.cgroup, pid)
        .map_err(|source| StressorError::Attach {
            cgroup: request.cgroup.display_path(),
            source,
        })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| StressorError::Release(std::io::Error::other("no stdin pipe")))?;
    stdin.write_all(b"go\n").map_err(StressorError::Release)?;
    Ok(())
}

/// What the hidden `stress` subcommand runs in the child.
#[derive(Debug, Clone, PartialEq)]
pub enum ChildStressor {
    Cpu {
        percent: f64,
        mode: chaos_stress::cpu::CpuMode,
        /// 0 = as many as the target needs.
        workers: usize,
        duration: Duration,
    },
    Memory {
        bytes: u64,
        ramp: Duration,
        duration: Duration,
    },
    Io {
        /// The target's init (pid and start time), whose root holds `path`.
        pid: u32,
        start_time: u64,
        path: std::path::PathBuf,
        /// The file to create in it, never an existing one.
        name: String,
        file_bytes: u64,
        /// This worker's share; 0 = as fast as the device allows.
        bytes_per_second: u64,
        duration: Duration,
    },
}

/// An IO worker's directory, opened inside the target's root while the child still holds
/// the agent's capabilities (CAP_SYS_PTRACE for another process's root): after the go
/// line it has none. The init is checked by its start time: a recycled pid is another
/// process, whose root is not the target's.
fn open_io_dir(
    pid: u32,
    start_time: u64,
    path: &std::path::Path,
) -> Result<std::os::fd::OwnedFd, chaos_stress::StressError> {
    use chaos_stress::StressError;
    let procfs = Procfs::default();
    let same = procfs.stat(pid).is_ok_and(|s| s.start_time == start_time);
    if !same {
        return Err(StressError::InvalidConfig(format!(
            "the target's init {pid} exited since the fault was prepared"
        )));
    }
    let root = procfs.root().join(pid.to_string()).join("root");
    crate::fill_file::open_dir_in(&root, path)
        .map(Into::into)
        .map_err(|source| StressError::Os {
            what: "opening the IO stressor's directory in the target",
            source,
        })
}

/// The child side: die with the agent, wait until the agent has moved this process into
/// the target cgroup, then run the stressor until its duration has passed.
pub fn run_child(
    parent: i32,
    cgroup_root: &std::path::Path,
    stressor: &ChildStressor,
) -> Result<(), chaos_stress::StressError> {
    use chaos_stress::StressError;
    chaos_stress::prepare_child(parent)?;
    let io_dir = match stressor {
        ChildStressor::Io {
            pid,
            start_time,
            path,
            ..
        } => Some(open_io_dir(*pid, *start_time, path)?),
        _ => None,
    };
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .map_err(|source| StressError::Os {
            what: "waiting for the agent's go line",
            source,
        })?;
    if go.is_empty() {
        // The agent closed the pipe without releasing us: it failed to attach.
        return Err(StressError::InvalidConfig(
            "released without a go line".into(),
        ));
    }
    // Attached and scored by the agent: from here on the load runs, which needs no
    // capability, so none is kept (before the CPU workers start: threads inherit them).
    crate::capabilities::drop_all_capabilities().map_err(|source| StressError::Os {
        what: "dropping the stressor's capabilities",
        source,
    })?;
    // Progress goes nowhere: the agent measures from the cgroup and /proc itself.
    let mut progress = std::io::sink();
    match stressor {
        ChildStressor::Cpu {
            percent,
            mode,
            workers,
            duration,
        } => {
            let config = chaos_stress::cpu::CpuStressConfig {
                // Read after the attach: the cgroup this process now shares with the target.
                cgroup: ProcessCgroup::of_pid(std::path::Path::new("/proc"), std::process::id())?,
                cgroup_root: cgroup_root.to_path_buf(),
                target_percent_of_limit: *percent,
                mode: *mode,
                workers: *workers,
                deadline: std::time::SystemTime::now() + *duration,
            };
            chaos_stress::cpu::run(&config, &mut progress)?;
        }
        ChildStressor::Memory {
            bytes,
            ramp,
            duration,
        } => {
            let config = chaos_stress::memory::MemoryStressConfig {
                bytes: *bytes,
                ramp: *ramp,
                deadline: std::time::SystemTime::now() + *duration,
            };
            chaos_stress::memory::run(&config, &mut progress)?;
        }
        ChildStressor::Io {
            name,
            file_bytes,
            bytes_per_second,
            duration,
            ..
        } => {
            let dir = io_dir.ok_or_else(|| {
                StressError::InvalidConfig("the IO stressor's directory is not open".into())
            })?;
            let config = chaos_stress::io::IoStressConfig {
                dir,
                name: name.clone(),
                file_bytes: *file_bytes,
                bytes_per_second: *bytes_per_second,
                deadline: std::time::SystemTime::now() + *duration,
            };
            chaos_stress::io::run(&config, &mut progress)?;
        }
    }
    Ok(())
}

/// CPU time (user + system) a process has used, in nanoseconds, from `/proc/PID/stat`.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // proc(5): utime and stime are fields 14 and 15; fields[0] here is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000_000 / clock_ticks_per_second())
}

/// What a process read from and wrote to storage, in bytes (`read_bytes` and `write_bytes`
/// of `/proc/PID/io`: IO that reached the block layer, not page-cache hits).
pub fn process_storage_io(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok())
    };
    Some((field("read_bytes:")?, field("write_bytes:")?))
}

/// Resident anonymous memory of a process in bytes (`RssAnon` of `/proc/PID/status`).
pub fn resident_anon_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agents_own_stressor_children_are_left_out() {
        let process = |ppid: u32, cmdline: &str| ProcessInfo {
            pid: 9,
            ppid,
            comm: "exe".into(),
            cmdline: cmdline.into(),
            argv0_name: "exe".into(),
            start_time: 1,
        };
        let stressor =
            "/proc/self/exe --cgroup-root /sys/fs/cgroup stress cpu --percent 50 --parent 7";
        assert!(is_own_stressor(&process(7, stressor), 7));
        // A stressor killed and not yet reaped: a zombie has no command line.
        assert!(is_own_stressor(&process(7, ""), 7));
        // Another agent's stressor, the agent itself, a child that is not a stressor.
        let other = stressor.replace("--parent 7", "--parent 8");
        assert!(!is_own_stressor(&process(8, &other), 7));
        assert!(!is_own_stressor(
            &process(1, "/bin/chaos-agent --listen x"),
            7
        ));
        assert!(!is_own_stressor(&process(7, "/sbin/modprobe sch_netem"), 7));
    }

    #[test]
    fn a_real_process_gets_the_stressor_oom_score_and_it_is_read_back() {
        // Raising a score needs no privilege: this runs as any user.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let result = set_oom_score_adj(Path::new("/proc"), pid, STRESSOR_OOM_SCORE_ADJ);
        let read = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"));
        let _ = child.kill();
        let _ = child.wait();
        result.unwrap();
        assert_eq!(read.unwrap().trim(), "1000");
    }

    #[test]
    fn an_oom_score_that_cannot_be_set_is_an_error_naming_the_file() {
        let proc_root = tempfile::tempdir().unwrap();
        // No such process.
        let err = set_oom_score_adj(proc_root.path(), 4242, 1000).unwrap_err();
        assert!(
            matches!(err, StressorError::OomScore { pid: 4242, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("4242/oom_score_adj"), "{err}");
        // A file that cannot be written (a directory stands in for a refusing kernel).
        let gone = proc_root.path().join("77");
        std::fs::create_dir(&gone).unwrap();
        std::fs::create_dir(gone.join("oom_score_adj")).unwrap();
        let err = set_oom_score_adj(proc_root.path(), 77, 1000).unwrap_err();
        assert!(err.to_string().contains("writing"), "{err}");
        // The error reaches the caller as an internal failure of the inject.
        assert!(matches!(AgentError::from(err), AgentError::Internal(_)));
    }

    #[test]
    fn reads_own_cpu_time_and_resident_memory() {
        use nix::time::{ClockId, clock_gettime};
        let cpu_clock = || {
            let t = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
            t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
        };
        let me = std::process::id();
        let start = process_cpu_ns(me).unwrap();
        // Spin until the kernel's own CPU clock says 100 ms were used (bounded in wall
        // time: a loaded machine gives us less CPU per second, not less accounting).
        let clock_start = cpu_clock();
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        while cpu_clock() < clock_start + 100_000_000 && std::time::Instant::now() < give_up {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let used = cpu_clock() - clock_start;
        let end = process_cpu_ns(me).unwrap();
        // /proc counts in 10 ms ticks: it must show the used time to within two ticks.
        assert!(
            end + 20_000_000 >= start + used,
            "{start} -> {end}, clock says {used} ns used"
        );
        assert!(resident_anon_bytes(me).unwrap() > 0);
        assert!(process_cpu_ns(u32::MAX).is_none());
    }
}
