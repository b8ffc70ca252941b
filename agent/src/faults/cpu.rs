//! The CPU fault: one stressor process per target cgroup, running the agent's own
//! `stress cpu` subcommand inside the target's cgroup. The stressor steers itself (its
//! feedback loop reads the cgroup's CPU accounting); the agent measures independently from
//! the same accounting for the status.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use chaos_cgroup::{CgroupFs, CpuLimit, ProcessCgroup};
use chaos_proto::api;
use chaos_stress::cpu::{CpuMode, starve_ceiling};

use futures::future::BoxFuture;

use crate::error::AgentError;
use crate::faults::target_watch::TargetWatch;
use crate::faults::{Fault, KindInfo, PrepareContext, Prepared, TickOutcome};
use crate::journal::UndoRecord;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::stressor::{self, Stressor, StressorRequest};
use crate::target::TargetSpec;
use crate::validate::CpuPlan;

/// Needs no capability: the agent (uid 0) owns the cgroup files it writes and signals
/// only its own stressors.
pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::Cpu,
    capabilities: &[],
    replay: stressor::replay,
    node_lacks: crate::faults::lacks_nothing,
};

/// Decides the CPU fault for the resolved targets; touches nothing.
pub fn prepare(
    plan: &CpuPlan,
    spec: &TargetSpec,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let mut fault = CpuFault::prepare(plan, &context.resolver.cgroups, targets, context.duration)?;
    fault.watch = TargetWatch::of(spec, targets, &context.resolver.procfs);
    Ok(Prepared {
        plan_summary: fault.summary(),
        acts_on: Vec::new(),
        fault: Box::new(fault),
    })
}

/// How often the status is measured. A second averages ten CFS periods.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// One target cgroup and what was last measured in it.
#[derive(Debug)]
struct CpuTarget {
    cgroup: ProcessCgroup,
    limit_cores: f64,
    last: Option<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cgroup_ns: u64,
    stressor_ns: u64,
}

#[derive(Debug)]
pub struct CpuFault {
    pub plan: CpuPlan,
    cgroups: CgroupFs,
    duration: Duration,
    targets: Vec<CpuTarget>,
    stressors: Vec<Stressor>,
    pub status: api::CpuStatus,
    /// The targets' inits; set by [`prepare`], empty for `cgroup:` targets.
    pub watch: TargetWatch,
}

/// The stressor's mode for the API's.
pub fn stress_mode(mode: api::CpuMode) -> CpuMode {
    match mode {
        api::CpuMode::Add => CpuMode::Add,
        api::CpuMode::Starve => CpuMode::Starve,
        api::CpuMode::Fill | api::CpuMode::Unspecified => CpuMode::Fill,
    }
}

/// The stressor's `--mode` argument.
pub fn mode_arg(mode: api::CpuMode) -> &'static str {
    stress_mode(mode).arg()
}

/// The arguments of `chaos-agent stress` for one CPU stressor.
pub fn stressor_args(plan: &CpuPlan, duration: Duration) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "cpu".into(),
        "--percent".into(),
        plan.load_percent.to_string().into(),
        "--mode".into(),
        mode_arg(plan.mode).into(),
        "--duration-ms".into(),
        duration.as_millis().to_string().into(),
    ];
    if let Some(cores) = plan.cores {
        args.push("--workers".into());
        args.push(cores.to_string().into());
    }
    args
}

/// Workers asked for (`cpu.cores`) must fit the CPUs the target may use at once: its quota
/// rounded up, or its cpuset's CPU count when it has no quota. More would only queue extra
/// threads in the target's cgroup (and on the node) without adding load to it. Starve is the
/// exception: its `cores` is a thread ceiling, and more threads than CPUs is how it wins.
pub fn check_workers(
    cores: Option<u32>,
    mode: api::CpuMode,
    limit: &CpuLimit,
    what: &str,
) -> Result<(), AgentError> {
    if mode == api::CpuMode::Starve {
        return Ok(());
    }
    let usable = limit.usable_cpus();
    match cores {
        Some(cores) if cores > usable => Err(AgentError::invalid(
            "cpu.cores",
            format!(
                "{cores} workers is more than the {usable} CPU(s) {what} may use ({})",
                describe_limit(limit)
            ),
        )),
        _ => Ok(()),
    }
}

fn describe_limit(limit: &CpuLimit) -> String {
    match limit.quota_cores {
        Some(quota) => format!(
            "a quota of {quota:.2} cores within a cpuset of {} CPUs",
            limit.cpuset_cpus
        ),
        None => format!("no quota, a cpuset of {} CPUs", limit.cpuset_cpus),
    }
}

/// Percent of `limit_cores` used between two cumulative CPU-time readings.
pub fn percent_of_limit(start_ns: u64, end_ns: u64, elapsed: Duration, limit_cores: f64) -> f64 {
    let elapsed_ns = elapsed.as_nanos() as f64;
    if elapsed_ns <= 0.0 || limit_cores <= 0.0 {
        return 0.0;
    }
    end_ns.saturating_sub(start_ns) as f64 / elapsed_ns / limit_cores * 100.0
}

impl CpuFault {
    /// Reads each target's CPU limit (what 100 % is) and checks the workers fit it; touches
    /// nothing.
    pub fn prepare(
        plan: &CpuPlan,
        cgroups: &CgroupFs,
        targets: &[Resolved],
        duration: Duration,
    ) -> Result<CpuFault, AgentError> {
        let mut cpu_targets = Vec::with_capacity(targets.len());
        for target in targets {
            let limit = cgroups.cpu_limit(&target.cgroup).map_err(|e| {
                AgentError::FailedPrecondition(format!(
                    "cannot read the CPU limit of {}: {e}",
                    target.canonical()
                ))
            })?;
            check_workers(plan.cores, plan.mode, &limit, &target.canonical())?;
            cpu_targets.push(CpuTarget {
                cgroup: target.cgroup.clone(),
                limit_cores: limit.effective_cores(),
                last: None,
            });
        }
        let limit_cores = cpu_targets.first().map_or(0.0, |t| t.limit_cores);
        Ok(CpuFault {
            plan: plan.clone(),
            cgroups: cgroups.clone(),
            duration,
            status: api::CpuStatus {
                requested_percent: f64::from(plan.load_percent),
                workers: plan.cores.unwrap_or_else(|| workers_for(plan, limit_cores)),
                limit_cores,
                ..Default::default()
            },
            targets: cpu_targets,
            stressors: Vec::new(),
            watch: TargetWatch::default(),
        })
    }

    pub fn summary(&self) -> String {
        format!(
            "would run {} CPU stressor(s) at {} % ({}) of a {:.2}-core limit",
            self.targets.len(),
            self.plan.load_percent,
            mode_arg(self.plan.mode),
            self.status.limit_cores
        )
    }

    /// Measures the cgroups' and the stressors' CPU use since the last call.
    pub fn measure(&mut self) {
        let mut cgroup_sum = 0.0;
        let mut stressor_sum = 0.0;
        let mut measured = 0usize;
        for (index, target) in self.targets.iter_mut().enumerate() {
            let Ok(cgroup_ns) = self.cgroups.cpu_usage_ns(&target.cgroup) else {
                continue; // the container stopped: nothing to report for it
            };
            let stressor_ns = self
                .stressors
                .get(index)
                .and_then(|s| stressor::process_cpu_ns(s.pid()))
                .unwrap_or(0);
            let now = Sample {
                at: Instant::now(),
                cgroup_ns,
                stressor_ns,
            };
            if let Some(last) = target.last {
                let elapsed = now.at.duration_since(last.at);
                cgroup_sum +=
                    percent_of_limit(last.cgroup_ns, cgroup_ns, elapsed, target.limit_cores);
                stressor_sum +=
                    percent_of_limit(last.stressor_ns, stressor_ns, elapsed, target.limit_cores);
                measured += 1;
            }
            target.last = Some(now);
        }
        if measured > 0 {
            self.status.cgroup_percent = cgroup_sum / measured as f64;
            self.status.stressor_percent = stressor_sum / measured as f64;
            self.status.achieved_percent = match self.plan.mode {
                api::CpuMode::Add | api::CpuMode::Starve => self.status.stressor_percent,
                api::CpuMode::Fill | api::CpuMode::Unspecified => self.status.cgroup_percent,
            };
        }
        self.status.stressors_running = self
            .stressors
            .iter_mut()
            .filter_map(|s| s.is_running().then_some(()))
            .count() as u32;
    }
}

impl Fault for CpuFault {
    fn kind(&self) -> api::FaultKind {
        api::FaultKind::Cpu
    }

    /// Starts every stressor (all or none) and takes the first measurement.
    fn apply<'a>(
        &'a mut self,
        _procfs: &'a Procfs,
        _acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            let requests = self
                .targets
                .iter()
                .map(|t| StressorRequest {
                    args: stressor_args(&self.plan, self.duration),
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
            let result = stressor::kill_all(&mut self.stressors).await;
            self.status.stressors_running = 0;
            result
        })
    }

    fn undo(&self) -> UndoRecord {
        stressor::undo_record(&self.stressors)
    }

    fn status(&self) -> api::fault::Status {
        api::fault::Status::Cpu(self.status)
    }

    fn stressor_threads_per_target(&self) -> u32 {
        self.status.workers
    }
}

/// The stressor's default worker count: enough whole cores for the target load; for
/// Starve the ceiling the stressor uses by default (it starts threads only as needed, but the
/// node's thread budget reserves them all).
fn workers_for(plan: &CpuPlan, limit_cores: f64) -> u32 {
    match plan.mode {
        api::CpuMode::Starve => u32::try_from(starve_ceiling(limit_cores)).unwrap_or(u32::MAX),
        _ => ((limit_cores * f64::from(plan.load_percent) / 100.0).ceil() as u32).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(mode: api::CpuMode, cores: Option<u32>) -> CpuPlan {
        CpuPlan {
            load_percent: 70,
            cores,
            mode,
        }
    }

    #[test]
    fn stressor_arguments_carry_load_mode_duration_and_workers() {
        let args = stressor_args(
            &plan(api::CpuMode::Unspecified, None),
            Duration::from_secs(3),
        );
        assert_eq!(
            args,
            [
                "cpu",
                "--percent",
                "70",
                "--mode",
                "fill",
                "--duration-ms",
                "3000"
            ]
            .map(OsString::from)
        );
        let args = stressor_args(&plan(api::CpuMode::Add, Some(2)), Duration::from_millis(5));
        assert_eq!(
            args,
            [
                "cpu",
                "--percent",
                "70",
                "--mode",
                "add",
                "--duration-ms",
                "5",
                "--workers",
                "2"
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn percent_of_the_limit_from_counter_deltas() {
        let second = Duration::from_secs(1);
        assert_eq!(percent_of_limit(0, 500_000_000, second, 1.0), 50.0);
        assert_eq!(percent_of_limit(0, 500_000_000, second, 0.5), 100.0);
        assert_eq!(percent_of_limit(0, 1_000_000_000, second, 2.0), 50.0);
        assert_eq!(percent_of_limit(10, 5, second, 1.0), 0.0);
        assert_eq!(percent_of_limit(0, 5, Duration::ZERO, 1.0), 0.0);
    }

    #[test]
    fn workers_beyond_the_targets_cpus_are_refused_naming_the_count() {
        let one_and_a_half = CpuLimit {
            quota_cores: Some(1.5),
            cpuset_cpus: 8,
        };
        assert!(check_workers(None, api::CpuMode::Fill, &one_and_a_half, "ctr").is_ok());
        assert!(check_workers(Some(1), api::CpuMode::Fill, &one_and_a_half, "ctr").is_ok());
        assert!(check_workers(Some(2), api::CpuMode::Fill, &one_and_a_half, "ctr").is_ok());
        match check_workers(Some(3), api::CpuMode::Fill, &one_and_a_half, "container:db") {
            Err(AgentError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "cpu.cores");
                assert!(
                    reason.starts_with("3 workers is more than the 2 CPU(s) container:db may use"),
                    "{reason}"
                );
                assert!(reason.contains("quota of 1.50 cores"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Unlimited: the cpuset counts.
        let cpuset_of_two = CpuLimit {
            quota_cores: None,
            cpuset_cpus: 2,
        };
        assert!(check_workers(Some(2), api::CpuMode::Fill, &cpuset_of_two, "ctr").is_ok());
        match check_workers(Some(3), api::CpuMode::Fill, &cpuset_of_two, "ctr") {
            Err(AgentError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "cpu.cores");
                assert!(reason.contains("the 2 CPU(s)"), "{reason}");
                assert!(reason.contains("no quota, a cpuset of 2 CPUs"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_workers_cover_the_target_cores() {
        let at = |load_percent| CpuPlan {
            load_percent,
            cores: None,
            mode: api::CpuMode::Fill,
        };
        assert_eq!(workers_for(&at(50), 1.0), 1);
        assert_eq!(workers_for(&at(80), 2.0), 2);
        assert_eq!(workers_for(&at(30), 4.0), 2);
        assert_eq!(workers_for(&at(1), 0.0), 1);
    }

    #[test]
    fn starve_reserves_its_thread_ceiling_and_may_exceed_the_cpus() {
        let starve = CpuPlan {
            load_percent: 90,
            cores: None,
            mode: api::CpuMode::Starve,
        };
        assert_eq!(workers_for(&starve, 1.0), 16);
        assert_eq!(workers_for(&starve, 1.5), 32);
        let one_cpu = CpuLimit {
            quota_cores: Some(1.0),
            cpuset_cpus: 2,
        };
        assert!(check_workers(Some(12), api::CpuMode::Starve, &one_cpu, "ctr").is_ok());
        assert!(check_workers(Some(12), api::CpuMode::Add, &one_cpu, "ctr").is_err());
    }
}
