//! The cgroup freezer: stops every task of a cgroup (and of its descendants) until it is
//! thawed. v1 has a `freezer` hierarchy with `freezer.state` (THAWED, FREEZING, FROZEN);
//! v2 has `cgroup.freeze` (what was asked) and the `frozen` key of `cgroup.events` (what
//! the kernel has done). Freezing is asynchronous on both: the caller writes, then reads
//! the state back until it is frozen.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dir::{self, read};
use crate::error::CgroupError;
use crate::fs::CgroupFs;
use crate::membership::ProcessCgroup;

/// The v1 controller and the v2 file that carry the freezer.
const V1_CONTROLLER: &str = "freezer";
const V1_STATE: &str = "freezer.state";
const V2_FREEZE: &str = "cgroup.freeze";
const V2_EVENTS: &str = "cgroup.events";

/// What the kernel reports of a cgroup's freezer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    Thawed,
    /// Asked to freeze, and some task has not stopped yet (v1 FREEZING; v2 `cgroup.freeze`
    /// 1 while `frozen` is 0). A task in uninterruptible sleep can hold this for long.
    Freezing,
    /// Every task is frozen, by this cgroup's own freezer or an ancestor's.
    Frozen,
}

/// One cgroup's freezer: the directory holding its freezer files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freezer {
    pub dir: PathBuf,
    /// True for a v1 freezer hierarchy, false for cgroup2.
    pub v1: bool,
}

impl CgroupFs {
    /// The freezer of `cg`: its directory under the v1 freezer hierarchy, or its cgroup2
    /// directory. Unsupported when the node has neither (v1 without the freezer mounted,
    /// or a cgroup2 kernel before 5.2, which has no `cgroup.freeze`).
    pub fn freezer(&self, cg: &ProcessCgroup) -> Result<Freezer, CgroupError> {
        // On v2 `controller_dir` is the cgroup's one directory, whatever the controller.
        let freezer = Freezer {
            dir: self.controller_dir(cg, V1_CONTROLLER)?,
            v1: cg.is_v1(),
        };
        if !freezer.dir.is_dir() {
            return Err(CgroupError::NotFound { path: freezer.dir });
        }
        if !freezer.control_file().is_file() {
            return Err(self.unsupported(format!(
                "{} has no {}: this kernel cannot freeze it",
                freezer.dir.display(),
                freezer.control_file_name()
            )));
        }
        Ok(freezer)
    }

    /// Why this node cannot freeze cgroups, or None when it can: v1 needs the freezer
    /// hierarchy mounted; cgroup2 has `cgroup.freeze` in every non-root cgroup (kernel 5.2
    /// and later), checked on the first child cgroup of the root.
    pub fn freezer_unsupported(&self) -> Option<String> {
        self.controller_unsupported(
            V1_CONTROLLER,
            |_| None,
            || {
                let first_child = std::fs::read_dir(self.root())
                    .ok()?
                    .flatten()
                    .map(|entry| entry.path())
                    .find(|path| path.is_dir())?;
                if first_child.join(V2_FREEZE).is_file() {
                    None
                } else {
                    Some(format!(
                        "{} has no {V2_FREEZE}: this kernel's cgroup2 has no freezer (it needs 5.2 or later)",
                        first_child.display()
                    ))
                }
            },
        )
    }
}

impl Freezer {
    /// A freezer at a directory, as a journal record names it.
    pub fn at(dir: impl Into<PathBuf>, v1: bool) -> Freezer {
        Freezer {
            dir: dir.into(),
            v1,
        }
    }

    fn control_file_name(&self) -> &'static str {
        if self.v1 { V1_STATE } else { V2_FREEZE }
    }

    fn control_file(&self) -> PathBuf {
        self.dir.join(self.control_file_name())
    }

    /// Asks the kernel to freeze every task of the cgroup; it happens soon after, see
    /// [`Freezer::state`].
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.write_control(if self.v1 { "FROZEN" } else { "1" })
    }

    /// Thaws the cgroup's own freezer (an ancestor's freeze, if any, still holds).
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.write_control(if self.v1 { "THAWED" } else { "0" })
    }

    fn write_control(&self, value: &str) -> Result<(), CgroupError> {
        dir::write_control(&self.dir, self.control_file_name(), value)
    }

    /// What the kernel shows now.
    pub fn state(&self) -> Result<FreezerState, CgroupError> {
        if self.v1 {
            let text = read(&self.dir.join(V1_STATE))?;
            return parse_v1_state(&text).ok_or_else(|| {
                CgroupError::parse(V1_STATE, format!("unknown state {:?}", text.trim()))
            });
        }
        let events = read(&self.dir.join(V2_EVENTS))?;
        let frozen = parse_v2_frozen(&events).ok_or_else(|| {
            CgroupError::parse(V2_EVENTS, format!("no `frozen` key in {events:?}"))
        })?;
        if frozen {
            return Ok(FreezerState::Frozen);
        }
        let asked = read(&self.dir.join(V2_FREEZE))?;
        Ok(if asked.trim() == "1" {
            FreezerState::Freezing
        } else {
            FreezerState::Thawed
        })
    }

    /// The directory's inode: which cgroup this is (see `dir::inode`).
    pub fn inode(&self) -> Result<u64, CgroupError> {
        dir::inode(&self.dir)
    }

    /// True when the cgroup has child cgroups: freezing it would freeze them too.
    pub fn has_children(&self) -> Result<bool, CgroupError> {
        dir::has_children(&self.dir)
    }

    /// The processes of the cgroup itself (not of its children).
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        dir::procs(&self.dir)
    }
}

/// `freezer.state`: THAWED, FREEZING or FROZEN.
pub(crate) fn parse_v1_state(text: &str) -> Option<FreezerState> {
    match text.trim() {
        "THAWED" => Some(FreezerState::Thawed),
        "FREEZING" => Some(FreezerState::Freezing),
        "FROZEN" => Some(FreezerState::Frozen),
        _ => None,
    }
}

/// The `frozen` key of `cgroup.events` ("populated 1\nfrozen 0\n").
pub(crate) fn parse_v2_frozen(events: &str) -> Option<bool> {
    events.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "frozen").then(|| value.trim() == "1")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_v1_states_and_the_v2_frozen_key_parse() {
        assert_eq!(parse_v1_state("THAWED\n"), Some(FreezerState::Thawed));
        assert_eq!(parse_v1_state("FREEZING\n"), Some(FreezerState::Freezing));
        assert_eq!(parse_v1_state("FROZEN"), Some(FreezerState::Frozen));
        assert_eq!(parse_v1_state("frozen"), None);
        assert_eq!(parse_v2_frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(parse_v2_frozen("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_v2_frozen("populated 1\n"), None);
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_v2_freezer_reads_asked_and_done_apart_and_writes_its_control_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(&root.join("cgroup.controllers"), "cpu memory\n");
        write(&root.join("cgroup.procs"), "1\n");
        let dir = root.join("pod/c1");
        write(&dir.join("cgroup.procs"), "10\n11\n");
        write(&dir.join(V2_FREEZE), "0\n");
        write(&dir.join(V2_EVENTS), "populated 1\nfrozen 0\n");
        write(&root.join("pod").join(V2_FREEZE), "0\n");
        // As a kernel before 5.2 has it.
        write(&root.join("old/cgroup.procs"), "");
        let fs = CgroupFs::at(root);
        let cg = ProcessCgroup::parse("0::/pod/c1\n").unwrap();
        let freezer = fs.freezer(&cg).unwrap();
        assert!(!freezer.v1);
        assert_eq!(freezer.state().unwrap(), FreezerState::Thawed);
        freezer.freeze().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(V2_FREEZE)).unwrap(), "1");
        assert_eq!(freezer.state().unwrap(), FreezerState::Freezing);
        write(&dir.join(V2_EVENTS), "populated 1\nfrozen 1\n");
        assert_eq!(freezer.state().unwrap(), FreezerState::Frozen);
        freezer.thaw().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(V2_FREEZE)).unwrap(), "0");
        assert_eq!(freezer.procs().unwrap(), [10, 11]);
        assert!(!freezer.has_children().unwrap());
        let old = fs
            .freezer(&ProcessCgroup::parse("0::/old\n").unwrap())
            .unwrap_err();
        assert!(old.to_string().contains("cannot freeze"), "{old}");
        assert!(Freezer::at(root.join("pod"), false).has_children().unwrap());
    }

    #[test]
    fn a_v1_freezer_is_in_the_freezer_hierarchy_and_missing_one_is_unsupported() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(&root.join("memory/cgroup.procs"), "1\n");
        write(&root.join("memory/k8s/c1/cgroup.procs"), "10\n");
        let fs = CgroupFs::at(root);
        let cg = ProcessCgroup::parse("7:memory:/k8s/c1\n6:freezer:/k8s/c1\n").unwrap();
        let err = fs.freezer(&cg).unwrap_err();
        assert!(err.to_string().contains("freezer"), "{err}");
        assert!(fs.freezer_unsupported().unwrap().contains("not mounted"));

        write(&root.join("freezer/cgroup.procs"), "1\n");
        write(&root.join("freezer/k8s/c1/cgroup.procs"), "10\n");
        write(&root.join("freezer/k8s/c1/freezer.state"), "THAWED\n");
        let freezer = fs.freezer(&cg).unwrap();
        assert!(freezer.v1);
        assert_eq!(freezer.dir, root.join("freezer/k8s/c1"));
        assert_eq!(freezer.state().unwrap(), FreezerState::Thawed);
        freezer.freeze().unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("freezer/k8s/c1/freezer.state")).unwrap(),
            "FROZEN"
        );
        assert_eq!(fs.freezer_unsupported(), None);
        let parent = fs
            .freezer(&ProcessCgroup::parse("6:freezer:/k8s\n").unwrap())
            .unwrap_err();
        assert!(parent.to_string().contains("cannot freeze"), "{parent}");
        assert!(
            Freezer::at(root.join("freezer/k8s"), true)
                .has_children()
                .unwrap()
        );
    }
}
