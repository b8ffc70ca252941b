//! The memory fault: one stressor process per target cgroup, running the agent's own
//! `stress memory` subcommand inside the target's cgroup, so the memory it makes resident
//! is charged to the container and bounded by its limit. The status reads the cgroup's
//! usage and OOM-kill counter, and the stressors' resident memory.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use chaos_cgroup::{CgroupFs, ProcessCgroup};
use chaos_proto::api;

use crate::error::AgentError;
use crate::journal::Undo;
use crate::metrics::Metrics;
use crate::resolve::Resolved;
use crate::stressor::{self, Stressor, StressorRequest};
use crate::validate::{MemoryAmount, MemoryPlan};

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
}

/// Bytes to hold: the size asked for, or a percentage of the limit (of node memory when
/// the cgroup is unlimited), rounded down to whole pages.
pub fn bytes_to_hold(amount: &MemoryAmount, limit: Option<u64>, node_memory: u64) -> u64 {
    const PAGE: u64 = 4096;
    match amount {
        MemoryAmount::Bytes(bytes) => *bytes,
        MemoryAmount::PercentOfLimit(percent) => {
            let base = limit.unwrap_or(node_memory);
            (u128::from(base) * u128::from(*percent) / 100) as u64 / PAGE * PAGE
        }
    }
}

/// `MemTotal` of a meminfo text, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn node_memory(proc_root: &Path) -> Result<u64, AgentError> {
    let file = proc_root.join("meminfo");
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| parse_mem_total(&text))
        .ok_or_else(|| {
            AgentError::Internal(format!("cannot read MemTotal from {}", file.display()))
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
    /// Decides how much each target gets from its own limit; touches nothing.
    pub fn prepare(
        plan: &MemoryPlan,
        cgroups: &CgroupFs,
        proc_root: &Path,
        metrics: &Metrics,
        targets: &[Resolved],
        duration: Duration,
    ) -> Result<MemoryFault, AgentError> {
        let mut memory_targets = Vec::with_capacity(targets.len());
        let mut first_limit = None;
        for target in targets {
            let limit = cgroups.memory_limit(&target.cgroup).map_err(|e| {
                AgentError::FailedPrecondition(format!(
                    "cannot read the memory limit of {}: {e}",
                    target.canonical()
                ))
            })?;
            let node = match (&plan.amount, limit) {
                (MemoryAmount::PercentOfLimit(_), None) => node_memory(proc_root)?,
                _ => 0,
            };
            let bytes = bytes_to_hold(&plan.amount, limit, node);
            if bytes == 0 {
                return Err(AgentError::invalid(
                    "memory.percent",
                    format!("is less than one page of {}", target.canonical()),
                ));
            }
            first_limit.get_or_insert(limit);
            memory_targets.push(MemoryTarget {
                cgroup: target.cgroup.clone(),
                what: target.canonical(),
                bytes,
                oom_baseline: None,
                oom_seen: 0,
            });
        }
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

    /// Records the OOM baseline, then starts every stressor (all or none).
    pub async fn apply(&mut self) -> Result<(), AgentError> {
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

    pub async fn revert(&mut self) -> Result<(), String> {
        // A last look: an OOM kill in the final moments still counts.
        self.measure();
        let result = stressor::kill_all(&mut self.stressors).await;
        self.status.held_bytes = 0;
        self.status.stressors_running = 0;
        result
    }

    pub fn undo(&self) -> Undo {
        Undo::KillProcesses {
            processes: stressor::identities(&self.stressors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_of_the_limit_or_of_node_memory() {
        let gib = 1u64 << 30;
        assert_eq!(
            bytes_to_hold(&MemoryAmount::PercentOfLimit(50), Some(512 << 20), gib),
            256 << 20
        );
        assert_eq!(
            bytes_to_hold(&MemoryAmount::PercentOfLimit(25), None, 4 * gib),
            gib
        );
        assert_eq!(
            bytes_to_hold(&MemoryAmount::Bytes(1234), Some(4096), gib),
            1234
        );
        // Rounded down to whole pages.
        assert_eq!(
            bytes_to_hold(&MemoryAmount::PercentOfLimit(1), Some(1_000_000), gib),
            8192
        );
    }

    #[test]
    fn mem_total_from_meminfo() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_576_000 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
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
