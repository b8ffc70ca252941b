//! The IO throttle fault: limits the block IO of each target container, per disk, through
//! its cgroup (v2 `io.max`, v1 `blkio.throttle.*_device`), and puts the cgroup's own
//! limits back when the fault ends.
//!
//! A limit binds a whole cgroup, so the decisions are about that cgroup, as for a pause
//! (`leaf_cgroup`): the root and a cgroup with children are refused, and every process
//! of the cgroup passes the protection policy. The limits a cgroup had before are read
//! per device at inject and journaled; the fault only tightens them (a limit already
//! lower stays) and restores exactly what was there, on the same cgroup only (known by
//! its inode), so a replay never touches a cgroup made again at the same path. Each
//! write is read back; a device whose limits do not read back as written undoes every
//! write before it: limited completely or not at all.
//!
//! The kernel throttles bios as they are submitted to a whole disk. On v1 that misses
//! buffered writes, which the kernel's writeback submits later on the root cgroup's
//! behalf; direct IO, reads and v2's writeback (attributed to the cgroup) are throttled.

use std::path::PathBuf;
use std::time::Duration;

use chaos_cgroup::{CgroupError, DeviceNumber, IoLimits, IoThrottle};
use chaos_proto::api;
use futures::future::BoxFuture;

use crate::blockdev::{BlockDevice, BlockDeviceError, Sysfs};
use crate::error::AgentError;
use crate::faults::leaf_cgroup;
use crate::faults::{Fault, KindInfo, PrepareContext, Prepared, TickOutcome};
use crate::journal::UndoRecord;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::validate::{IoDevices, IoPlan};

/// Needs no capability: the agent (uid 0) owns the cgroup files it writes.
pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::Io,
    capabilities: &[],
    replay,
    node_lacks: |cgroups| cgroups.io_unsupported(),
};

/// How often an IO fault reads its limits back for the status.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// One device's limits in one cgroup: what it had, and what the fault sets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceLimits {
    pub device: DeviceNumber,
    pub name: String,
    /// What the cgroup had on the device before the fault (all None: no limit).
    pub before: IoLimits,
    /// What the fault sets: `before` tightened by the request.
    pub during: IoLimits,
}

/// One cgroup an IO fault limits, as the journal lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThrottledCgroup {
    pub dir: PathBuf,
    pub v1: bool,
    /// The directory's inode at inject: which cgroup it is.
    pub inode: u64,
    pub devices: Vec<DeviceLimits>,
}

impl ThrottledCgroup {
    fn throttle(&self) -> IoThrottle {
        IoThrottle::at(&self.dir, self.v1)
    }

    fn is_same(&self) -> Result<bool, CgroupError> {
        self.throttle().inode().map(|inode| inode == self.inode)
    }

    /// Puts back the limits of the first `count` devices, if the cgroup is still the one
    /// limited. A cgroup that is gone, or is another one at the same path, is done, and so
    /// is a device the node no longer has (its limits went with it).
    fn restore(&self, count: usize) -> Result<(), String> {
        let done = |e: &CgroupError| e.is_not_found() || e.is_no_device();
        match self.is_same() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) if done(&e) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let throttle = self.throttle();
        let errors: Vec<String> = self
            .devices
            .iter()
            .take(count)
            .filter_map(|device| match throttle.set(device.device, &device.before) {
                Ok(()) => None,
                Err(e) if done(&e) => None,
                Err(e) => Some(format!(
                    "restoring the IO limits of {} on {}: {e}",
                    self.dir.display(),
                    device.name
                )),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The journal's form for an IO fault. Tagged as every undo form is (see
/// `journal::UndoRecord`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum IoUndo {
    RestoreLimits { cgroups: Vec<ThrottledCgroup> },
}

/// Restores what a journal record of an IO fault lists, after a crash.
pub fn replay(_procfs: &Procfs, record: &UndoRecord) -> Result<(), String> {
    let IoUndo::RestoreLimits { cgroups } = record.read()?;
    restore_each(&cgroups)
}

/// Restores every device of every cgroup (all are tried); the errors together.
fn restore_each(cgroups: &[ThrottledCgroup]) -> Result<(), String> {
    let errors: Vec<String> = cgroups
        .iter()
        .filter_map(|c| c.restore(c.devices.len()).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The whole disks the plan names, from sysfs.
pub fn disks_of(devices: &IoDevices, sysfs: &Sysfs) -> Result<Vec<BlockDevice>, AgentError> {
    let found = match devices {
        IoDevices::EveryDisk => sysfs.whole_disks(),
        IoDevices::Number(number) => sysfs.disk(&number.to_string()).map(|disk| vec![disk]),
        IoDevices::Name(name) => sysfs.disk(name).map(|disk| vec![disk]),
    };
    let disks = found.map_err(|e| match e {
        BlockDeviceError::NotFound(_) => AgentError::NotFound(format!("io.device: {e}")),
        BlockDeviceError::Unreadable { .. } => AgentError::FailedPrecondition(e.to_string()),
    })?;
    if disks.is_empty() {
        return Err(AgentError::FailedPrecondition(
            "this node has no block device with a size: there is no IO to limit".into(),
        ));
    }
    Ok(disks)
}

/// Decides the limits for the resolved targets: per distinct cgroup, per disk, what it
/// has and what the fault sets; touches nothing.
pub fn prepare(
    plan: &IoPlan,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let disks = disks_of(&plan.devices, &Sysfs::host())?;
    let cgroups = &context.resolver.cgroups;
    let procfs = &context.resolver.procfs;
    let mut limited: Vec<ThrottledCgroup> = Vec::new();
    let mut acts_on: Vec<ProcessInfo> = Vec::new();
    for target in targets {
        let what = target.describe();
        let path = target.cgroup.display_path();
        let unreadable = |e: CgroupError| {
            if e.is_not_found() {
                AgentError::NotFound(format!("{what}: its cgroup is gone: {e}"))
            } else {
                AgentError::FailedPrecondition(format!(
                    "{what}: cannot limit the IO of cgroup {path}: {e}"
                ))
            }
        };
        let throttle = cgroups.io_throttle(&target.cgroup).map_err(unreadable)?;
        if limited.iter().any(|c| c.dir == throttle.dir) {
            continue;
        }
        let has_children = throttle.has_children().map_err(unreadable)?;
        if let Some(refused) =
            leaf_cgroup::refusal(&what, &path, has_children, "throttle the IO of")
        {
            return Err(refused);
        }
        // Every process of the cgroup is slowed, not only those the target's resolution
        // saw: the registry checks each against the policy.
        acts_on.extend(leaf_cgroup::bound_processes(
            procfs,
            throttle.procs().map_err(unreadable)?,
        ));
        let now = throttle.limits().map_err(unreadable)?;
        let devices = disks
            .iter()
            .map(|disk| {
                let before = now.get(&disk.number).copied().unwrap_or_default();
                DeviceLimits {
                    device: disk.number,
                    name: disk.name.clone(),
                    before,
                    during: before.tightened_by(&plan.limits),
                }
            })
            .collect();
        limited.push(ThrottledCgroup {
            inode: throttle.inode().map_err(unreadable)?,
            dir: throttle.dir,
            v1: throttle.v1,
            devices,
        });
    }
    acts_on.sort_by_key(|p| p.pid);
    acts_on.dedup_by_key(|p| p.pid);
    let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
    let fault = IoFault {
        status: api::IoStatus {
            cgroups: limited.len() as u32,
            devices: Vec::new(),
        },
        cgroups: limited,
        applied: Vec::new(),
    };
    Ok(Prepared {
        plan_summary: format!(
            "would limit the IO of {} cgroup(s) holding {} process(es) on {}",
            fault.cgroups.len(),
            acts_on.len(),
            names.join(", ")
        ),
        acts_on,
        fault: Box::new(fault),
    })
}

#[derive(Debug)]
pub struct IoFault {
    cgroups: Vec<ThrottledCgroup>,
    /// Per cgroup (by index), how many of its devices this apply has written so far: a
    /// failed apply restores exactly these.
    applied: Vec<usize>,
    status: api::IoStatus,
}

impl IoFault {
    /// Writes and reads back each device's limits, cgroup by cgroup.
    fn limit_all(&mut self) -> Result<(), AgentError> {
        self.applied = vec![0; self.cgroups.len()];
        for (index, cgroup) in self.cgroups.iter_mut().enumerate() {
            let throttle = cgroup.throttle();
            let failed = |device: &DeviceLimits, e: String| {
                AgentError::FailedPrecondition(format!(
                    "limiting the IO of {} on {} ({}): {e}",
                    cgroup.dir.display(),
                    device.name,
                    device.device
                ))
            };
            for slot in 0..cgroup.devices.len() {
                // Read again just before the write: what is restored is what was there.
                let device = &cgroup.devices[slot];
                let before = throttle
                    .limits_of(device.device)
                    .map_err(|e| failed(device, e.to_string()))?;
                let during = before.tightened_by(&device.during);
                self.applied[index] = slot + 1;
                throttle
                    .set(device.device, &during)
                    .map_err(|e| failed(device, e.to_string()))?;
                let read_back = throttle
                    .limits_of(device.device)
                    .map_err(|e| failed(device, e.to_string()))?;
                if read_back != during {
                    return Err(failed(
                        device,
                        format!("wrote {during:?} and read back {read_back:?}"),
                    ));
                }
                let device = &mut cgroup.devices[slot];
                device.before = before;
                device.during = during;
            }
        }
        self.measure();
        Ok(())
    }

    /// Restores what this apply wrote; true when all of it is back.
    fn roll_back(&mut self) -> bool {
        let restored = self
            .cgroups
            .iter()
            .zip(&self.applied)
            .all(|(cgroup, &count)| cgroup.restore(count).is_ok());
        if restored {
            self.applied.clear();
        }
        restored
    }

    /// Reads back the limits in force on each device of each cgroup still there.
    fn measure(&mut self) {
        let mut devices = Vec::new();
        for cgroup in &self.cgroups {
            if !matches!(cgroup.is_same(), Ok(true)) {
                continue;
            }
            let Ok(now) = cgroup.throttle().limits() else {
                continue;
            };
            for device in &cgroup.devices {
                let limits = now.get(&device.device).copied().unwrap_or_default();
                devices.push(api::IoDeviceLimit {
                    device: device.device.to_string(),
                    name: device.name.clone(),
                    read_bytes_per_second: limits.read_bps.unwrap_or(0),
                    write_bytes_per_second: limits.write_bps.unwrap_or(0),
                    read_iops: limits.read_iops.unwrap_or(0),
                    write_iops: limits.write_iops.unwrap_or(0),
                });
            }
        }
        self.status.devices = devices;
    }
}

impl Fault for IoFault {
    fn kind(&self) -> api::FaultKind {
        api::FaultKind::Io
    }

    fn apply<'a>(
        &'a mut self,
        _procfs: &'a Procfs,
        _acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            let result = self.limit_all();
            if result.is_err() {
                self.roll_back();
            }
            result
        })
    }

    /// A failed apply whose restore failed too leaves limits in place: kept, and retried.
    fn holds_changes(&self) -> bool {
        self.applied.iter().any(|&count| count > 0)
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
        let gone = self
            .cgroups
            .iter()
            .all(|c| !matches!(c.is_same(), Ok(true)));
        if gone {
            return TickOutcome::Ended(
                "every cgroup the fault limited is gone (its containers were removed): nothing is left to restore".into(),
            );
        }
        TickOutcome::Continue
    }

    fn revert<'a>(&'a mut self, _procfs: &'a Procfs) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            restore_each(&self.cgroups)?;
            self.applied.clear();
            self.measure();
            Ok(())
        })
    }

    fn undo(&self) -> UndoRecord {
        UndoRecord::of(&IoUndo::RestoreLimits {
            cgroups: self.cgroups.clone(),
        })
    }

    fn status(&self) -> api::fault::Status {
        api::fault::Status::Io(self.status.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK: DeviceNumber = DeviceNumber { major: 7, minor: 3 };

    fn fake_v2_cgroup(dir: &std::path::Path, io_max: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("io.max"), io_max).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
    }

    fn limited(dir: &std::path::Path, before: IoLimits) -> ThrottledCgroup {
        ThrottledCgroup {
            dir: dir.to_path_buf(),
            v1: false,
            inode: IoThrottle::at(dir, false).inode().unwrap(),
            devices: vec![DeviceLimits {
                device: DISK,
                name: "loop3".into(),
                before,
                during: before.tightened_by(&IoLimits {
                    write_bps: Some(1 << 20),
                    ..Default::default()
                }),
            }],
        }
    }

    #[test]
    fn a_replay_restores_the_limits_before_and_leaves_a_cgroup_made_again_at_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c1");
        fake_v2_cgroup(&dir, "7:3 rbps=max wbps=1048576 riops=max wiops=max\n");
        let before = IoLimits {
            read_iops: Some(500),
            ..Default::default()
        };
        let cgroup = limited(&dir, before);
        assert_eq!(cgroup.devices[0].during.read_iops, Some(500));
        assert_eq!(cgroup.devices[0].during.write_bps, Some(1 << 20));
        let record = UndoRecord::of(&IoUndo::RestoreLimits {
            cgroups: vec![cgroup.clone()],
        });
        assert_eq!(replay(&Procfs::default(), &record), Ok(()));
        // A fake file keeps the last write: the whole line of limits that was there.
        assert_eq!(
            std::fs::read_to_string(dir.join("io.max")).unwrap(),
            "7:3 rbps=max wbps=max riops=500 wiops=max"
        );

        // Another cgroup at the same path (another inode) keeps its limits.
        std::fs::write(dir.join("io.max"), "7:3 wbps=4096").unwrap();
        let other = UndoRecord::of(&IoUndo::RestoreLimits {
            cgroups: vec![ThrottledCgroup {
                inode: cgroup.inode + 1,
                ..cgroup.clone()
            }],
        });
        assert_eq!(replay(&Procfs::default(), &other), Ok(()));
        assert_eq!(
            std::fs::read_to_string(dir.join("io.max")).unwrap(),
            "7:3 wbps=4096"
        );
        // Gone: done.
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(replay(&Procfs::default(), &record), Ok(()));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["action"], "restore_limits");
        assert_eq!(json["cgroups"][0]["devices"][0]["before"]["read_iops"], 500);
    }

    #[test]
    fn a_missing_device_is_not_found_and_a_node_without_disks_is_a_failed_precondition() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("block")).unwrap();
        let sysfs = Sysfs::at(tmp.path());
        let missing = disks_of(&IoDevices::Name("nvme9n1".into()), &sysfs).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert!(missing.to_string().contains("nvme9n1"), "{missing}");
        let number = disks_of(&IoDevices::Number(DISK), &sysfs).unwrap_err();
        assert_eq!(number.code(), tonic::Code::NotFound);
        let none = disks_of(&IoDevices::EveryDisk, &sysfs).unwrap_err();
        assert_eq!(none.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn a_failed_write_restores_every_cgroup_written_before_it() {
        // Two cgroups: the first takes its limits, the second's io.max cannot be written
        // (a directory in its place), so the apply fails and the first gets its own back.
        let tmp = tempfile::tempdir().unwrap();
        let first = tmp.path().join("c1");
        fake_v2_cgroup(&first, "7:3 rbps=max wbps=max riops=500 wiops=max\n");
        let broken = tmp.path().join("c2");
        fake_v2_cgroup(&broken, "");
        std::fs::remove_file(broken.join("io.max")).unwrap();
        std::fs::create_dir(broken.join("io.max")).unwrap();
        let before = IoLimits {
            read_iops: Some(500),
            ..Default::default()
        };
        let mut fault = IoFault {
            cgroups: vec![
                limited(&first, before),
                limited(&broken, IoLimits::default()),
            ],
            applied: Vec::new(),
            status: api::IoStatus::default(),
        };
        let err = futures::executor::block_on(fault.apply(&Procfs::default(), &[])).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("c2 on loop3 (7:3)"), "{err}");
        assert_eq!(
            std::fs::read_to_string(first.join("io.max")).unwrap(),
            "7:3 rbps=max wbps=max riops=500 wiops=max"
        );
        assert!(!fault.holds_changes());
    }
}
