//! The pause fault: freezes every process of each target container through its cgroup's
//! freezer (v1 `freezer.state`, v2 `cgroup.freeze`) and thaws it when the fault ends.
//!
//! What it freezes is a whole cgroup with everything below it, so the decisions are
//! about that cgroup: the root is refused (the node), a cgroup with child cgroups is
//! refused (it would freeze them too; a container's own cgroup is a leaf), and one that
//! is already frozen is refused (paused by the runtime or an ancestor: thawing it at the
//! end would undo a pause this fault does not own). Every process in the cgroup passes
//! the protection policy (the registry checks `acts_on`). A freeze is read back until the
//! kernel shows it frozen, else what was frozen is thawed: frozen completely or not at
//! all. Each cgroup is known by its directory's inode, so a thaw (at the end or in a
//! journal replay) never touches another cgroup made at the same path.

use std::path::PathBuf;
use std::time::Duration;

use chaos_cgroup::{CgroupError, Freezer, FreezerState};
use chaos_proto::api;
use futures::future::BoxFuture;

use crate::error::AgentError;
use crate::faults::leaf_cgroup;
use crate::faults::target_watch::TargetWatch;
use crate::faults::{Fault, KindInfo, PrepareContext, Prepared, TickOutcome};
use crate::journal::UndoRecord;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::target::TargetSpec;
use crate::validate::PausePlan;

/// Needs no capability: the agent (uid 0) owns the cgroup files it writes.
pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::Pause,
    capabilities: &[],
    replay,
    node_lacks: |cgroups| cgroups.freezer_unsupported(),
};

/// How long an inject waits for the kernel to show a cgroup frozen. Freezing waits for
/// each task to reach the freezer; one in uninterruptible sleep (I/O on a stuck mount)
/// holds it in FREEZING, and a loaded node or a slow VM delays the rest.
const FREEZE_READ_BACK: Duration = Duration::from_secs(5);

/// How often a pause reads its cgroups' state back for the status.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// One cgroup a pause freezes, as the journal lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrozenCgroup {
    pub dir: PathBuf,
    pub v1: bool,
    /// The directory's inode at inject: which cgroup it is.
    pub inode: u64,
}

impl FrozenCgroup {
    fn freezer(&self) -> Freezer {
        Freezer::at(&self.dir, self.v1)
    }

    /// Whether the directory is still the cgroup that was frozen.
    fn is_same(&self) -> Result<bool, CgroupError> {
        self.freezer().inode().map(|inode| inode == self.inode)
    }

    /// Thaws the cgroup if it is still the one frozen; one that is gone, or is another
    /// cgroup at the same path, is done.
    fn thaw(&self) -> Result<(), String> {
        let done = |e: &CgroupError| e.is_not_found();
        match self.is_same() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) if done(&e) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        match self.freezer().thaw() {
            Ok(()) => Ok(()),
            Err(e) if done(&e) => Ok(()),
            Err(e) => Err(format!("thawing {}: {e}", self.dir.display())),
        }
    }
}

/// The journal's form for a pause. Tagged as every undo form is (see
/// `journal::UndoRecord`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PauseUndo {
    Thaw { cgroups: Vec<FrozenCgroup> },
}

/// Thaws what a journal record of a pause lists, after a crash.
pub fn replay(_procfs: &Procfs, record: &UndoRecord) -> Result<(), String> {
    let PauseUndo::Thaw { cgroups } = record.read()?;
    thaw_each(&cgroups)
}

/// Thaws every cgroup (all are tried); the errors together.
fn thaw_each(cgroups: &[FrozenCgroup]) -> Result<(), String> {
    let errors: Vec<String> = cgroups.iter().filter_map(|c| c.thaw().err()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Why a cgroup may not be paused, from what was read of it; None: it may.
pub fn refusal(
    target: &str,
    path: &str,
    has_children: bool,
    state: FreezerState,
) -> Option<AgentError> {
    if let Some(refused) = leaf_cgroup::refusal(target, path, has_children, "freeze") {
        return Some(refused);
    }
    if state != FreezerState::Thawed {
        return Some(AgentError::FailedPrecondition(format!(
            "{target}: cgroup {path} is already {} (paused by its runtime, or by a frozen ancestor); a pause would thaw at its end what it does not hold",
            if state == FreezerState::Frozen {
                "frozen"
            } else {
                "freezing"
            }
        )));
    }
    None
}

/// Decides the pause for the resolved targets: one freezer per distinct cgroup, each
/// checked; touches nothing.
pub fn prepare(
    _plan: &PausePlan,
    spec: &TargetSpec,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let cgroups = &context.resolver.cgroups;
    let procfs = &context.resolver.procfs;
    let mut frozen: Vec<FrozenCgroup> = Vec::new();
    let mut acts_on: Vec<ProcessInfo> = Vec::new();
    for target in targets {
        let what = target.describe();
        let path = target.cgroup.display_path();
        let unreadable = |e: CgroupError| {
            if e.is_not_found() {
                AgentError::NotFound(format!("{what}: its cgroup is gone: {e}"))
            } else {
                AgentError::FailedPrecondition(format!("{what}: cannot pause cgroup {path}: {e}"))
            }
        };
        let freezer = cgroups.freezer(&target.cgroup).map_err(unreadable)?;
        if frozen.iter().any(|c| c.dir == freezer.dir) {
            continue;
        }
        let has_children = freezer.has_children().map_err(unreadable)?;
        let state = freezer.state().map_err(unreadable)?;
        if let Some(refused) = refusal(&what, &path, has_children, state) {
            return Err(refused);
        }
        // Everything the freeze stops, which is every process of the cgroup, not only
        // those the target's resolution saw: the registry checks each against the policy.
        acts_on.extend(leaf_cgroup::bound_processes(
            procfs,
            freezer.procs().map_err(unreadable)?,
        ));
        frozen.push(FrozenCgroup {
            inode: freezer.inode().map_err(unreadable)?,
            dir: freezer.dir,
            v1: freezer.v1,
        });
    }
    acts_on.sort_by_key(|p| p.pid);
    acts_on.dedup_by_key(|p| p.pid);
    let fault = PauseFault {
        status: api::PauseStatus {
            cgroups: frozen.len() as u32,
            frozen: 0,
            processes: acts_on.len() as u32,
        },
        cgroups: frozen,
        applied: Vec::new(),
        watch: TargetWatch::of(spec, targets, procfs),
    };
    Ok(Prepared {
        plan_summary: format!(
            "would freeze {} cgroup(s) holding {} process(es)",
            fault.cgroups.len(),
            acts_on.len()
        ),
        acts_on,
        fault: Box::new(fault),
    })
}

#[derive(Debug)]
pub struct PauseFault {
    cgroups: Vec<FrozenCgroup>,
    /// The cgroups this fault has asked to freeze so far (a failed apply thaws these).
    applied: Vec<FrozenCgroup>,
    status: api::PauseStatus,
    /// The targets' inits: a container whose task exited (it can on v2, where SIGKILL
    /// ends frozen tasks) ends the pause, so a task started again in the same cgroup
    /// never starts frozen.
    watch: TargetWatch,
}

impl PauseFault {
    async fn freeze_all(&mut self) -> Result<(), AgentError> {
        for cgroup in self.cgroups.clone() {
            self.applied.push(cgroup.clone());
            cgroup.freezer().freeze().map_err(|e| {
                AgentError::FailedPrecondition(format!("freezing {}: {e}", cgroup.dir.display()))
            })?;
        }
        let give_up = tokio::time::Instant::now() + FREEZE_READ_BACK;
        loop {
            let not_frozen: Vec<String> = self
                .cgroups
                .iter()
                .filter(|c| !matches!(c.freezer().state(), Ok(FreezerState::Frozen)))
                .map(|c| c.dir.display().to_string())
                .collect();
            if not_frozen.is_empty() {
                self.measure();
                return Ok(());
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(AgentError::FailedPrecondition(format!(
                    "the kernel did not show {} frozen within {FREEZE_READ_BACK:?} (a process in uninterruptible sleep holds a freeze back); thawed again, nothing is paused",
                    not_frozen.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reads back how many cgroups are frozen and how many processes they hold.
    fn measure(&mut self) {
        let mut frozen = 0;
        let mut processes = 0;
        for cgroup in &self.cgroups {
            if !matches!(cgroup.is_same(), Ok(true)) {
                continue;
            }
            let freezer = cgroup.freezer();
            if matches!(freezer.state(), Ok(FreezerState::Frozen)) {
                frozen += 1;
            }
            processes += freezer.procs().map_or(0, |procs| procs.len() as u32);
        }
        self.status.frozen = frozen;
        self.status.processes = processes;
    }
}

impl Fault for PauseFault {
    fn kind(&self) -> api::FaultKind {
        api::FaultKind::Pause
    }

    fn apply<'a>(
        &'a mut self,
        _procfs: &'a Procfs,
        _acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            let result = self.freeze_all().await;
            if result.is_err() && thaw_each(&self.applied).is_ok() {
                self.applied.clear();
            }
            result
        })
    }

    /// A failed apply whose thaw failed too leaves cgroups frozen: kept, and retried.
    fn holds_changes(&self) -> bool {
        !self.applied.is_empty()
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
                "every cgroup the pause froze is gone (its containers were removed): nothing is left to thaw".into(),
            );
        }
        TickOutcome::Continue
    }

    fn target_watch(&self) -> Option<&TargetWatch> {
        Some(&self.watch)
    }

    fn revert<'a>(&'a mut self, _procfs: &'a Procfs) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            thaw_each(&self.cgroups)?;
            self.applied.clear();
            self.status.frozen = 0;
            Ok(())
        })
    }

    fn undo(&self) -> UndoRecord {
        UndoRecord::of(&PauseUndo::Thaw {
            cgroups: self.cgroups.clone(),
        })
    }

    fn status(&self) -> api::fault::Status {
        api::fault::Status::Pause(self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_a_parent_and_a_frozen_cgroup_are_refused_a_thawed_leaf_is_not() {
        let root = refusal("pid:7", "/", true, FreezerState::Thawed).unwrap();
        assert_eq!(root.code(), tonic::Code::PermissionDenied);
        let parent = refusal("pod x", "/kubepods", true, FreezerState::Thawed).unwrap();
        assert_eq!(parent.code(), tonic::Code::FailedPrecondition);
        assert!(parent.to_string().contains("child cgroups"), "{parent}");
        for state in [FreezerState::Frozen, FreezerState::Freezing] {
            let frozen = refusal("c", "/k8s.io/c", false, state).unwrap();
            assert_eq!(frozen.code(), tonic::Code::FailedPrecondition);
            assert!(frozen.to_string().contains("already"), "{frozen}");
        }
        assert!(refusal("c", "/k8s.io/c", false, FreezerState::Thawed).is_none());
    }

    fn fake_v2_cgroup(dir: &std::path::Path, freeze: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cgroup.freeze"), freeze).unwrap();
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
    }

    #[test]
    fn a_replay_thaws_the_cgroup_it_froze_and_leaves_one_made_again_at_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c1");
        fake_v2_cgroup(&dir, "1");
        let frozen = FrozenCgroup {
            dir: dir.clone(),
            v1: false,
            inode: Freezer::at(&dir, false).inode().unwrap(),
        };
        let record = UndoRecord::of(&PauseUndo::Thaw {
            cgroups: vec![frozen.clone()],
        });
        assert_eq!(replay(&Procfs::default(), &record), Ok(()));
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "0"
        );

        // The same path, another cgroup (another inode): the thaw leaves it as it is.
        fake_v2_cgroup(&dir, "1");
        let other = UndoRecord::of(&PauseUndo::Thaw {
            cgroups: vec![FrozenCgroup {
                inode: frozen.inode + 1,
                ..frozen.clone()
            }],
        });
        assert_eq!(replay(&Procfs::default(), &other), Ok(()));
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "1"
        );
        // Gone: done.
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(replay(&Procfs::default(), &record), Ok(()));
        let text = serde_json::to_string(&record).unwrap();
        assert!(
            text.starts_with(r#"{"action":"thaw","cgroups":[{"dir":"#),
            "{text}"
        );
    }
}
