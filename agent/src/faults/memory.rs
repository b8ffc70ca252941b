//! The memory fault: one stressor process per target cgroup, running the agent's own
//! `stress memory` subcommand inside the target's cgroup, so the memory it makes resident
//! is charged to the container and bounded by its limit. The status reads the cgroup's
//! usage and OOM-kill counter, and the stressors' resident memory.
//!
//! What a fill may be is decided in `prepare`, from pure functions: never more than the
//! target's effective limit (its own or an ancestor's, e.g. the pod's), a percent of an
//! unlimited container only when the request asks for node memory, and never more than the
//! agent's share of the node's MemAvailable: a fill that would leave the node short is
//! refused, not shrunk. The stressor itself is the OOM killer's first choice (`stressor`).

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use chaos_cgroup::{CgroupFs, MemoryLimit, ProcessCgroup};
use chaos_proto::api;

use futures::future::BoxFuture;

use crate::error::AgentError;
use crate::faults::target_watch::TargetWatch;
use crate::faults::{Fault, KindInfo, PrepareContext, Prepared, TickOutcome};
use crate::journal::UndoRecord;
use crate::metrics::Metrics;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::stressor::{self, Stressor, StressorRequest};
use crate::target::TargetSpec;
use crate::validate::{MemoryAmount, MemoryPlan};

/// Needs no capability: the agent (uid 0) owns the cgroup files it reads, and raising a
/// child's oom_score_adj is always permitted.
pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::Memory,
    capabilities: &[],
    replay: stressor::replay,
    node_lacks: crate::faults::lacks_nothing,
};

/// Decides the memory fault for the resolved targets; touches nothing.
pub fn prepare(
    plan: &MemoryPlan,
    spec: &TargetSpec,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let mut fault = MemoryFault::prepare(
        plan,
        &context.resolver.cgroups,
        context.resolver.procfs.root(),
        context.metrics,
        targets,
        context.duration,
    )?;
    fault.watch = TargetWatch::of(spec, targets, &context.resolver.procfs);
    Ok(Prepared {
        plan_summary: fault.summary(),
        acts_on: Vec::new(),
        fault: Box::new(fault),
    })
}

/// How often usage and OOM kills are read.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct MemoryTarget {
    cgroup: ProcessCgroup,
    what: String,
    bytes: u64,
    /// OOM kills the cgroup had before the fault; None if the counter is unreadable.
    oom_baseline: Option<u64>,
    oom_seen: u64,
}

pub struct MemoryFault {
    pub plan: MemoryPlan,
    cgroups: CgroupFs,
    metrics: Metrics,
    duration: Duration,
    targets: Vec<MemoryTarget>,
    stressors: Vec<Stressor>,
    pub status: api::MemoryStatus,
    /// The targets' inits; set by [`prepare`], empty for `cgroup:` targets.
    pub watch: TargetWatch,
}

const PAGE: u64 = 4096;

/// Bytes to hold in one target: the size asked for, within the target's effective limit, or
/// a percentage of that limit (of node memory when there is none and the request says so),
/// rounded down to whole pages. `what` names the target in a refusal.
pub fn bytes_to_hold(
    amount: &MemoryAmount,
    limit: Option<&MemoryLimit>,
    node_total: u64,
    allow_node_memory: bool,
    what: &str,
) -> Result<u64, AgentError> {
    let bytes = match (amount, limit) {
        (MemoryAmount::Bytes(bytes), Some(limit)) if *bytes > limit.bytes => {
            return Err(AgentError::invalid(
                "memory.size_bytes",
                format!("{bytes} bytes is more than {what} may use: its memory limit is {limit}"),
            ));
        }
        (MemoryAmount::Bytes(bytes), _) => *bytes,
        (MemoryAmount::PercentOfLimit(percent), Some(limit)) => percent_of(limit.bytes, *percent),
        (MemoryAmount::PercentOfLimit(percent), None) if allow_node_memory => {
            percent_of(node_total, *percent)
        }
        (MemoryAmount::PercentOfLimit(percent), None) => {
            return Err(AgentError::invalid(
                "memory.percent",
                format!(
                    "{what} has no memory limit, so {percent} % would be of the node's memory \
                     ({node_total} bytes); set memory.allow_node_memory (chaosctl inject memory \
                     --allow-node-memory, `allow_node_memory: true` in an experiment) if that \
                     is meant"
                ),
            ));
        }
    };
    if bytes == 0 {
        return Err(AgentError::invalid(
            "memory.percent",
            format!("is less than one page of {what}"),
        ));
    }
    Ok(bytes)
}

fn percent_of(base: u64, percent: u32) -> u64 {
    (u128::from(base) * u128::from(percent) / 100) as u64 / PAGE * PAGE
}

/// The node-safe bound: what a fault's fills hold together (in every target) must stay
/// within `max_percent` of the node's MemAvailable. A target's own limit keeps a fill off
/// the node only when it is itself below that share, and then the fill (never above the
/// limit) passes; every other fill is refused here rather than shrunk, so a fault is what
/// was asked for or nothing. `request` describes the request for the message.
pub fn check_node_safe(
    total_bytes: u64,
    available: u64,
    max_percent: u32,
    request: &str,
) -> Result<(), AgentError> {
    let allowed = (u128::from(available) * u128::from(max_percent) / 100) as u64;
    if total_bytes <= allowed {
        return Ok(());
    }
    Err(AgentError::FailedPrecondition(format!(
        "memory: {request} would hold {total_bytes} bytes, more than {max_percent} % of the \
         node's MemAvailable ({available} bytes, so at most {allowed} bytes), and no memory \
         limit of the target keeps it below that; ask for less, or start the agent with a \
         higher --max-memory-fill-percent-of-available"
    )))
}

/// The request's amount in its own terms, for messages.
fn describe_request(amount: &MemoryAmount) -> String {
    match amount {
        MemoryAmount::Bytes(bytes) => format!("memory.size_bytes {bytes}"),
        MemoryAmount::PercentOfLimit(percent) => format!("memory.percent {percent}"),
    }
}

/// The node's memory, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMemory {
    /// `MemTotal`: what a percent of node memory is of.
    pub total: u64,
    /// `MemAvailable`: what the node can give without swapping (the kernel's estimate).
    pub available: u64,
}

/// `MemTotal` and `MemAvailable` of a meminfo text, in bytes.
pub fn parse_meminfo(meminfo: &str) -> Option<NodeMemory> {
    let kib_of = |key: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.split(':').next() == Some(key))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(NodeMemory {
        total: kib_of("MemTotal")?,
        available: kib_of("MemAvailable")?,
    })
}

fn node_memory(proc_root: &Path) -> Result<NodeMemory, AgentError> {
    let file = proc_root.join("meminfo");
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| parse_meminfo(&text))
        .ok_or_else(|| {
            AgentError::Internal(format!(
                "cannot read MemTotal and MemAvailable from {}",
                file.display()
            ))
        })
}

/// The arguments of `chaos-agent stress` for one memory stressor.
pub fn stressor_args(bytes: u64, ramp: Duration, duration: Duration) -> Vec<OsString> {
    vec![
        "memory".into(),
        "--bytes".into(),
        bytes.to_string().into(),
        "--ramp-ms".into(),
        ramp.as_millis().to_string().into(),
        "--duration-ms".into(),
        duration.as_millis().to_string().into(),
    ]
}

impl std::fmt::Debug for MemoryFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Metrics holds the whole Prometheus registry: leave it out.
        f.debug_struct("MemoryFault")
            .field("plan", &self.plan)
            .field("targets", &self.targets)
            .field("stressors", &self.stressors)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl MemoryFault {
    /// Decides how much each target gets from its own limit and checks the node can spare
    /// it; touches nothing.
    pub fn prepare(
        plan: &MemoryPlan,
        cgroups: &CgroupFs,
        proc_root: &Path,
        metrics: &Metrics,
        targets: &[Resolved],
        duration: Duration,
    ) -> Result<MemoryFault, AgentError> {
        let node = node_memory(proc_root)?;
        let mut memory_targets = Vec::with_capacity(targets.len());
        let mut first_limit = None;
        for target in targets {
            let limit = cgroups
                .effective_memory_limit(&target.cgroup)
                .map_err(|e| {
                    AgentError::FailedPrecondition(format!(
                        "cannot read the memory limit of {}: {e}",
                        target.canonical()
                    ))
                })?;
            let bytes = bytes_to_hold(
                &plan.amount,
                limit.as_ref(),
                node.total,
                plan.allow_node_memory,
                &target.canonical(),
            )?;
            first_limit.get_or_insert(limit.map(|l| l.bytes));
            memory_targets.push(MemoryTarget {
                cgroup: target.cgroup.clone(),
                what: target.canonical(),
                bytes,
                oom_baseline: None,
                oom_seen: 0,
            });
        }
        let total: u64 = memory_targets.iter().map(|t| t.bytes).sum();
        check_node_safe(
            total,
            node.available,
            plan.max_percent_of_available,
            &describe_request(&plan.amount),
        )?;
        Ok(MemoryFault {
            plan: plan.clone(),
            cgroups: cgroups.clone(),
            metrics: metrics.clone(),
            duration,
            status: api::MemoryStatus {
                requested_bytes: memory_targets.first().map_or(0, |t| t.bytes),
                limit_bytes: first_limit.flatten().unwrap_or(0),
                ..Default::default()
            },
            targets: memory_targets,
            stressors: Vec::new(),
            watch: TargetWatch::default(),
        })
    }

    pub fn summary(&self) -> String {
        format!(
            "would hold {} bytes in each of {} target(s) (ramp {} ms)",
            self.status.requested_bytes,
            self.targets.len(),
            self.plan.ramp.as_millis()
        )
    }

    /// Reads usage, resident memory and OOM kills; new OOM kills are logged and counted.
    pub fn measure(&mut self) {
        let mut usage = 0u64;
        let mut oom_total = 0u64;
        for target in &mut self.targets {
            usage += self.cgroups.memory_usage(&target.cgroup).unwrap_or(0);
            let (Some(baseline), Ok(now)) =
                (target.oom_baseline, self.cgroups.oom_kills(&target.cgroup))
            else {
                oom_total += target.oom_seen;
                continue;
            };
            let during = now.saturating_sub(baseline);
            if during > target.oom_seen {
                let new = during - target.oom_seen;
                tracing::warn!(
                    target = %target.what,
                    new,
                    total = during,
                    "OOM kills in the target cgroup during a memory fault"
                );
                self.metrics.oom_killed("memory", new);
                target.oom_seen = during;
            }
            oom_total += target.oom_seen;
        }
        self.status.cgroup_usage_bytes = usage;
        self.status.oom_kills = oom_total;
        self.status.held_bytes = self
            .stressors
            .iter()
            .filter_map(|s| stressor::resident_anon_bytes(s.pid()))
            .sum();
        self.status.stressors_running = self
            .stressors
            .iter_mut()
            .filter_map(|s| s.is_running().then_some(()))
            .count() as u32;
    }
}

impl Fault for MemoryFault {
    fn kind(&self) -> api::FaultKind {
        api::FaultKind::Memory
    }

    /// Records the OOM baseline, then starts every stressor (all or none).
    fn apply<'a>(
        &'a mut self,
        _procfs: &'a Procfs,
        _acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            for target in &mut self.targets {
                target.oom_baseline = self.cgroups.oom_kills(&target.cgroup).ok();
            }
            let requests = self
                .targets
                .iter()
                .map(|t| StressorRequest {
                    args: stressor_args(t.bytes, self.plan.ramp, self.duration),
                    cgroup: t.cgroup.clone(),
                    cgroups: self.cgroups.clone(),
                })
                .collect();
            self.stressors = stressor::spawn_all(requests).await?;
            self.measure();
            Ok(())
        })
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
        TickOutcome::Continue
    }

    fn target_watch(&self) -> Option<&TargetWatch> {
        Some(&self.watch)
    }

    fn revert<'a>(&'a mut self, _procfs: &'a Procfs) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            // A last look: an OOM kill in the final moments still counts.
            self.measure();
            let result = stressor::kill_all(&mut self.stressors).await;
            self.status.held_bytes = 0;
            self.status.stressors_running = 0;
            result
        })
    }

    fn undo(&self) -> UndoRecord {
        stressor::undo_record(&self.stressors)
    }

    fn status(&self) -> api::fault::Status {
        api::fault::Status::Memory(self.status)
    }

    /// One thread per stressor.
    fn stressor_threads_per_target(&self) -> u32 {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn limit(bytes: u64) -> MemoryLimit {
        MemoryLimit {
            bytes,
            set_by: "/kubepods/pod1".into(),
            file: "memory.max",
        }
    }

    fn refused_field(result: Result<u64, AgentError>) -> (&'static str, String) {
        match result {
            Err(AgentError::InvalidArgument { field, reason }) => (field, reason),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn percent_is_of_the_limit_or_of_node_memory_when_asked() {
        let hold = |amount, limit_bytes: Option<u64>, allow| {
            bytes_to_hold(
                &amount,
                limit_bytes.map(limit).as_ref(),
                4 * GIB,
                allow,
                "ctr",
            )
        };
        assert_eq!(
            hold(MemoryAmount::PercentOfLimit(50), Some(512 * MIB), false).unwrap(),
            256 * MIB
        );
        assert_eq!(
            hold(MemoryAmount::PercentOfLimit(25), None, true).unwrap(),
            GIB
        );
        // Rounded down to whole pages.
        assert_eq!(
            hold(MemoryAmount::PercentOfLimit(1), Some(1_000_000), false).unwrap(),
            8192
        );
        let (field, reason) =
            refused_field(hold(MemoryAmount::PercentOfLimit(1), Some(4096), false));
        assert_eq!(field, "memory.percent");
        assert!(reason.contains("less than one page"), "{reason}");
    }

    #[test]
    fn a_percent_of_an_unlimited_container_needs_allow_node_memory() {
        let (field, reason) = refused_field(bytes_to_hold(
            &MemoryAmount::PercentOfLimit(10),
            None,
            4 * GIB,
            false,
            "container:db",
        ));
        assert_eq!(field, "memory.percent");
        assert!(
            reason.contains("container:db has no memory limit"),
            "{reason}"
        );
        assert!(reason.contains("allow_node_memory"), "{reason}");
        assert!(reason.contains(&(4 * GIB).to_string()), "{reason}");
    }

    #[test]
    fn a_size_is_held_up_to_the_effective_limit_and_refused_above_it() {
        let pod = limit(256 * MIB);
        let hold =
            |bytes| bytes_to_hold(&MemoryAmount::Bytes(bytes), Some(&pod), GIB, false, "ctr");
        assert_eq!(hold(1234).unwrap(), 1234);
        // Exactly the limit is allowed: the container is pushed to it, and the stressor is
        // the one the OOM killer takes when the workload needs more.
        assert_eq!(hold(256 * MIB).unwrap(), 256 * MIB);
        let (field, reason) = refused_field(hold(256 * MIB + 1));
        assert_eq!(field, "memory.size_bytes");
        assert!(
            reason.contains("268435457 bytes is more than ctr may use"),
            "{reason}"
        );
        assert!(
            reason.contains("268435456 bytes (memory.max of /kubepods/pod1)"),
            "{reason}"
        );
        // Without a limit a size is a size (the node-safe bound is checked apart).
        assert_eq!(
            bytes_to_hold(&MemoryAmount::Bytes(3 * GIB), None, GIB, false, "ctr").unwrap(),
            3 * GIB
        );
    }

    #[test]
    fn fills_beyond_the_share_of_mem_available_are_refused_not_shrunk() {
        let available = 8 * GIB;
        assert!(check_node_safe(4 * GIB, available, 50, "memory.size_bytes 1").is_ok());
        assert!(check_node_safe(0, 0, 50, "x").is_ok());
        match check_node_safe(4 * GIB + 1, available, 50, "memory.percent 80") {
            Err(AgentError::FailedPrecondition(message)) => {
                for part in [
                    "memory.percent 80",
                    "4294967297 bytes",
                    "50 % of the node's MemAvailable (8589934592 bytes, so at most 4294967296 bytes)",
                    "--max-memory-fill-percent-of-available",
                ] {
                    assert!(message.contains(part), "{part:?} not in {message}");
                }
            }
            other => panic!("{other:?}"),
        }
        // The flag moves the bound.
        assert!(check_node_safe(6 * GIB, available, 75, "x").is_ok());
        assert!(check_node_safe(GIB, available, 10, "x").is_err());
    }

    #[test]
    fn meminfo_gives_total_and_available() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(NodeMemory {
                total: 24_576_000 * 1024,
                available: 20_000_000 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\nMemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemAvailable: 1 kB\n"), None);
        // The real file has both.
        let real = std::fs::read_to_string("/proc/meminfo").unwrap();
        let node = parse_meminfo(&real).unwrap();
        assert!(
            node.available > 0 && node.available <= node.total,
            "{node:?}"
        );
    }

    #[test]
    fn stressor_arguments_carry_size_ramp_and_duration() {
        let args = stressor_args(256 << 20, Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(
            args,
            [
                "memory",
                "--bytes",
                "268435456",
                "--ramp-ms",
                "10000",
                "--duration-ms",
                "60000"
            ]
            .map(OsString::from)
        );
    }
}
