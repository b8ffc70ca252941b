//! Fault kinds. Each kind is one module with the same shape, dispatched here:
//! `prepare` (decide everything from the validated plan and the resolved targets,
//! touch nothing), `apply` (change the node, completely or not at all), `tick`
//! (periodic work while active: repeats, feedback loops, status), `revert`, `undo`
//! (what the journal must hold to revert after a crash) and `status`.
//!
//! To add a kind: a module with those functions, a variant of `ActiveFault`, its
//! arms below, and an `Undo` variant in `journal` if it holds state on the node.
//!
//! `tick` and `revert` run on the agent's fault thread, which every fault's deadline
//! shares: they do quick reads and syscalls only. Work that may block (finding a
//! container again through the runtime and /proc) is asked for by `tick_needs` and done
//! by the registry elsewhere.

pub mod cpu;
pub mod memory;
pub mod network;
pub mod process;
pub mod target_watch;

use std::time::Duration;

use chaos_proto::api;

use crate::capabilities::{Capability, CapabilitySet};
use crate::error::AgentError;
use crate::journal::Undo;
use crate::metrics::Metrics;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::{Resolved, Resolver};
use crate::target::TargetSpec;
use crate::validate::FaultPlan;

/// A fault the agent holds, by kind.
#[derive(Debug)]
pub enum ActiveFault {
    Process(process::ProcessFault),
    Network(network::NetworkFault),
    /// A blackhole is a network fault with 100 % loss; its own kind for lists and metrics.
    Blackhole(network::NetworkFault),
    Cpu(cpu::CpuFault),
    Memory(memory::MemoryFault),
}

/// The kinds the agent implements, in the order the Capabilities RPC reports them.
pub const KINDS: &[api::FaultKind] = &[
    api::FaultKind::Process,
    api::FaultKind::Network,
    api::FaultKind::Blackhole,
    api::FaultKind::Cpu,
    api::FaultKind::Memory,
];

/// The capabilities each kind needs beyond running as uid 0, with what for. Found by
/// running every kind under `setpriv` with one capability removed at a time. CPU and
/// memory need none: the agent (uid 0) owns the cgroup files it writes, raising a
/// child's oom_score_adj is always permitted, and it signals only its own stressors.
/// Module loading (CAP_SYS_MODULE) is left out: the node loads the qdisc modules.
pub fn required_capabilities(kind: api::FaultKind) -> &'static [(Capability, &'static str)] {
    const NETWORK: &[(Capability, &str)] = &[
        (
            Capability::SysPtrace,
            "to open the target's /proc/PID/ns/net (its process holds capabilities the agent does not)",
        ),
        (
            Capability::SysAdmin,
            "to enter the target's network namespace (setns)",
        ),
        (
            Capability::NetAdmin,
            "to install qdiscs and filters and create ifb devices in the target's network namespace",
        ),
    ];
    match kind {
        api::FaultKind::Process => &[(
            Capability::Kill,
            "to signal processes that run as another user",
        )],
        api::FaultKind::Network | api::FaultKind::Blackhole => NETWORK,
        api::FaultKind::Cpu | api::FaultKind::Memory => &[],
        api::FaultKind::Io | api::FaultKind::Unspecified => &[],
    }
}

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
        kind_label(kind),
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

impl ActiveFault {
    pub async fn prepare(
        plan: &FaultPlan,
        spec: &TargetSpec,
        targets: &[Resolved],
        context: &PrepareContext<'_>,
    ) -> Result<Prepared, AgentError> {
        match plan {
            FaultPlan::Cpu(plan) => {
                let mut fault = cpu::CpuFault::prepare(
                    plan,
                    &context.resolver.cgroups,
                    targets,
                    context.duration,
                )?;
                fault.watch =
                    target_watch::TargetWatch::of(spec, targets, &context.resolver.procfs);
                Ok(Prepared {
                    plan_summary: fault.summary(),
                    acts_on: Vec::new(),
                    fault: ActiveFault::Cpu(fault),
                })
            }
            FaultPlan::Memory(plan) => {
                let mut fault = memory::MemoryFault::prepare(
                    plan,
                    &context.resolver.cgroups,
                    context.resolver.procfs.root(),
                    context.metrics,
                    targets,
                    context.duration,
                )?;
                fault.watch =
                    target_watch::TargetWatch::of(spec, targets, &context.resolver.procfs);
                Ok(Prepared {
                    plan_summary: fault.summary(),
                    acts_on: Vec::new(),
                    fault: ActiveFault::Memory(fault),
                })
            }
            // Both read (snapshot) the interfaces: their state goes into the journal
            // before apply changes anything.
            FaultPlan::Network(plan) => {
                let (fault, acts_on) =
                    prepare_network(network::network_request(plan), targets, context).await?;
                Ok(Prepared {
                    plan_summary: fault
                        .summary(&format!("install {}", fault.request.impairment.kind())),
                    acts_on,
                    fault: ActiveFault::Network(fault),
                })
            }
            FaultPlan::Blackhole(plan) => {
                let (fault, acts_on) =
                    prepare_network(network::blackhole_request(plan), targets, context).await?;
                Ok(Prepared {
                    plan_summary: fault.summary("drop"),
                    acts_on,
                    fault: ActiveFault::Blackhole(fault),
                })
            }
            FaultPlan::Process(plan) => {
                let (fault, chosen) = process::ProcessFault::prepare(
                    plan.clone(),
                    spec,
                    targets,
                    &context.resolver.procfs,
                )?;
                let verb = if fault.holds_stop() {
                    "stop (until the fault ends)"
                } else {
                    "signal"
                };
                Ok(Prepared {
                    plan_summary: format!("would {verb} {} process(es)", chosen.len()),
                    acts_on: chosen,
                    fault: ActiveFault::Process(fault),
                })
            }
        }
    }

    pub fn kind(&self) -> api::FaultKind {
        match self {
            ActiveFault::Process(_) => api::FaultKind::Process,
            ActiveFault::Network(_) => api::FaultKind::Network,
            ActiveFault::Blackhole(_) => api::FaultKind::Blackhole,
            ActiveFault::Cpu(_) => api::FaultKind::Cpu,
            ActiveFault::Memory(_) => api::FaultKind::Memory,
        }
    }

    /// Changes the node. On error the fault must have changed nothing (or undone
    /// what it changed).
    pub async fn apply(
        &mut self,
        procfs: &Procfs,
        acts_on: &[ProcessInfo],
    ) -> Result<(), AgentError> {
        match self {
            ActiveFault::Process(p) => p.apply(procfs, acts_on).await,
            ActiveFault::Network(n) | ActiveFault::Blackhole(n) => n.apply().await,
            ActiveFault::Cpu(c) => c.apply().await,
            ActiveFault::Memory(m) => m.apply().await,
        }
    }

    /// After a failed apply: whether the node still carries part of it, because the
    /// rollback failed too. Such a fault is kept and its revert retried. Stressors are
    /// not counted: one that could not be killed ends by itself at the fault's duration,
    /// and with the agent (parent-death signal).
    pub fn holds_changes(&self) -> bool {
        match self {
            ActiveFault::Process(p) => p.holds_stopped(),
            ActiveFault::Network(n) | ActiveFault::Blackhole(n) => n.holds_changes(),
            ActiveFault::Cpu(_) | ActiveFault::Memory(_) => false,
        }
    }

    /// A fault that is complete once applied (a single kill) holds nothing and ends
    /// at once.
    pub fn is_one_shot(&self) -> bool {
        match self {
            ActiveFault::Process(p) => p.is_one_shot(),
            ActiveFault::Network(_) | ActiveFault::Blackhole(_) => false,
            ActiveFault::Cpu(_) | ActiveFault::Memory(_) => false,
        }
    }

    /// How often `tick` runs while the fault is active; None: never.
    pub fn tick_interval(&self) -> Option<Duration> {
        match self {
            ActiveFault::Process(p) if p.holds_stop() => Some(process::STOP_STATUS_INTERVAL),
            ActiveFault::Process(p) => p.plan.interval,
            ActiveFault::Network(_) | ActiveFault::Blackhole(_) => None,
            ActiveFault::Cpu(_) => Some(cpu::STATUS_INTERVAL),
            ActiveFault::Memory(_) => Some(memory::STATUS_INTERVAL),
        }
    }

    /// What a round needs found first. Finding a container's processes again reads
    /// /proc and asks the runtime, which can take long: the registry does it away from
    /// the thread that runs every fault's deadline.
    pub fn tick_needs(&self) -> TickNeeds {
        match self {
            ActiveFault::Process(p) if p.plan.interval.is_some() && p.pinned().is_none() => {
                TickNeeds::ChosenProcesses
            }
            _ => TickNeeds::Nothing,
        }
    }

    /// The fault's periodic work. `chosen` is what [`TickNeeds::ChosenProcesses`] asked
    /// for: the processes of the targets resolved again (a restarted container has a new
    /// init), checked against the protection policy, or why there are none.
    pub fn tick(
        &mut self,
        procfs: &Procfs,
        chosen: Option<Result<Vec<ProcessInfo>, String>>,
    ) -> TickOutcome {
        match self {
            ActiveFault::Process(fault) if fault.holds_stop() => fault.measure_stopped(procfs),
            ActiveFault::Process(fault) => match (fault.pinned(), chosen) {
                (Some(_), _) => {
                    if let Err(why) = fault.pinned_round() {
                        return TickOutcome::Ended(why);
                    }
                }
                (None, Some(Ok(processes))) => {
                    fault.signal_round(procfs, &processes);
                }
                (None, Some(Err(reason))) => fault.record_empty_round(&reason),
                (None, None) => {}
            },
            ActiveFault::Network(_) | ActiveFault::Blackhole(_) => {}
            ActiveFault::Cpu(c) => c.measure(),
            ActiveFault::Memory(m) => m.measure(),
        }
        TickOutcome::Continue
    }

    /// Whether the fault watches its targets' inits (see `target_watch`): the registry
    /// then asks [`ActiveFault::target_gone`] often, apart from the status rounds.
    pub fn watches_target(&self) -> bool {
        match self {
            ActiveFault::Cpu(c) => !c.watch.is_empty(),
            ActiveFault::Memory(m) => !m.watch.is_empty(),
            _ => false,
        }
    }

    /// Why the fault has nothing left to act on, once a watched target's init exited: a
    /// stressor outlives its container's task and must be killed before the runtime
    /// removes (or reuses) the container's cgroup.
    pub fn target_gone(&self) -> Option<String> {
        match self {
            ActiveFault::Cpu(c) => c.watch.gone(),
            ActiveFault::Memory(m) => m.watch.gone(),
            _ => None,
        }
    }

    /// Puts the node back: continues stopped processes, restores qdiscs, kills
    /// stressors. A signal that was sent (a kill) holds nothing: ending it is its revert.
    pub async fn revert(&mut self, procfs: &Procfs) -> Result<(), String> {
        match self {
            ActiveFault::Process(p) => p.continue_stopped(procfs),
            ActiveFault::Network(n) | ActiveFault::Blackhole(n) => n.revert().await,
            ActiveFault::Cpu(c) => c.revert().await,
            ActiveFault::Memory(m) => m.revert().await,
        }
    }

    /// What the journal must hold to revert this fault after a crash.
    pub fn undo(&self) -> Undo {
        match self {
            ActiveFault::Process(p) => p.undo(),
            ActiveFault::Network(n) | ActiveFault::Blackhole(n) => Undo::RestoreQdisc {
                interfaces: n.restores(),
            },
            ActiveFault::Cpu(c) => c.undo(),
            ActiveFault::Memory(m) => m.undo(),
        }
    }

    pub fn status(&self) -> api::fault::Status {
        match self {
            ActiveFault::Process(p) => api::fault::Status::Process(p.status.clone()),
            // The API has no blackhole status of its own: what is installed is the same.
            ActiveFault::Network(n) | ActiveFault::Blackhole(n) => {
                api::fault::Status::Network(n.status())
            }
            ActiveFault::Cpu(c) => api::fault::Status::Cpu(c.status),
            ActiveFault::Memory(m) => api::fault::Status::Memory(m.status),
        }
    }
}

/// The network and blackhole faults: the same netlink machinery on the host's modules.
async fn prepare_network(
    request: network::NetworkRequest,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<(network::NetworkFault, Vec<ProcessInfo>), AgentError> {
    let modules = chaos_netem::capabilities::ModuleTree::host();
    network::NetworkFault::prepare(request, targets, &context.resolver.procfs, &modules).await
}

pub fn kind_label(kind: api::FaultKind) -> &'static str {
    match kind {
        api::FaultKind::Cpu => "cpu",
        api::FaultKind::Memory => "memory",
        api::FaultKind::Network => "network",
        api::FaultKind::Process => "process",
        api::FaultKind::Io => "io",
        api::FaultKind::Blackhole => "blackhole",
        api::FaultKind::Unspecified => "unspecified",
    }
}

pub fn kind_from_label(label: &str) -> api::FaultKind {
    match label {
        "cpu" => api::FaultKind::Cpu,
        "memory" => api::FaultKind::Memory,
        "network" => api::FaultKind::Network,
        "process" => api::FaultKind::Process,
        "io" => api::FaultKind::Io,
        "blackhole" => api::FaultKind::Blackhole,
        _ => api::FaultKind::Unspecified,
    }
}

/// Undoes what a journal record lists. Used at start for faults of a previous run.
pub fn undo(procfs: &Procfs, undo: &Undo) -> Result<(), String> {
    use crate::sys::{SignalError, signal_process};
    match undo {
        Undo::Nothing => Ok(()),
        Undo::KillProcesses { processes } => {
            let mut errors = Vec::new();
            for p in processes {
                match signal_process(
                    procfs,
                    p.pid,
                    p.start_time,
                    nix::sys::signal::Signal::SIGKILL,
                ) {
                    Ok(()) | Err(SignalError::Gone(_)) | Err(SignalError::Reused(_)) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
        Undo::ContinueProcesses { processes } => process::continue_processes(procfs, processes),
        Undo::RestoreQdisc { interfaces } => {
            let errors: Vec<String> = interfaces
                .iter()
                .filter_map(|i| network::restore_interface(i, None, procfs.root()).err())
                .collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
    }
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
        assert_eq!(KINDS.len(), 5);
    }
}
