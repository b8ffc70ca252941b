use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::CgroupError;
use crate::layout::{self, CgroupLayout, HYBRID_UNIFIED_DIR};
use crate::membership::ProcessCgroup;

/// A cgroup filesystem rooted at `root` (normally `/sys/fs/cgroup`; tests use a fake tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFs {
    root: PathBuf,
}

/// Controllers whose directory lists a cgroup's processes on v1, in order of preference:
/// `pids` and `memory` are almost always mounted and never co-mounted with anything else.
const V1_PROCS_CONTROLLERS: &[&str] = &["pids", "memory", "cpu"];

impl CgroupFs {
    /// The host's cgroup filesystem at `/sys/fs/cgroup`.
    pub fn host() -> CgroupFs {
        CgroupFs::at("/sys/fs/cgroup")
    }

    pub fn at(root: impl Into<PathBuf>) -> CgroupFs {
        CgroupFs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Detects v1, v2 or hybrid and the available controllers.
    pub fn layout(&self) -> Result<CgroupLayout, CgroupError> {
        layout::detect(&self.root)
    }

    /// Every pid in the cgroup (v2: the unified path; v1: pids, else memory, else cpu controller).
    pub fn procs(&self, cg: &ProcessCgroup) -> Result<Vec<u32>, CgroupError> {
        let file = self.primary_dir(cg)?.join("cgroup.procs");
        let text = std::fs::read_to_string(&file).map_err(|e| CgroupError::io(&file, e))?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                line.trim().parse::<u32>().map_err(|_| {
                    CgroupError::parse(file.display().to_string(), format!("bad pid {line:?}"))
                })
            })
            .collect()
    }

    /// True when the cgroup's directory (the one `procs` reads) exists.
    pub fn exists(&self, cg: &ProcessCgroup) -> bool {
        self.primary_dir(cg).is_ok_and(|dir| dir.is_dir())
    }

    /// The directory holding `controller`'s files for this cgroup: on v2 the unified directory
    /// (all controllers share it), on v1 the directory under that controller's hierarchy.
    pub fn controller_dir(
        &self,
        cg: &ProcessCgroup,
        controller: &str,
    ) -> Result<PathBuf, CgroupError> {
        self.controller_base_and_dir(cg, controller)
            .map(|(_, dir)| dir)
    }

    /// The hierarchy root and the cgroup's directory under it for `controller`.
    pub(crate) fn controller_base_and_dir(
        &self,
        cg: &ProcessCgroup,
        controller: &str,
    ) -> Result<(PathBuf, PathBuf), CgroupError> {
        if !cg.is_v1() {
            let Some(path) = &cg.unified else {
                return Err(
                    self.unsupported("the cgroup has neither a cgroup2 path nor v1 controllers")
                );
            };
            let base = self.unified_base();
            let dir = join_cgroup_path(&base, path);
            return Ok((base, dir));
        }
        let Some(path) = cg.v1.get(controller) else {
            return Err(self.unsupported(format!(
                "the cgroup {} has no v1 {controller} controller",
                cg.display_path()
            )));
        };
        let Some(hierarchy) = self.v1_hierarchy(controller) else {
            return Err(self.unsupported(format!("the v1 {controller} controller is not mounted")));
        };
        let dir = join_cgroup_path(&hierarchy, path);
        Ok((hierarchy, dir))
    }

    /// Moves `pid` into the cgroup. v2: one write to `cgroup.procs`. v1: a write into every
    /// mounted v1 hierarchy the cgroup names, so the process is bounded exactly like the
    /// workload (co-mounted controllers share a directory and are written once). The unified
    /// path of a hybrid node is left alone: that cgroup2 has no controllers, it bounds nothing.
    ///
    /// On error the process may already be in some hierarchies: the caller kills it.
    pub fn attach(&self, cg: &ProcessCgroup, pid: u32) -> Result<(), CgroupError> {
        if !cg.is_v1() {
            return write_pid(&self.unified_dir(cg)?, pid);
        }
        let mut written = BTreeSet::new();
        for (controller, path) in &cg.v1 {
            let Some(hierarchy) = self.v1_hierarchy(controller) else {
                continue; // not mounted here: nothing can be written, nothing bounds by it
            };
            let dir = join_cgroup_path(&hierarchy, path);
            // `cpu` and `cpuacct` may be symlinks to one `cpu,cpuacct` directory.
            let key = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
            if written.insert(key) {
                write_pid(&dir, pid)?;
            }
        }
        if written.is_empty() {
            return Err(self.unsupported(format!(
                "none of the v1 controllers of {} is mounted",
                cg.display_path()
            )));
        }
        Ok(())
    }

    /// The cgroup2 directory of the cgroup: `<root>/PATH` on v2, `<root>/unified/PATH` on hybrid.
    fn unified_dir(&self, cg: &ProcessCgroup) -> Result<PathBuf, CgroupError> {
        let Some(path) = &cg.unified else {
            return Err(
                self.unsupported("the cgroup has neither a cgroup2 path nor v1 controllers")
            );
        };
        Ok(join_cgroup_path(&self.unified_base(), path))
    }

    /// The cgroup2 mount: the root itself on v2, `<root>/unified` on a hybrid node.
    fn unified_base(&self) -> PathBuf {
        if layout::is_cgroup2_dir(&self.root) {
            self.root.clone()
        } else {
            self.root.join(HYBRID_UNIFIED_DIR)
        }
    }

    /// The directory `procs` and `exists` look at.
    fn primary_dir(&self, cg: &ProcessCgroup) -> Result<PathBuf, CgroupError> {
        if !cg.is_v1() {
            return self.unified_dir(cg);
        }
        V1_PROCS_CONTROLLERS
            .iter()
            .find_map(|controller| self.controller_dir(cg, controller).ok())
            .ok_or_else(|| {
                self.unsupported(format!(
                    "the cgroup {} has none of the v1 controllers pids, memory, cpu mounted",
                    cg.display_path()
                ))
            })
    }

    /// The root directory of the v1 hierarchy holding `controller`: `<root>/<controller>` (a real
    /// directory or a symlink to a co-mount), else a co-mounted directory such as `cpu,cpuacct`.
    pub(crate) fn v1_hierarchy(&self, controller: &str) -> Option<PathBuf> {
        let direct = self.root.join(controller);
        if layout::is_v1_hierarchy_dir(&direct) {
            return Some(direct);
        }
        let entries = std::fs::read_dir(&self.root).ok()?;
        entries.flatten().map(|entry| entry.path()).find(|dir| {
            let named = dir
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| layout::controllers_of_dir_name(name).any(|c| c == controller));
            named && layout::is_v1_hierarchy_dir(dir)
        })
    }

    /// What the node lacks for a controller that faults write directly, or None: on v1
    /// (and hybrid) its hierarchy mounted and what `v1_lacks` finds in that hierarchy's
    /// root, on v2 what `v2_lacks` finds.
    pub(crate) fn controller_unsupported(
        &self,
        v1_controller: &str,
        v1_lacks: impl FnOnce(&Path) -> Option<String>,
        v2_lacks: impl FnOnce() -> Option<String>,
    ) -> Option<String> {
        let layout = match self.layout() {
            Ok(layout) => layout,
            Err(e) => return Some(e.to_string()),
        };
        if layout.version == crate::CgroupVersion::V2 {
            return v2_lacks();
        }
        match self.v1_hierarchy(v1_controller) {
            Some(hierarchy) => v1_lacks(&hierarchy),
            None => Some(format!("the v1 {v1_controller} controller is not mounted")),
        }
    }

    pub(crate) fn unsupported(&self, detail: impl Into<String>) -> CgroupError {
        CgroupError::Unsupported {
            root: self.root.clone(),
            detail: detail.into(),
        }
    }
}

/// `base` + a cgroup path like `/default/abc` (the leading `/` means the hierarchy root).
pub(crate) fn join_cgroup_path(base: &Path, cgroup_path: &str) -> PathBuf {
    let relative = cgroup_path.trim_start_matches('/');
    if relative.is_empty() {
        base.to_path_buf()
    } else {
        base.join(relative)
    }
}

/// Writes one pid to `<dir>/cgroup.procs` in a single write(2), as the kernel requires.
fn write_pid(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    if !dir.is_dir() {
        return Err(CgroupError::NotFound {
            path: dir.to_path_buf(),
        });
    }
    let file = dir.join("cgroup.procs");
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .map_err(|e| CgroupError::io(&file, e))?;
    handle
        .write_all(pid.to_string().as_bytes())
        .map_err(|e| CgroupError::io(&file, e))
}
