//! The IO stress fault: worker processes in each target's cgroup (the agent's own
//! `stress io` subcommand, one process per worker) that write and read back a file each in
//! a directory of the target's filesystem, so the IO is charged to the container and
//! bounded by its limits. The status reads the cgroups' own IO counters back.
//!
//! A worker opens the directory itself, inside the target's root (`fill_file`, so a
//! symlink the workload planted never leads it onto the node's files), before it is
//! released, while it holds the agent's capabilities; it drops them before any IO.
//!
//! The files are disk fill's records (`disk_fill::FillFile`), named before anything starts,
//! so the journal holds them from the first write: they are removed at every end, through
//! the container while its init lives and through the node's mount after, and the workers
//! are killed (as cpu and memory stressors) first. The space they take is decided as a
//! disk fill's: within what df shows available, and above the node's free floor on a
//! filesystem the node uses; if the node cannot be read, the inject is refused.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chaos_cgroup::{CgroupFs, DeviceNumber, IoCounters, ProcessCgroup};
use chaos_proto::api;
use futures::future::BoxFuture;

use crate::capabilities::Capability;
use crate::error::AgentError;
use crate::faults::disk_fill::{FillFile, fill_bytes, remove_each};
use crate::faults::target_fs::NodeView;
use crate::faults::target_watch::TargetWatch;
use crate::faults::{Fault, KindInfo, PrepareContext, Prepared, TickOutcome, lacks_nothing};
use crate::fill_file::Space;
use crate::journal::UndoRecord;
use crate::procfs::{ProcessIdentity, ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::stressor::{self, Stressor, StressorRequest};
use crate::target::TargetSpec;
use crate::validate::{FillAmount, IoStressPlan};

pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::IoStress,
    capabilities: &[(
        Capability::SysPtrace,
        "opening the target's /proc/PID/root and the node's /proc/1/root (their processes hold capabilities the agent does not)",
    )],
    replay,
    node_lacks: lacks_nothing,
};

/// How often the cgroups' IO counters are read back.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The default directory, where the target has one: meant for scratch files.
const DEFAULT_DIR: &str = "/tmp";

/// The journal's form: kill the workers, then remove their files. Tagged as every undo
/// form is (see `journal::UndoRecord`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum IoStressUndo {
    KillAndRemove {
        processes: Vec<ProcessIdentity>,
        files: Vec<FillFile>,
    },
}

/// Kills the workers a journal record lists, then removes their files, after a crash.
pub fn replay(procfs: &Procfs, record: &UndoRecord) -> Result<(), String> {
    let IoStressUndo::KillAndRemove { processes, files } = record.read()?;
    let killed = crate::sys::signal_each(procfs, &processes, nix::sys::signal::Signal::SIGKILL);
    let removed = remove_each(procfs, &files);
    match (killed, removed) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(format!("{a}; {b}")),
    }
}

/// Checks that the files of one filesystem fit: `files` of `file_bytes` each, as a disk
/// fill of their sum would.
pub fn check_space(
    files: u64,
    file_bytes: u64,
    space: Space,
    node_filesystem: bool,
    floor_percent: u32,
) -> Result<u64, String> {
    let total = files.saturating_mul(file_bytes);
    fill_bytes(
        FillAmount::Bytes(total),
        space,
        node_filesystem,
        floor_percent,
    )
    .map_err(|why| format!("{files} worker file(s) of {file_bytes} bytes: {why}"))
}

/// The arguments of `chaos-agent stress` for one worker.
pub fn stressor_args(file: &FillFile, bytes_per_second: u64, duration: Duration) -> Vec<OsString> {
    vec![
        "io".into(),
        "--pid".into(),
        file.pid.to_string().into(),
        "--start-time".into(),
        file.start_time.to_string().into(),
        "--path".into(),
        file.dir.clone().into_os_string(),
        "--name".into(),
        file.name.clone().into(),
        "--file-bytes".into(),
        file.bytes.to_string().into(),
        "--bytes-per-second".into(),
        bytes_per_second.to_string().into(),
        "--duration-ms".into(),
        duration.as_millis().to_string().into(),
    ]
}

/// One target: its cgroup and the counters it had at the inject.
#[derive(Debug)]
struct IoTarget {
    cgroup: ProcessCgroup,
    baseline: Option<IoCounters>,
    last: IoCounters,
}

#[derive(Debug)]
pub struct IoStressFault {
    plan: IoStressPlan,
    cgroups: CgroupFs,
    duration: Duration,
    targets: Vec<IoTarget>,
    /// Each worker's file, with the index of its target in `targets`.
    files: Vec<(usize, FillFile)>,
    stressors: Vec<Stressor>,
    /// Each stressor's last storage IO read (read, written), kept once it exits.
    stressor_io: Vec<(u64, u64)>,
    status: api::IoStressStatus,
    watch: TargetWatch,
}

/// The directory a target is stressed in: the plan's, or /tmp where it has one, else /.
fn directory(
    plan: &IoStressPlan,
    node: &NodeView,
    procfs: &Procfs,
    target: &Resolved,
) -> Result<(PathBuf, crate::faults::target_fs::Located), AgentError> {
    if let Some(path) = &plan.path {
        return Ok((path.clone(), node.locate(procfs, target, path)?));
    }
    match node.locate(procfs, target, Path::new(DEFAULT_DIR)) {
        Ok(located) => Ok((PathBuf::from(DEFAULT_DIR), located)),
        Err(AgentError::NotFound(_)) => Ok((
            PathBuf::from("/"),
            node.locate(procfs, target, Path::new("/"))?,
        )),
        Err(e) => Err(e),
    }
}

/// Decides the workers and their files for the resolved targets; touches nothing.
pub fn prepare(
    plan: &IoStressPlan,
    spec: &TargetSpec,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let procfs = &context.resolver.procfs;
    let node = NodeView::read(procfs, plan.node_pid)?;
    let fault_name = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut files = Vec::new();
    let mut io_targets = Vec::new();
    // Per filesystem: its space, whether the node uses it, and how many files go there.
    let mut filesystems: BTreeMap<DeviceNumber, (Space, bool, u64, String)> = BTreeMap::new();
    for (index, target) in targets.iter().enumerate() {
        let what = target.describe();
        let (dir, located) = directory(plan, &node, procfs, target)?;
        let space = located.dir.space().map_err(|e| {
            AgentError::FailedPrecondition(format!("{what}: {}: {e}", dir.display()))
        })?;
        let entry = filesystems.entry(located.device).or_insert((
            space,
            located.node_filesystem,
            0,
            format!("{what}: {}", dir.display()),
        ));
        entry.2 += u64::from(plan.workers);
        for _ in 0..plan.workers {
            files.push((
                index,
                FillFile {
                    target: what.clone(),
                    pid: target.init.pid,
                    start_time: target.init.start_time,
                    dir: dir.clone(),
                    name: format!(".chaos-io-stress-{fault_name}-{}", files.len()),
                    bytes: plan.file_bytes,
                    node_dir: located.node_dir.clone(),
                    node: node.node,
                    node_filesystem: located.node_filesystem,
                },
            ));
        }
        io_targets.push(IoTarget {
            cgroup: target.cgroup.clone(),
            baseline: None,
            last: IoCounters::default(),
        });
    }
    for (space, node_filesystem, count, where_) in filesystems.values() {
        check_space(
            *count,
            plan.file_bytes,
            *space,
            *node_filesystem,
            plan.node_min_free_percent,
        )
        .map_err(|why| AgentError::FailedPrecondition(format!("{where_}: {why}")))?;
    }
    let rate = match plan.bytes_per_second {
        Some(bps) => format!("{bps} bytes/s per target"),
        None => "as fast as the device allows".to_string(),
    };
    let fault = IoStressFault {
        plan: plan.clone(),
        cgroups: context.resolver.cgroups.clone(),
        duration: context.duration,
        status: api::IoStressStatus {
            workers: files.len() as u32,
            files: files
                .iter()
                .map(|(_, f)| f.path().display().to_string())
                .collect(),
            ..Default::default()
        },
        targets: io_targets,
        files,
        stressors: Vec::new(),
        stressor_io: Vec::new(),
        watch: TargetWatch::of(spec, targets, procfs),
    };
    Ok(Prepared {
        plan_summary: format!(
            "would run {} IO worker(s) in each of {} target(s), {rate}, each with a file of {} bytes",
            plan.workers,
            targets.len(),
            plan.file_bytes
        ),
        acts_on: Vec::new(),
        fault: Box::new(fault),
    })
}

impl IoStressFault {
    fn measure(&mut self) {
        let mut total = IoCounters::default();
        for target in &mut self.targets {
            if let (Some(baseline), Ok(now)) =
                (target.baseline, self.cgroups.io_counters(&target.cgroup))
            {
                target.last = now.since(&baseline);
            }
            total.read_bytes += target.last.read_bytes;
            total.written_bytes += target.last.written_bytes;
        }
        self.status.read_bytes = total.read_bytes;
        self.status.written_bytes = total.written_bytes;
        self.stressor_io.resize(self.stressors.len(), (0, 0));
        let mut running = 0;
        for (stressor, last) in self.stressors.iter_mut().zip(&mut self.stressor_io) {
            // Only an unreaped child: once reaped its pid may name another process.
            if !stressor.is_running() {
                continue;
            }
            running += 1;
            if let Some(now) = stressor::process_storage_io(stressor.pid()) {
                *last = now;
            }
        }
        self.status.workers_running = running;
        self.status.workers_read_bytes = self.stressor_io.iter().map(|io| io.0).sum();
        self.status.workers_written_bytes = self.stressor_io.iter().map(|io| io.1).sum();
    }

    fn undo_form(&self) -> IoStressUndo {
        IoStressUndo::KillAndRemove {
            processes: stressor::identities(&self.stressors),
            files: self.files.iter().map(|(_, f)| f.clone()).collect(),
        }
    }

    fn files(&self) -> Vec<FillFile> {
        self.files.iter().map(|(_, f)| f.clone()).collect()
    }
}

impl Fault for IoStressFault {
    fn kind(&self) -> api::FaultKind {
        api::FaultKind::IoStress
    }

    /// Records the counters, then starts every worker (all or none).
    fn apply<'a>(
        &'a mut self,
        procfs: &'a Procfs,
        _acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            for target in &mut self.targets {
                target.baseline = self.cgroups.io_counters(&target.cgroup).ok();
            }
            let share = self.plan.worker_bytes_per_second();
            let requests = self
                .files
                .iter()
                .map(|(index, file)| StressorRequest {
                    args: stressor_args(file, share, self.duration),
                    cgroup: self.targets[*index].cgroup.clone(),
                    cgroups: self.cgroups.clone(),
                })
                .collect();
            match stressor::spawn_all(requests).await {
                Ok(started) => self.stressors = started,
                Err(e) => {
                    // The killed workers may have created their files.
                    if let Err(left) = remove_each(procfs, &self.files()) {
                        tracing::error!(error = %left, "cannot remove the files of a failed IO stress");
                    }
                    return Err(e.into());
                }
            }
            self.measure();
            Ok(())
        })
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(STATUS_INTERVAL)
    }

    fn tick(
        &mut self,
        _procfs: &Procfs,
        _chosen: Option<Result<Vec<ProcessInfo>, String>>,
    ) -> TickOutcome {
        self.measure();
        TickOutcome::Continue
    }

    fn target_watch(&self) -> Option<&TargetWatch> {
        Some(&self.watch)
    }

    /// Kills the workers first (a reaped worker writes nothing more), then removes the
    /// files.
    fn revert<'a>(&'a mut self, procfs: &'a Procfs) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.measure();
            let killed = stressor::kill_all(&mut self.stressors).await;
            self.status.workers_running = 0;
            let removed = remove_each(procfs, &self.files());
            match (killed, removed) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
                (Err(a), Err(b)) => Err(format!("{a}; {b}")),
            }
        })
    }

    fn undo(&self) -> UndoRecord {
        UndoRecord::of(&self.undo_form())
    }

    fn status(&self) -> api::fault::Status {
        api::fault::Status::IoStress(self.status.clone())
    }

    /// One thread per worker.
    fn stressor_threads_per_target(&self) -> u32 {
        self.plan.workers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn file(name: &str, dir: &str, node_dir: Option<&str>) -> FillFile {
        FillFile {
            target: "container:c".into(),
            pid: 4_194_304,
            start_time: 1,
            dir: dir.into(),
            name: name.into(),
            bytes: 8 * MIB,
            node_dir: node_dir.map(PathBuf::from),
            node: ProcessIdentity {
                pid: 4_194_305,
                start_time: 1,
            },
            node_filesystem: false,
        }
    }

    #[test]
    fn the_files_of_a_filesystem_fit_together_or_are_refused() {
        let space = Space {
            used: 0,
            available: 100 * MIB,
        };
        assert_eq!(check_space(4, 8 * MIB, space, false, 15), Ok(32 * MIB));
        let over = check_space(8, 16 * MIB, space, false, 15).unwrap_err();
        assert!(over.contains("8 worker file(s)"), "{over}");
        assert!(over.contains("all there is"), "{over}");
        // On the node's filesystem the floor (15 of 100 MiB) is kept: 85 MiB fit, 90 not.
        assert_eq!(check_space(5, 17 * MIB, space, true, 15), Ok(85 * MIB));
        assert_eq!(check_space(5, 18 * MIB, space, false, 15), Ok(90 * MIB));
        let floor = check_space(5, 18 * MIB, space, true, 15).unwrap_err();
        assert!(floor.contains("--disk-fill-min-free-percent"), "{floor}");
        assert!(check_space(u64::MAX, MIB, space, false, 15).is_err());
    }

    #[test]
    fn a_worker_is_told_its_target_directory_file_and_share() {
        let args = stressor_args(
            &file(".chaos-io-stress-x-0", "/data", None),
            65536,
            Duration::from_secs(30),
        );
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args.join(" "),
            "io --pid 4194304 --start-time 1 --path /data --name .chaos-io-stress-x-0 \
             --file-bytes 8388608 --bytes-per-second 65536 --duration-ms 30000"
        );
    }

    #[test]
    fn a_replay_kills_the_workers_and_removes_their_files_through_the_node() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = tmp.path().join("1/root/mnt/volume");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join(".chaos-io-stress-x-0"), b"x").unwrap();
        std::fs::write(volume.join("keep"), b"x").unwrap();
        let record = UndoRecord::of(&IoStressUndo::KillAndRemove {
            // Above the kernel's maximum pid: gone.
            processes: vec![ProcessIdentity {
                pid: 4_194_306,
                start_time: 1,
            }],
            files: vec![file(".chaos-io-stress-x-0", "/data", Some("/mnt/volume"))],
        });
        let procfs = Procfs::at(tmp.path());
        assert_eq!(replay(&procfs, &record), Ok(()));
        assert!(!volume.join(".chaos-io-stress-x-0").exists());
        assert!(volume.join("keep").exists());
        assert_eq!(replay(&procfs, &record), Ok(()));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["action"], "kill_and_remove");
    }
}
