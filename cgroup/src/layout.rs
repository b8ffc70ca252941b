use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CgroupError;

/// Which cgroup hierarchies a node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// Only v1 hierarchies, one directory per (co-mounted) controller set.
    V1,
    /// One cgroup2 hierarchy mounted at the root with all controllers (EKS AL2023, the test VM).
    V2,
    /// v1 controllers plus a controller-less cgroup2 at `<root>/unified` (this build host).
    Hybrid,
}

/// What [`crate::CgroupFs::layout`] detected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLayout {
    pub version: CgroupVersion,
    /// v2: the root's `cgroup.controllers`; v1/hybrid: the mounted v1 controllers (sorted).
    pub controllers: Vec<String>,
}

/// The v1 resource controllers the kernel knows. Named hierarchies (`name=systemd`) and the
/// `unified` cgroup2 mount are not controllers, so a directory counts only if its name (or
/// a part of a co-mounted name like `cpu,cpuacct`) is in this list.
pub const KNOWN_V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// The directory name under the root where a hybrid node mounts its cgroup2.
pub(crate) const HYBRID_UNIFIED_DIR: &str = "unified";

/// A cgroup2 root is recognised by `cgroup.controllers`, which v1 hierarchies never have.
pub(crate) fn is_cgroup2_dir(dir: &Path) -> bool {
    dir.join("cgroup.controllers").is_file()
}

/// A v1 hierarchy root has `cgroup.procs` (and no `cgroup.controllers`).
pub(crate) fn is_v1_hierarchy_dir(dir: &Path) -> bool {
    dir.join("cgroup.procs").is_file() && !is_cgroup2_dir(dir)
}

/// The known controllers named by a v1 mount directory (`cpu,cpuacct` -> cpu and cpuacct).
pub(crate) fn controllers_of_dir_name(name: &str) -> impl Iterator<Item = &str> {
    name.split(',')
        .filter(|part| KNOWN_V1_CONTROLLERS.contains(part))
}

pub(crate) fn detect(root: &Path) -> Result<CgroupLayout, CgroupError> {
    if is_cgroup2_dir(root) {
        let file = root.join("cgroup.controllers");
        let text = std::fs::read_to_string(&file).map_err(|e| CgroupError::io(&file, e))?;
        let controllers = text.split_whitespace().map(str::to_string).collect();
        return Ok(CgroupLayout {
            version: CgroupVersion::V2,
            controllers,
        });
    }
    let entries = std::fs::read_dir(root).map_err(|e| CgroupError::io(root, e))?;
    let mut controllers = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| CgroupError::io(root, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `is_v1_hierarchy_dir` follows symlinks, so `cpu -> cpu,cpuacct` counts once per name.
        if is_v1_hierarchy_dir(&entry.path()) {
            controllers.extend(controllers_of_dir_name(name).map(str::to_string));
        }
    }
    if controllers.is_empty() {
        return Err(CgroupError::Unsupported {
            root: root.to_path_buf(),
            detail: "neither a cgroup2 root (cgroup.controllers) nor v1 controller directories"
                .to_string(),
        });
    }
    let version = if is_cgroup2_dir(&root.join(HYBRID_UNIFIED_DIR)) {
        CgroupVersion::Hybrid
    } else {
        CgroupVersion::V1
    };
    Ok(CgroupLayout {
        version,
        controllers: controllers.into_iter().collect(),
    })
}
