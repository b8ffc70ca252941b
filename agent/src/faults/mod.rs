//! Fault kinds. A kind is one module and one entry in [`KINDS`]: the module decides
//! everything from the validated plan and the resolved targets (`prepare`, touching
//! nothing), implements [`Fault`] for what it holds while active, and owns its journal
//! form and its replay. Every per-kind table (names, metric series, capabilities, the
//! Capabilities RPC, journal replay) follows from [`KINDS`]; names come from the API's
//! own enum (`FaultKind::label`).
//!
//! To add a kind: its plan and validator in `validate/<kind>.rs` with a variant of
//! `validate::FaultPlan` and an arm in `validate_inject`; a module here with a `prepare`
//! and a type implementing [`Fault`]; its [`KindInfo`] in [`KINDS`] and its arm in
//! [`prepare`]. Tests check that every plan has its entry and every entry its plan.
//!
//! `tick` and `revert` run on the agent's fault thread, which every fault's deadline
//! shares: they do quick reads and syscalls only. Work that may block (finding a
//! container again through the runtime and /proc) is asked for by `tick_needs` and done
//! by the registry elsewhere.

pub mod blackhole;
pub mod cpu;
pub mod disk_fill;
pub mod dns;
pub mod io;
pub mod io_stress;
pub mod leaf_cgroup;
pub mod memory;
pub mod network;
pub mod pause;
pub mod process;
pub mod target_fs;
pub mod target_watch;

use std::time::Duration;

use chaos_cgroup::CgroupFs;
use chaos_proto::api;
use futures::future::BoxFuture;

use crate::capabilities::{Capability, CapabilitySet};
use crate::error::AgentError;
use crate::journal::UndoRecord;
use crate::metrics::Metrics;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::{Resolved, Resolver};
use crate::target::TargetSpec;
use crate::validate::FaultPlan;

use target_watch::TargetWatch;

/// What the agent knows of a kind apart from any fault of it.
#[derive(Debug)]
pub struct KindInfo {
    pub kind: api::FaultKind,
    /// The capabilities the kind needs beyond running as uid 0, with what for. Found by
    /// running every kind under `setpriv` with one capability removed at a time. Module
    /// loading (CAP_SYS_MODULE) is never among them: the node loads the qdisc modules.
    pub capabilities: &'static [(Capability, &'static str)],
    /// Puts the node back from a journal record of this kind (at start, for faults of a
    /// previous run). Synchronous: the registry runs it off the faults' thread.
    pub replay: fn(&Procfs, &UndoRecord) -> Result<(), String>,
    /// What this node lacks for the kind (a kernel feature, a controller), or None.
    /// Reported by the Capabilities RPC; an inject finds the same and refuses.
    pub node_lacks: fn(&CgroupFs) -> Option<String>,
}

/// `node_lacks` of a kind every node can carry out (what a network kind needs of the
/// kernel is reported per qdisc).
pub fn lacks_nothing(_cgroups: &CgroupFs) -> Option<String> {
    None
}

/// The kinds the agent implements, in the order the Capabilities RPC reports them.
pub const KINDS: &[KindInfo] = &[
    process::KIND,
    network::KIND,
    blackhole::KIND,
    cpu::KIND,
    memory::KIND,
    pause::KIND,
    io::KIND,
    disk_fill::KIND,
    io_stress::KIND,
    dns::KIND,
];

/// The entry of an implemented kind.
pub fn kind_info(kind: api::FaultKind) -> Option<&'static KindInfo> {
    KINDS.iter().find(|info| info.kind == kind)
}

/// The capabilities `kind` needs beyond uid 0 (none for a kind the agent lacks: it is
/// refused as unimplemented before capabilities matter).
pub fn required_capabilities(kind: api::FaultKind) -> &'static [(Capability, &'static str)] {
    kind_info(kind).map_or(&[], |info| info.capabilities)
}

/// A fault the agent holds: what every kind does while it is active and when it ends.
pub trait Fault: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> api::FaultKind;

    /// Changes the node. On error the fault must have changed nothing (or undone what it
    /// changed).
    fn apply<'a>(
        &'a mut self,
        procfs: &'a Procfs,
        acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>>;

    /// After a failed apply: whether the node still carries part of it, because the
    /// rollback failed too. Such a fault is kept and its revert retried. Stressors are
    /// not counted: one that could not be killed ends by itself at the fault's duration,
    /// and with the agent (parent-death signal).
    fn holds_changes(&self) -> bool {
        false
    }

    /// A fault that is complete once applied (a single kill) holds nothing and ends at
    /// once.
    fn is_one_shot(&self) -> bool {
        false
    }

    /// How often `tick` runs while the fault is active; None: never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// What a round needs found first. Finding a container's processes again reads /proc
    /// and asks the runtime, which can take long: the registry does it away from the
    /// thread that runs every fault's deadline.
    fn tick_needs(&self) -> TickNeeds {
        TickNeeds::Nothing
    }

    /// The fault's periodic work. `chosen` is what [`TickNeeds::ChosenProcesses`] asked
    /// for: the processes of the targets resolved again (a restarted container has a new
    /// init), checked against the protection policy, or why there are none.
    fn tick(
        &mut self,
        _procfs: &Procfs,
        _chosen: Option<Result<Vec<ProcessInfo>, String>>,
    ) -> TickOutcome {
        TickOutcome::Continue
    }

    /// The targets' inits a fault watches (see `target_watch`): a stressor outlives its
    /// container's task and must be killed before the runtime removes (or reuses) the
    /// container's cgroup.
    fn target_watch(&self) -> Option<&TargetWatch> {
        None
    }

    /// Puts the node back: continues stopped processes, restores qdiscs, kills
    /// stressors. A signal that was sent (a kill) holds nothing: ending it is its revert.
    fn revert<'a>(&'a mut self, procfs: &'a Procfs) -> BoxFuture<'a, Result<(), String>>;

    /// What the journal must hold to revert this fault after a crash, in the kind's own
    /// form (replayed by its [`KindInfo::replay`]).
    fn undo(&self) -> UndoRecord;

    fn status(&self) -> api::fault::Status;

    /// The threads the fault's stressors run per target (their sum is bounded by the
    /// agent's limit).
    fn stressor_threads_per_target(&self) -> u32 {
        0
    }

    /// Whether the fault watches its targets' inits: the registry then asks
    /// [`Fault::target_gone`] often, apart from the status rounds.
    fn watches_target(&self) -> bool {
        self.target_watch().is_some_and(|watch| !watch.is_empty())
    }

    /// Why the fault has nothing left to act on, once a watched target's init exited.
    fn target_gone(&self) -> Option<String> {
        self.target_watch().and_then(TargetWatch::gone)
    }
}

/// A fault the agent holds, of any kind.
pub type ActiveFault = Box<dyn Fault>;

/// Refuses a kind whose capabilities the agent does not hold, naming the first missing
/// one and what it is for: the fault could not apply completely.
pub fn check_capabilities(kind: api::FaultKind, held: &CapabilitySet) -> Result<(), AgentError> {
    let missing: Vec<String> = required_capabilities(kind)
        .iter()
        .filter(|(capability, _)| !held.has(*capability))
        .map(|(capability, purpose)| format!("{} ({purpose})", capability.name()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(AgentError::FailedPrecondition(format!(
        "{} faults need capabilities this agent does not hold: {}; grant them to the agent's container (securityContext.capabilities.add)",
        kind.label(),
        missing.join(", ")
    )))
}

/// The capabilities `kind` needs that `held` lacks, by name.
pub fn missing_capabilities(kind: api::FaultKind, held: &CapabilitySet) -> Vec<String> {
    required_capabilities(kind)
        .iter()
        .filter(|(capability, _)| !held.has(*capability))
        .map(|(capability, _)| capability.name().to_string())
        .collect()
}

/// What `prepare` may read besides the plan and the targets (used by cpu and memory).
pub struct PrepareContext<'a> {
    pub resolver: &'a Resolver,
    pub metrics: &'a Metrics,
    /// The fault's duration: stressors stop by themselves when it has passed.
    pub duration: Duration,
}

/// What a fault's periodic work needs found before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickNeeds {
    Nothing,
    /// The processes a repeating signal goes to this round.
    ChosenProcesses,
}

/// How a round of periodic work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    Continue,
    /// The fault has nothing left to act on; the message says why.
    Ended(String),
}

/// What `prepare` decided.
pub struct Prepared {
    pub fault: ActiveFault,
    /// Processes the fault will act on; the registry refuses protected ones.
    pub acts_on: Vec<ProcessInfo>,
    /// For dry runs: what would happen.
    pub plan_summary: String,
}

/// Decides the fault a valid plan asks for, on the resolved targets; touches nothing.
pub async fn prepare(
    plan: &FaultPlan,
    spec: &TargetSpec,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    match plan {
        FaultPlan::Process(plan) => process::prepare(plan, spec, targets, context),
        FaultPlan::Network(plan) => network::prepare(plan, targets, context).await,
        FaultPlan::Blackhole(plan) => blackhole::prepare(plan, targets, context).await,
        FaultPlan::Cpu(plan) => cpu::prepare(plan, spec, targets, context),
        FaultPlan::Memory(plan) => memory::prepare(plan, spec, targets, context),
        FaultPlan::Pause(plan) => pause::prepare(plan, spec, targets, context),
        FaultPlan::Io(plan) => io::prepare(plan, targets, context),
        FaultPlan::DiskFill(plan) => disk_fill::prepare(plan, targets, context),
        FaultPlan::IoStress(plan) => io_stress::prepare(plan, spec, targets, context),
        FaultPlan::Dns(plan) => dns::prepare(plan, spec, targets, context).await,
    }
}

/// Undoes what a journal record of `kind` lists. Used at start for faults of a previous
/// run.
pub fn replay(procfs: &Procfs, kind: api::FaultKind, undo: &UndoRecord) -> Result<(), String> {
    let info = kind_info(kind).ok_or_else(|| {
        format!(
            "the record is of kind {}, which this agent does not implement",
            kind.label()
        )
    })?;
    (info.replay)(procfs, undo)
}

#[cfg(test)]
mod capability_tests {
    use super::*;

    #[test]
    fn a_kind_without_its_capability_is_a_failed_precondition_naming_it() {
        let held = CapabilitySet::all().without(Capability::NetAdmin);
        for kind in [api::FaultKind::Network, api::FaultKind::Blackhole] {
            let err = check_capabilities(kind, &held).unwrap_err();
            assert_eq!(err.code(), tonic::Code::FailedPrecondition);
            assert!(
                err.to_string().contains("CAP_NET_ADMIN (to install qdiscs"),
                "{err}"
            );
            assert!(!err.to_string().contains("CAP_SYS_ADMIN"), "{err}");
        }
        assert_eq!(
            missing_capabilities(api::FaultKind::Network, &held),
            ["CAP_NET_ADMIN"]
        );
        for kind in [
            api::FaultKind::Process,
            api::FaultKind::Cpu,
            api::FaultKind::Memory,
        ] {
            assert_eq!(check_capabilities(kind, &held), Ok(()));
        }
    }

    #[test]
    fn cpu_and_memory_need_no_capability_and_every_kind_is_listed() {
        let none = CapabilitySet::default();
        assert_eq!(check_capabilities(api::FaultKind::Cpu, &none), Ok(()));
        assert_eq!(check_capabilities(api::FaultKind::Memory, &none), Ok(()));
        let err = check_capabilities(api::FaultKind::Process, &none).unwrap_err();
        assert!(err.to_string().contains("CAP_KILL"), "{err}");
        assert_eq!(KINDS.len(), 10);
        assert_eq!(check_capabilities(api::FaultKind::Io, &none), Ok(()));
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn each_kind_is_listed_once_and_unspecified_is_not() {
        let mut kinds: Vec<i32> = KINDS.iter().map(|info| info.kind as i32).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), KINDS.len());
        let absent = api::FaultKind::Unspecified;
        assert!(kind_info(absent).is_none());
        assert_eq!(required_capabilities(absent), &[]);
        assert!(kind_info(api::FaultKind::Blackhole).is_some());
    }

    #[test]
    fn every_kind_of_the_api_is_served() {
        let api_kinds = api::FaultKind::every_kind();
        assert!(api_kinds.len() >= 9, "{api_kinds:?}");
        for kind in &api_kinds {
            assert!(kind_info(*kind).is_some(), "{kind:?} is not in KINDS");
        }
        assert_eq!(KINDS.len(), api_kinds.len());
    }

    #[test]
    fn each_kind_replays_an_empty_record_of_its_own_form_and_refuses_another_form() {
        let procfs = Procfs::default();
        let empty = |kind: api::FaultKind| match kind {
            api::FaultKind::Process => serde_json::json!({"action": "nothing"}),
            api::FaultKind::Network | api::FaultKind::Blackhole => {
                serde_json::json!({"action": "restore_qdisc", "interfaces": []})
            }
            api::FaultKind::Pause => serde_json::json!({"action": "thaw", "cgroups": []}),
            api::FaultKind::Io => serde_json::json!({"action": "restore_limits", "cgroups": []}),
            api::FaultKind::DiskFill => serde_json::json!({"action": "remove_files", "files": []}),
            api::FaultKind::IoStress => {
                serde_json::json!({"action": "kill_and_remove", "processes": [], "files": []})
            }
            api::FaultKind::Dns => {
                serde_json::json!({"action": "remove_dns_redirect", "namespaces": []})
            }
            _ => serde_json::json!({"action": "kill_processes", "processes": []}),
        };
        for info in KINDS {
            let record = UndoRecord::of(&empty(info.kind));
            assert_eq!(
                replay(&procfs, info.kind, &record),
                Ok(()),
                "{:?}",
                info.kind
            );
            let foreign = if info.kind == api::FaultKind::Pause {
                serde_json::json!({"action": "nothing"})
            } else {
                serde_json::json!({"action": "thaw"})
            };
            let err = replay(&procfs, info.kind, &UndoRecord::of(&foreign)).unwrap_err();
            assert!(err.contains(foreign["action"].as_str().unwrap()), "{err}");
        }
        let record = UndoRecord::of(&serde_json::json!({"action": "nothing"}));
        let err = replay(&procfs, api::FaultKind::Unspecified, &record).unwrap_err();
        assert!(err.contains("which this agent does not implement"), "{err}");
    }

    #[test]
    fn journal_records_of_earlier_agents_read_in_each_kinds_form() {
        // As the agents before the kinds owned their forms wrote them.
        let procfs = Procfs::default();
        let stopped =
            r#"{"action":"continue_processes","processes":[{"pid":4194304,"start_time":1}]}"#;
        let killed = r#"{"action":"kill_processes","processes":[{"pid":4194304,"start_time":1}]}"#;
        let record = |text: &str| -> UndoRecord { serde_json::from_str(text).unwrap() };
        // pid 4194304 is above the kernel's maximum: gone, so each replay is done.
        assert_eq!(
            replay(&procfs, api::FaultKind::Process, &record(stopped)),
            Ok(())
        );
        assert_eq!(
            replay(&procfs, api::FaultKind::Cpu, &record(killed)),
            Ok(())
        );
        assert_eq!(
            replay(&procfs, api::FaultKind::Memory, &record(killed)),
            Ok(())
        );
        assert_eq!(
            serde_json::to_string(&record(stopped)).unwrap(),
            stopped,
            "a record is kept as written"
        );
    }

    #[test]
    fn every_kind_has_zero_metric_series_from_the_start() {
        let metrics = Metrics::new("t", KINDS.iter().map(|info| info.kind));
        let text = metrics.encode();
        for info in KINDS {
            let series = format!(
                "chaos_agent_injections_total{{kind=\"{}\"}} 0",
                info.kind.label()
            );
            assert!(text.contains(&series), "{series} missing");
        }
    }
}
