//! The IO stress kind's plan and its validation: how many workers, how fast (a rate shared
//! by a target's workers, or as fast as the device allows), how big each worker's file,
//! and where (a directory inside the container). It works in the target's mount namespace
//! and cgroup, so it takes the forms that name processes (`container:`, `pod:`, `pid:`);
//! a `cgroup:` names no filesystem and is refused, as for a disk fill.

use std::path::PathBuf;

use chaos_proto::api;

use crate::error::AgentError;
use crate::target::TargetSpec;

use super::Limits;
use super::disk_fill::{require_filesystem, validate_path};

/// The most workers per target: each is a process writing at what the device allows, and
/// a few already saturate one; more only queue.
pub const MAX_IO_STRESS_WORKERS: u32 = 8;
/// The slowest rate: below it a worker's block takes seconds, which is no load.
pub const MIN_IO_STRESS_BYTES_PER_SECOND: u64 = 64 << 10;
pub const DEFAULT_IO_STRESS_FILE_BYTES: u64 = 64 << 20;
pub const MIN_IO_STRESS_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoStressPlan {
    pub workers: u32,
    /// Shared by a target's workers; None: as fast as the device allows.
    pub bytes_per_second: Option<u64>,
    pub file_bytes: u64,
    /// None: "/tmp" where the target has one, else "/".
    pub path: Option<PathBuf>,
    /// As a disk fill's: what must stay available of a filesystem the node has mounted.
    pub node_min_free_percent: u32,
    pub node_pid: u32,
}

impl IoStressPlan {
    /// One worker's share of the rate (0: unpaced). Never 0 for a paced worker.
    pub fn worker_bytes_per_second(&self) -> u64 {
        self.bytes_per_second
            .map_or(0, |bps| (bps / u64::from(self.workers.max(1))).max(1))
    }
}

pub(super) fn validate_io_stress(
    fault: &api::IoStressFault,
    target: &TargetSpec,
    limits: &Limits,
) -> Result<IoStressPlan, AgentError> {
    require_filesystem(target)?;
    let workers = match fault.workers {
        0 => 1,
        n if n > MAX_IO_STRESS_WORKERS => {
            return Err(AgentError::invalid(
                "io_stress.workers",
                format!("{n} is more than {MAX_IO_STRESS_WORKERS} workers per target"),
            ));
        }
        n => n,
    };
    let bytes_per_second = match fault.bytes_per_second {
        0 => None,
        bps if bps < MIN_IO_STRESS_BYTES_PER_SECOND => {
            return Err(AgentError::invalid(
                "io_stress.bytes_per_second",
                format!(
                    "{bps} is below {MIN_IO_STRESS_BYTES_PER_SECOND} (64 KiB/s); 0 is as fast as the device allows"
                ),
            ));
        }
        bps => Some(bps),
    };
    let file_bytes = match fault.file_bytes {
        0 => DEFAULT_IO_STRESS_FILE_BYTES,
        bytes if bytes < MIN_IO_STRESS_FILE_BYTES => {
            return Err(AgentError::invalid(
                "io_stress.file_bytes",
                format!("{bytes} is below {MIN_IO_STRESS_FILE_BYTES} bytes (1 MiB)"),
            ));
        }
        bytes => bytes,
    };
    let path = if fault.path.is_empty() {
        None
    } else {
        Some(validate_path(&fault.path, "io_stress.path")?)
    };
    Ok(IoStressPlan {
        workers,
        bytes_per_second,
        file_bytes,
        path,
        node_min_free_percent: limits.disk_fill_min_free_percent,
        node_pid: limits.node_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stress(
        workers: u32,
        bytes_per_second: u64,
        file_bytes: u64,
        path: &str,
    ) -> api::IoStressFault {
        api::IoStressFault {
            workers,
            bytes_per_second,
            file_bytes,
            path: path.into(),
        }
    }

    fn container() -> TargetSpec {
        TargetSpec::parse("container:abc").unwrap()
    }

    #[test]
    fn defaults_fill_in_and_bounds_are_refused_by_field() {
        let limits = Limits::default();
        let plan = validate_io_stress(&stress(0, 0, 0, ""), &container(), &limits).unwrap();
        assert_eq!(plan.workers, 1);
        assert_eq!(plan.bytes_per_second, None);
        assert_eq!(plan.worker_bytes_per_second(), 0);
        assert_eq!(plan.file_bytes, 64 << 20);
        assert_eq!(plan.path, None);
        let plan = validate_io_stress(
            &stress(4, 1 << 20, 8 << 20, "/data/"),
            &TargetSpec::Pid(7),
            &limits,
        )
        .unwrap();
        assert_eq!(plan.bytes_per_second, Some(1 << 20));
        assert_eq!(plan.worker_bytes_per_second(), 256 << 10);
        assert_eq!(plan.path, Some(PathBuf::from("/data")));
        for (bad, field) in [
            (stress(9, 0, 0, ""), "io_stress.workers"),
            (stress(1, 65535, 0, ""), "io_stress.bytes_per_second"),
            (stress(1, 0, (1 << 20) - 1, ""), "io_stress.file_bytes"),
            (stress(1, 0, 0, "/data/../etc"), "io_stress.path"),
            (stress(1, 0, 0, "data"), "io_stress.path"),
        ] {
            match validate_io_stress(&bad, &container(), &limits) {
                Err(AgentError::InvalidArgument { field: got, .. }) => {
                    assert_eq!(got, field, "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let plan = validate_io_stress(&stress(8, 65536, 1 << 20, "/"), &container(), &limits);
        assert_eq!(plan.unwrap().worker_bytes_per_second(), 8192);
        let cgroup = TargetSpec::parse("cgroup:/k8s.io/abc").unwrap();
        let err = validate_io_stress(&stress(1, 0, 0, ""), &cgroup, &limits).unwrap_err();
        assert!(err.to_string().contains("names no filesystem"), "{err}");
    }
}
