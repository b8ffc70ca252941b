//! The disk fill kind's plan and its validation: how much (a size, or a level of use of
//! the filesystem), where (a directory inside the container, "/" by default), and the
//! agent's free floor for filesystems the node uses. A fill acts in the target's mount
//! namespace, so it takes the forms that name processes (`container:`, `pod:`, `pid:`);
//! a `cgroup:` names no filesystem and is refused.

use std::path::{Component, Path, PathBuf};

use chaos_proto::api;

use crate::error::AgentError;
use crate::target::TargetSpec;

use super::Limits;

/// `--disk-fill-min-free-percent`'s default: above the kubelet's default hard eviction
/// thresholds (nodefs.available 10 %, imagefs.available 15 %), so a fill of a node's
/// filesystem never makes the kubelet evict the node's pods.
pub const DEFAULT_DISK_FILL_MIN_FREE_PERCENT: u32 = 15;

/// The smallest fill: less is not a fault a workload notices.
pub const MIN_FILL_BYTES: u64 = 1 << 20;

/// How much to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillAmount {
    Bytes(u64),
    /// Until the filesystem is this much used (percent, as df counts it).
    UsedPercent(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFillPlan {
    pub amount: FillAmount,
    /// A directory as the target sees it: absolute, normalized.
    pub path: PathBuf,
    /// What must stay available of a filesystem the node has mounted (percent of it).
    pub node_min_free_percent: u32,
    /// The process whose mount namespace is the node's.
    pub node_pid: u32,
}

pub(super) fn validate_disk_fill(
    fault: &api::DiskFillFault,
    target: &TargetSpec,
    limits: &Limits,
) -> Result<DiskFillPlan, AgentError> {
    require_filesystem(target)?;
    let amount = match (fault.size_bytes, fault.percent) {
        (0, 0) => {
            return Err(AgentError::invalid(
                "disk_fill",
                "sets no amount: give size_bytes or percent",
            ));
        }
        (size, 0) if size < MIN_FILL_BYTES => {
            return Err(AgentError::invalid(
                "disk_fill.size_bytes",
                format!("is below the smallest fill, {MIN_FILL_BYTES} bytes (1 MiB)"),
            ));
        }
        (size, 0) => FillAmount::Bytes(size),
        (0, percent) if (1..=99).contains(&percent) => FillAmount::UsedPercent(percent),
        (0, _) => {
            return Err(AgentError::invalid(
                "disk_fill.percent",
                "must be 1 to 99 (the filesystem's use after the fill, in percent)",
            ));
        }
        _ => {
            return Err(AgentError::invalid(
                "disk_fill",
                "gives both size_bytes and percent: give one",
            ));
        }
    };
    Ok(DiskFillPlan {
        amount,
        path: validate_path(&fault.path, "disk_fill.path")?,
        node_min_free_percent: limits.disk_fill_min_free_percent,
        node_pid: limits.node_pid,
    })
}

/// A target whose mount namespace holds a path: a `cgroup:` names none (shared with IO
/// stress).
pub(super) fn require_filesystem(target: &TargetSpec) -> Result<(), AgentError> {
    if let TargetSpec::Cgroup(path) = target {
        return Err(AgentError::invalid(
            "target",
            format!(
                "cgroup:{path} names no filesystem: target a container (container:, pod:) or a process (pid:), whose mount namespace holds the path"
            ),
        ));
    }
    Ok(())
}

/// An absolute directory without `.`/`..` steps (it is joined under `/proc/PID/root`,
/// where `..` at the top would leave the container's root); "" is "/". `field` names it
/// in a refusal.
pub(super) fn validate_path(text: &str, field: &'static str) -> Result<PathBuf, AgentError> {
    if text.is_empty() {
        return Ok(PathBuf::from("/"));
    }
    let path = Path::new(text);
    let plain = text.len() <= 4096
        && !text.contains('\0')
        && path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(AgentError::invalid(
            field,
            format!("{text:?} is not an absolute directory path without . or .. steps"),
        ));
    }
    Ok(path.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(size_bytes: u64, percent: u32, path: &str) -> api::DiskFillFault {
        api::DiskFillFault {
            size_bytes,
            percent,
            path: path.into(),
        }
    }

    fn container() -> TargetSpec {
        TargetSpec::parse("container:abc").unwrap()
    }

    #[test]
    fn one_amount_is_required_and_a_cgroup_is_refused() {
        let limits = Limits::default();
        let plan = validate_disk_fill(&fill(1 << 30, 0, ""), &container(), &limits).unwrap();
        assert_eq!(plan.amount, FillAmount::Bytes(1 << 30));
        assert_eq!(plan.path, PathBuf::from("/"));
        assert_eq!(
            plan.node_min_free_percent,
            DEFAULT_DISK_FILL_MIN_FREE_PERCENT
        );
        let plan =
            validate_disk_fill(&fill(0, 90, "/data/"), &TargetSpec::Pid(7), &limits).unwrap();
        assert_eq!(plan.amount, FillAmount::UsedPercent(90));
        assert_eq!(plan.path, PathBuf::from("/data"));
        for (bad, field) in [
            (fill(0, 0, ""), "disk_fill"),
            (fill(1 << 30, 50, ""), "disk_fill"),
            (fill(4096, 0, ""), "disk_fill.size_bytes"),
            (fill(0, 100, ""), "disk_fill.percent"),
        ] {
            match validate_disk_fill(&bad, &container(), &limits) {
                Err(AgentError::InvalidArgument { field: got, .. }) => {
                    assert_eq!(got, field, "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let cgroup = TargetSpec::parse("cgroup:/k8s.io/abc").unwrap();
        let err = validate_disk_fill(&fill(1 << 30, 0, ""), &cgroup, &limits).unwrap_err();
        assert!(err.to_string().contains("names no filesystem"), "{err}");
    }

    #[test]
    fn a_path_is_absolute_and_never_climbs() {
        for bad in ["data", "/data/../etc", "..", "/a\0b"] {
            assert!(validate_path(bad, "disk_fill.path").is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_path("/var//lib/", "disk_fill.path").unwrap(),
            PathBuf::from("/var/lib")
        );
        // `.` steps are dropped, as the kernel's walk would take them.
        assert_eq!(
            validate_path("/./data", "disk_fill.path").unwrap(),
            PathBuf::from("/data")
        );
    }
}
