//! What a fault really did, beside what was asked: the agent's own measurements (its
//! status, read back just before the revert), and whether the fault took effect at all.
//! A CPU fill on a container already above its level adds nothing; a kill that matched
//! no process signals nobody; the report says so instead of counting them as faults.

use chaos_proto::api;

use crate::cli::output::summary;

/// Below this share of its limit a stressor did nothing worth the name.
const NEGLIGIBLE_PERCENT: f64 = 2.0;

/// What the fault did, and why it did not take effect when it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Achieved {
    pub summary: String,
    pub no_effect: Option<String>,
}

pub fn assess(fault: &api::Fault) -> Achieved {
    Achieved {
        summary: summary(fault),
        no_effect: no_effect(fault),
    }
}

fn no_effect(fault: &api::Fault) -> Option<String> {
    use api::fault::Status;
    match fault.status.as_ref()? {
        Status::Cpu(c) => cpu_no_effect(c, cpu_mode(fault)),
        Status::Memory(m) if m.held_bytes == 0 => Some("no memory held".into()),
        Status::Process(p) if !p.signalled.iter().any(|s| s.delivered) => {
            Some("no process signalled".into())
        }
        Status::Network(n) if n.installed.trim().is_empty() => {
            Some("nothing installed on the interface".into())
        }
        Status::Pause(p) if p.cgroups == 0 => Some("no cgroup frozen".into()),
        Status::IoStress(s) if s.workers_running == 0 && s.workers_written_bytes == 0 => {
            Some("no IO worker ran".into())
        }
        _ => None,
    }
}

fn cpu_mode(fault: &api::Fault) -> api::CpuMode {
    match fault.request.as_ref().and_then(|r| r.fault.as_ref()) {
        Some(api::inject_request::Fault::Cpu(cpu)) => cpu.mode(),
        _ => api::CpuMode::Unspecified,
    }
}

fn cpu_no_effect(c: &api::CpuStatus, mode: api::CpuMode) -> Option<String> {
    let fill = matches!(mode, api::CpuMode::Fill | api::CpuMode::Unspecified);
    // A fill tops the container up to its level: if what ran besides the stressors
    // already reached it, the stressors' few percent are their pacing, not load.
    let workload = c.cgroup_percent - c.stressor_percent;
    if fill && workload >= c.requested_percent - NEGLIGIBLE_PERCENT {
        return Some(format!(
            "the container already used {workload:.0} % of its CPU without the fill, at or \
             above the {:.0} % asked: the fill added nothing",
            c.requested_percent
        ));
    }
    (c.stressor_percent < NEGLIGIBLE_PERCENT).then(|| {
        format!(
            "the stressors used {:.1} % of the container's CPU",
            c.stressor_percent
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(requested: f64, cgroup: f64, stressor: f64) -> api::Fault {
        api::Fault {
            status: Some(api::fault::Status::Cpu(api::CpuStatus {
                requested_percent: requested,
                achieved_percent: cgroup,
                cgroup_percent: cgroup,
                stressor_percent: stressor,
                limit_cores: 0.5,
                workers: 1,
                stressors_running: 1,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_fill_on_a_container_above_its_level_took_no_effect() {
        let assessed = assess(&cpu(50.0, 99.0, 0.3));
        let why = assessed.no_effect.expect("flagged");
        assert!(why.contains("already used 99 %"), "{why}");
        assert!(
            assessed.summary.contains("asked 50 %"),
            "{}",
            assessed.summary
        );
        assert_eq!(assess(&cpu(50.0, 50.0, 30.0)).no_effect, None);
    }

    #[test]
    fn a_kill_that_signalled_nobody_took_no_effect() {
        let kill = |delivered: bool| api::Fault {
            status: Some(api::fault::Status::Process(api::ProcessStatus {
                signalled: vec![api::SignalledProcess {
                    pid: 7,
                    delivered,
                    ..Default::default()
                }],
                rounds: 1,
                stopped: 0,
            })),
            ..Default::default()
        };
        assert_eq!(
            assess(&kill(false)).no_effect.as_deref(),
            Some("no process signalled")
        );
        assert_eq!(assess(&kill(true)).no_effect, None);
    }

    #[test]
    fn memory_and_network_without_effect_are_flagged() {
        let memory = api::Fault {
            status: Some(api::fault::Status::Memory(api::MemoryStatus {
                requested_bytes: 1 << 30,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(assess(&memory).no_effect.as_deref(), Some("no memory held"));
        let network = api::Fault {
            status: Some(api::fault::Status::Network(api::NetworkStatus {
                interface: "eth0".into(),
                installed: String::new(),
            })),
            ..Default::default()
        };
        assert!(assess(&network).no_effect.is_some());
    }
}
