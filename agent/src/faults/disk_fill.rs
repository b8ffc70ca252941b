//! The disk fill fault: one file, allocated at once, in a directory of each target's
//! filesystem (its writable root, or a mounted volume), removed at every end.
//!
//! Every step into the container's tree resolves inside its root (`fill_file`), so a
//! symlink the workload planted never leads the agent onto the node's own files. What it
//! fills is a filesystem, so the decisions are about that filesystem:
//! - one file per distinct filesystem of the targets (a pod's containers share the one
//!   their writable layers are on);
//! - never past what df shows available (the blocks reserved for root stay free);
//! - on a filesystem the node itself uses (that of its `/`, `/var`, the kubelet's and
//!   containerd's directories, `/var/log`, `/tmp`, compared by device, an overlay by its
//!   upper directory's), never below the agent's free floor, which is above the kubelet's
//!   default eviction thresholds.
//!
//! The file is found again by its name, unique to the fault, through the container while
//! its init lives and through the same directory in the node's mount namespace after (a
//! volume outlives its container); the journal holds both.

use std::path::PathBuf;
use std::time::Duration;

use chaos_cgroup::DeviceNumber;
use chaos_proto::api;
use futures::future::BoxFuture;

use crate::capabilities::Capability;
use crate::error::AgentError;
use crate::faults::target_fs::{NodeView, root_of};
use crate::faults::{Fault, KindInfo, PrepareContext, Prepared, TickOutcome, lacks_nothing};
use crate::fill_file::{Dir, Space, open_dir_in};
use crate::journal::UndoRecord;
use crate::procfs::{ProcessIdentity, ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::validate::{DiskFillPlan, FillAmount};

pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::DiskFill,
    capabilities: &[(
        Capability::SysPtrace,
        "opening the target's /proc/PID/root and the node's /proc/1/root (their processes hold capabilities the agent does not)",
    )],
    replay,
    node_lacks: lacks_nothing,
};

/// How often a fill reads its files and filesystems back for the status.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// One fill file, as the journal lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FillFile {
    /// The target, for the status.
    pub target: String,
    /// The process whose root the directory is seen from (its init), by pid and start
    /// time: a recycled pid is another process.
    pub pid: u32,
    pub start_time: u64,
    /// The directory as the target sees it, and the file's name in it.
    pub dir: PathBuf,
    pub name: String,
    pub bytes: u64,
    /// The same directory in the node's mount namespace, when the node has it mounted,
    /// and the process whose root that namespace is seen from.
    pub node_dir: Option<PathBuf>,
    pub node: ProcessIdentity,
    pub node_filesystem: bool,
}

impl FillFile {
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The directory, through the target while its init lives, else through the node;
    /// the error says which way failed.
    pub(crate) fn open(&self, procfs: &Procfs) -> Result<Dir, (String, std::io::Error)> {
        let alive = procfs
            .process(self.pid)
            .is_ok_and(|p| p.start_time == self.start_time);
        if alive {
            match open_dir_in(&root_of(procfs, self.pid), &self.dir) {
                Ok(dir) => return Ok(dir),
                Err(e) if self.node_dir.is_none() => {
                    return Err((format!("{} in the target", self.dir.display()), e));
                }
                Err(_) => {}
            }
        }
        // The node's process of the inject, or PID 1 once that one is gone (a reboot).
        let node = if procfs
            .process(self.node.pid)
            .is_ok_and(|p| p.start_time == self.node.start_time)
        {
            self.node.pid
        } else {
            1
        };
        match &self.node_dir {
            Some(node_dir) => open_dir_in(&root_of(procfs, node), node_dir)
                .map_err(|e| (format!("{} on the node", node_dir.display()), e)),
            None => Err((
                "the target is gone and the node has no mount of the directory".into(),
                std::io::ErrorKind::NotFound.into(),
            )),
        }
    }

    /// Removes the file; one that is gone, or whose directory is, is done.
    pub(crate) fn remove(&self, procfs: &Procfs) -> Result<(), String> {
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let removed = self.open(procfs).and_then(|dir| {
            dir.remove(&self.name)
                .map_err(|e| ("unlinking it".to_string(), e))
        });
        match removed {
            Ok(()) => Ok(()),
            Err((_, e)) if gone(&e) => Ok(()),
            Err((step, e)) => Err(format!(
                "removing {} of {} ({step}): {e}",
                self.path().display(),
                self.target
            )),
        }
    }
}

/// The journal's form for a disk fill. Tagged as every undo form is (see
/// `journal::UndoRecord`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DiskFillUndo {
    RemoveFiles { files: Vec<FillFile> },
}

/// Removes what a journal record of a disk fill lists, after a crash.
pub fn replay(procfs: &Procfs, record: &UndoRecord) -> Result<(), String> {
    let DiskFillUndo::RemoveFiles { files } = record.read()?;
    remove_each(procfs, &files)
}

pub(crate) fn remove_each(procfs: &Procfs, files: &[FillFile]) -> Result<(), String> {
    let errors: Vec<String> = files
        .iter()
        .filter_map(|f| f.remove(procfs).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// How many bytes a fill allocates on a filesystem with `space`, or why it may not.
pub fn fill_bytes(
    amount: FillAmount,
    space: Space,
    node_filesystem: bool,
    floor_percent: u32,
) -> Result<u64, String> {
    let size = space.size();
    let percent_of = |bytes: u64| bytes as f64 * 100.0 / size.max(1) as f64;
    let bytes = match amount {
        FillAmount::Bytes(bytes) => bytes,
        FillAmount::UsedPercent(percent) => {
            let wanted = size / 100 * u64::from(percent);
            if space.used >= wanted {
                return Err(format!(
                    "the filesystem is already {:.1} % used, at or above the {percent} % asked",
                    percent_of(space.used)
                ));
            }
            wanted - space.used
        }
    };
    let floor = if node_filesystem {
        size / 100 * u64::from(floor_percent)
    } else {
        0
    };
    let room = space.available.saturating_sub(floor);
    if bytes > room {
        let why = if node_filesystem {
            format!(
                "the node uses this filesystem, and the agent keeps {floor_percent} % of it available (--disk-fill-min-free-percent)"
            )
        } else {
            "that is all there is".to_string()
        };
        return Err(format!(
            "{bytes} bytes asked, {room} may be filled ({} available of {size}: {why})",
            space.available
        ));
    }
    Ok(bytes)
}

/// Why a mount may not be filled: a filesystem in memory (an emptyDir of medium Memory,
/// /dev/shm), whose pages the agent's own fallocate would take from the node's memory and
/// charge to the agent's cgroup, not the target's. A memory fault fills memory honestly.
fn memory_backed(fs_type: &str) -> Option<String> {
    matches!(fs_type, "tmpfs" | "ramfs").then(|| {
        format!(
            "{fs_type} (memory: a fill would take the node's memory, charged to the agent; use a memory fault)"
        )
    })
}

/// Decides the files for the resolved targets: per distinct filesystem, where and how
/// much; touches nothing.
pub fn prepare(
    plan: &DiskFillPlan,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let procfs = &context.resolver.procfs;
    let node = NodeView::read(procfs, plan.node_pid)?;
    let name = format!(
        ".chaos-disk-fill-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let path = plan.path.display().to_string();
    let mut files: Vec<FillFile> = Vec::new();
    let mut filled: Vec<DeviceNumber> = Vec::new();
    let mut acts_on: Vec<ProcessInfo> = Vec::new();
    for target in targets {
        let what = target.describe();
        let located = node.locate(procfs, target, &plan.path)?;
        if let Some(refused) = memory_backed(&located.fs_type) {
            return Err(AgentError::FailedPrecondition(format!(
                "{what}: {path} is on a {refused}"
            )));
        }
        acts_on.extend(target.processes.iter().cloned());
        if filled.contains(&located.device) {
            continue;
        }
        filled.push(located.device);
        let space = located
            .dir
            .space()
            .map_err(|e| AgentError::FailedPrecondition(format!("{what}: {path}: {e}")))?;
        let bytes = fill_bytes(
            plan.amount,
            space,
            located.node_filesystem,
            plan.node_min_free_percent,
        )
        .map_err(|why| AgentError::FailedPrecondition(format!("{what}: {path}: {why}")))?;
        files.push(FillFile {
            target: what.clone(),
            pid: target.init.pid,
            start_time: target.init.start_time,
            dir: plan.path.clone(),
            name: name.clone(),
            bytes,
            node_dir: located.node_dir,
            node: node.node,
            node_filesystem: located.node_filesystem,
        });
    }
    acts_on.sort_by_key(|p| p.pid);
    acts_on.dedup_by_key(|p| p.pid);
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let fault = DiskFillFault {
        files,
        created: 0,
        floor_percent: plan.node_min_free_percent,
        status: api::DiskFillStatus::default(),
    };
    Ok(Prepared {
        plan_summary: format!(
            "would allocate {total} bytes in {} file(s) named {name} under {path}",
            fault.files.len()
        ),
        acts_on,
        fault: Box::new(fault),
    })
}

#[derive(Debug)]
pub struct DiskFillFault {
    files: Vec<FillFile>,
    /// How many of `files` this apply has created (a failed apply removes these).
    created: usize,
    floor_percent: u32,
    status: api::DiskFillStatus,
}

impl DiskFillFault {
    fn create_all(&mut self, procfs: &Procfs) -> Result<(), AgentError> {
        for file in &self.files {
            let failed = |e: String| {
                AgentError::FailedPrecondition(format!(
                    "filling {} of {}: {e}",
                    file.path().display(),
                    file.target
                ))
            };
            let alive = procfs
                .process(file.pid)
                .is_ok_and(|p| p.start_time == file.start_time);
            if !alive {
                return Err(failed(
                    "its init exited since the fault was prepared".into(),
                ));
            }
            let dir = open_dir_in(&root_of(procfs, file.pid), &file.dir)
                .map_err(|e| failed(e.to_string()))?;
            // Checked again just before: others may have written since the decision.
            let space = dir.space().map_err(|e| failed(e.to_string()))?;
            fill_bytes(
                FillAmount::Bytes(file.bytes),
                space,
                file.node_filesystem,
                self.floor_percent,
            )
            .map_err(failed)?;
            dir.create_allocated(&file.name, file.bytes)
                .map_err(|e| failed(e.to_string()))?;
            self.created += 1;
        }
        self.measure(procfs);
        Ok(())
    }

    fn measure(&mut self, procfs: &Procfs) {
        self.status.files = self
            .files
            .iter()
            .map(|file| {
                let dir = file.open(procfs).ok();
                let bytes = dir
                    .as_ref()
                    .and_then(|d| d.allocated(&file.name).ok())
                    .unwrap_or(0);
                let space = dir.as_ref().and_then(|d| d.space().ok());
                api::DiskFillFile {
                    target: file.target.clone(),
                    path: file.path().display().to_string(),
                    bytes,
                    filesystem_bytes: space.map_or(0, |s| s.size()),
                    available_bytes: space.map_or(0, |s| s.available),
                    node_filesystem: file.node_filesystem,
                }
            })
            .collect();
    }
}

impl Fault for DiskFillFault {
    fn kind(&self) -> api::FaultKind {
        api::FaultKind::DiskFill
    }

    fn apply<'a>(
        &'a mut self,
        procfs: &'a Procfs,
        _acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            let result = self.create_all(procfs);
            if result.is_err() && remove_each(procfs, &self.files[..self.created]).is_ok() {
                self.created = 0;
            }
            result
        })
    }

    /// A failed apply whose removal failed too leaves files: kept, and retried.
    fn holds_changes(&self) -> bool {
        self.created > 0
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(STATUS_INTERVAL)
    }

    fn tick(
        &mut self,
        procfs: &Procfs,
        _chosen: Option<Result<Vec<ProcessInfo>, String>>,
    ) -> TickOutcome {
        self.measure(procfs);
        TickOutcome::Continue
    }

    fn revert<'a>(&'a mut self, procfs: &'a Procfs) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            remove_each(procfs, &self.files)?;
            self.created = 0;
            self.measure(procfs);
            Ok(())
        })
    }

    fn undo(&self) -> UndoRecord {
        UndoRecord::of(&DiskFillUndo::RemoveFiles {
            files: self.files.clone(),
        })
    }

    fn status(&self) -> api::fault::Status {
        api::fault::Status::DiskFill(self.status.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// `path` under `root`, for tests that stand in a directory for a process's root.
    fn under(root: &Path, path: &str) -> PathBuf {
        root.join(path.trim_start_matches('/'))
    }

    const GIB: u64 = 1 << 30;

    fn space(used: u64, available: u64) -> Space {
        Space { used, available }
    }

    #[test]
    fn a_fill_is_what_is_asked_within_what_is_available_and_the_nodes_floor() {
        let half = space(50 * GIB, 50 * GIB);
        assert_eq!(fill_bytes(FillAmount::Bytes(GIB), half, true, 15), Ok(GIB));
        assert_eq!(
            fill_bytes(FillAmount::UsedPercent(80), half, false, 15),
            Ok(30 * GIB)
        );
        // 90 % of a node filesystem leaves 10 %, below a 15 % floor; not on a volume.
        let floor = fill_bytes(FillAmount::UsedPercent(90), half, true, 15).unwrap_err();
        assert!(floor.contains("--disk-fill-min-free-percent"), "{floor}");
        assert_eq!(
            fill_bytes(FillAmount::UsedPercent(90), half, false, 15),
            Ok(40 * GIB)
        );
        let over = fill_bytes(FillAmount::Bytes(51 * GIB), half, false, 15).unwrap_err();
        assert!(over.contains("all there is"), "{over}");
        let above = fill_bytes(FillAmount::UsedPercent(40), half, false, 15).unwrap_err();
        assert!(above.contains("already 50.0 % used"), "{above}");
    }

    #[test]
    fn a_filesystem_in_memory_is_refused() {
        assert!(memory_backed("tmpfs").unwrap().contains("memory fault"));
        assert_eq!(memory_backed("ext4"), None);
    }

    #[test]
    fn a_replay_removes_the_file_through_the_node_once_the_target_is_gone() {
        // A directory stands in for PID 1's root; the target's pid is above the kernel's
        // maximum, so only the node's path is left.
        let tmp = tempfile::tempdir().unwrap();
        let node_root = under(tmp.path(), "1/root");
        let volume = under(&node_root, "/var/lib/kubelet/pods/p/volumes/data");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join(".chaos-disk-fill-abc"), b"x").unwrap();
        std::fs::write(volume.join("keep"), b"x").unwrap();
        let file = FillFile {
            target: "container:c".into(),
            pid: 4_194_304,
            start_time: 1,
            dir: "/data".into(),
            name: ".chaos-disk-fill-abc".into(),
            bytes: 1 << 20,
            node_dir: Some("/var/lib/kubelet/pods/p/volumes/data".into()),
            // Gone too: PID 1's root stands in.
            node: ProcessIdentity {
                pid: 4_194_305,
                start_time: 1,
            },
            node_filesystem: true,
        };
        let record = UndoRecord::of(&DiskFillUndo::RemoveFiles {
            files: vec![file.clone()],
        });
        let procfs = Procfs::at(tmp.path());
        assert_eq!(replay(&procfs, &record), Ok(()));
        assert!(!volume.join(".chaos-disk-fill-abc").exists());
        assert!(volume.join("keep").exists());
        // Gone already, or its directory gone: done.
        assert_eq!(replay(&procfs, &record), Ok(()));
        std::fs::remove_dir_all(&volume).unwrap();
        assert_eq!(replay(&procfs, &record), Ok(()));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["action"], "remove_files");
    }
}
