//! Whether a stressing fault's target is still the one it was injected into.
//!
//! A CPU or memory stressor is a child of the agent placed in the target's cgroup, outside
//! the container's pid namespace: when the container's task dies, the kernel kills every
//! process of that namespace but not the stressor. Left alone it would keep the dead
//! container's cgroup busy (runc cannot remove it) and, when the same container is started
//! again (a new task in the same cgroup, as `ctr task start` or a runtime restart does), load
//! the NEW task with the old fault. So the fault pins each target's init at inject through a
//! pidfd and ends, as "target gone", once one of them has exited. The registry asks every
//! `TARGET_POLL` (a poll(2) per init): runc removes a dead container's cgroup right after the
//! exit and gives up after about 150 ms of EBUSY (its RemovePaths retries), leaving the
//! cgroup behind for good if the stressor is still in it then.
//!
//! `cgroup:` targets are left out: the cgroup itself is the target there, and its oldest
//! process may come and go while the cgroup lives on.

use crate::procfs::Procfs;
use crate::resolve::Resolved;
use crate::sys::PinnedProcess;
use crate::target::TargetSpec;

#[derive(Debug, Default)]
pub struct TargetWatch {
    /// Each watched target's init, with the target's name for the message.
    inits: Vec<(PinnedProcess, String)>,
}

impl TargetWatch {
    /// Pins the init of every target. An init that cannot be pinned (it exited, or its pid
    /// was reused, between the resolution and here) is not watched: the fault then ends at
    /// its deadline or revert, as before this watch existed.
    pub fn of(spec: &TargetSpec, targets: &[Resolved], procfs: &Procfs) -> TargetWatch {
        if matches!(spec, TargetSpec::Cgroup(_)) {
            return TargetWatch::default();
        }
        let inits = targets
            .iter()
            .filter_map(|target| {
                PinnedProcess::open(procfs, target.init.pid, target.init.start_time)
                    .ok()
                    .map(|pinned| (pinned, target.canonical()))
            })
            .collect();
        TargetWatch { inits }
    }

    pub fn is_empty(&self) -> bool {
        self.inits.is_empty()
    }

    /// Why the fault has nothing left to act on, once a watched init has exited.
    pub fn gone(&self) -> Option<String> {
        self.inits
            .iter()
            .find(|(pinned, _)| pinned.has_exited())
            .map(|(pinned, target)| {
                format!(
                    "the init (pid {}) of {target} has exited: the container stopped or was restarted",
                    pinned.pid()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn an_exited_init_is_seen_gone() {
        let procfs = Procfs::default();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start_time = procfs.stat(pid).unwrap().start_time;
        let pinned = PinnedProcess::open(&procfs, pid, start_time).unwrap();
        let watch = TargetWatch {
            inits: vec![(pinned, "pid:1".into())],
        };
        assert_eq!(watch.gone(), None);
        child.kill().unwrap();
        child.wait().unwrap();
        let why = watch.gone().unwrap();
        assert!(why.contains(&format!("pid {pid}")), "{why}");
        assert_eq!(TargetWatch::default().gone(), None);
    }
}
