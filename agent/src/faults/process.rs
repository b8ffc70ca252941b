//! The process fault: send a signal to a target's processes, once or every interval.
//! Selecting the processes is a pure decision; delivering goes through a pidfd.

use chaos_proto::api;
use nix::sys::signal::Signal;

use crate::error::AgentError;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::sys::{SignalError, signal_process};
use crate::target::TargetSpec;
use crate::validate::ProcessPlan;

/// How many signalled processes a fault's status keeps (a long repeating fault
/// would otherwise grow without bound).
const MAX_REPORTED: usize = 256;

/// Which processes of the resolved targets the signal goes to.
///
/// With a filter: every process whose kernel name (comm) or executable name (the
/// file name of argv[0]) equals it; not a substring of the command line, which would
/// also hit every shell script that mentions the name. Without: the container's init for container and pod targets (a container
/// kill), the process for a pid target, every process for a cgroup target.
pub fn select(spec: &TargetSpec, filter: Option<&str>, targets: &[Resolved]) -> Vec<ProcessInfo> {
    let mut chosen = Vec::new();
    for target in targets {
        match filter {
            Some(name) => chosen.extend(
                target
                    .processes
                    .iter()
                    .filter(|p| p.comm == name || p.argv0_name == name)
                    .cloned(),
            ),
            None => match spec {
                TargetSpec::Cgroup(_) => chosen.extend(target.processes.iter().cloned()),
                _ => chosen.push(target.init.clone()),
            },
        }
    }
    chosen.sort_by_key(|p| p.pid);
    chosen.dedup_by_key(|p| p.pid);
    chosen
}

pub fn signal_name(signal: Signal) -> String {
    signal.as_str().trim_start_matches("SIG").to_string()
}

#[derive(Debug)]
pub struct ProcessFault {
    pub plan: ProcessPlan,
    pub status: api::ProcessStatus,
}

impl ProcessFault {
    pub fn new(plan: ProcessPlan) -> ProcessFault {
        ProcessFault {
            plan,
            status: api::ProcessStatus::default(),
        }
    }

    /// The processes a round would hit, or why there are none.
    pub fn choose(
        &self,
        spec: &TargetSpec,
        targets: &[Resolved],
    ) -> Result<Vec<ProcessInfo>, AgentError> {
        let chosen = select(spec, self.plan.process_filter.as_deref(), targets);
        if chosen.is_empty() {
            let filter = self.plan.process_filter.as_deref().unwrap_or_default();
            return Err(AgentError::FailedPrecondition(format!(
                "no process of {spec} matches `{filter}`"
            )));
        }
        Ok(chosen)
    }

    /// Signals each chosen process and records what happened. A process that exited
    /// in the meantime is reported, not an error of the fault.
    pub fn signal_round(&mut self, procfs: &Procfs, chosen: &[ProcessInfo]) -> usize {
        let now = crate::clock::unix_ms_now();
        let mut delivered = 0;
        for p in chosen {
            let result = signal_process(procfs, p.pid, p.start_time, self.plan.signal);
            let error = match &result {
                Ok(()) => String::new(),
                Err(SignalError::Gone(_)) => "already exited".into(),
                Err(e) => e.to_string(),
            };
            delivered += usize::from(result.is_ok());
            self.record(api::SignalledProcess {
                pid: p.pid,
                name: p.comm.clone(),
                signal: signal_name(self.plan.signal),
                delivered: result.is_ok(),
                error,
                at_unix_ms: now,
            });
        }
        self.status.rounds += 1;
        delivered
    }

    /// Records a round that found nothing to signal (e.g. a container restarting).
    pub fn record_empty_round(&mut self, reason: &str) {
        self.status.rounds += 1;
        self.record(api::SignalledProcess {
            pid: 0,
            name: String::new(),
            signal: signal_name(self.plan.signal),
            delivered: false,
            error: reason.to_string(),
            at_unix_ms: crate::clock::unix_ms_now(),
        });
    }

    fn record(&mut self, entry: api::SignalledProcess) {
        if self.status.signalled.len() >= MAX_REPORTED {
            self.status.signalled.remove(0);
        }
        self.status.signalled.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_cgroup::ProcessCgroup;
    use std::collections::BTreeMap;

    fn p(pid: u32, ppid: u32, comm: &str, cmdline: &str) -> ProcessInfo {
        let argv0 = cmdline.split(' ').next().unwrap_or_default();
        ProcessInfo {
            pid,
            ppid,
            comm: comm.into(),
            cmdline: cmdline.into(),
            argv0_name: argv0.rsplit('/').next().unwrap_or_default().into(),
            start_time: pid as u64,
        }
    }

    fn container() -> Resolved {
        Resolved {
            spec: TargetSpec::Container("c1".into()),
            owner: crate::resolve::Owner::Node,
            init: p(10, 1, "sh", "/bin/sh -c run postgres; sleep 1"),
            processes: vec![
                p(10, 1, "sh", "/bin/sh -c run postgres; sleep 1"),
                p(
                    11,
                    10,
                    "postgres",
                    "/usr/lib/postgresql/bin/postgres -D /data",
                ),
                p(12, 11, "postgres", "postgres: checkpointer"),
                p(13, 10, "sleep", "sleep 100"),
                p(14, 10, "java", "/usr/bin/java -jar app.jar"),
            ],
            cgroup: ProcessCgroup {
                unified: Some("/c1".into()),
                v1: BTreeMap::new(),
            },
        }
    }

    fn pids(v: Vec<ProcessInfo>) -> Vec<u32> {
        v.into_iter().map(|p| p.pid).collect()
    }

    #[test]
    fn a_container_kill_hits_the_init_only() {
        let spec = TargetSpec::Container("c1".into());
        assert_eq!(pids(select(&spec, None, &[container()])), [10]);
    }

    #[test]
    fn a_filter_matches_the_process_name_not_a_mention_in_a_script() {
        let spec = TargetSpec::Container("c1".into());
        // The shell whose script mentions postgres and sleep is not hit.
        assert_eq!(
            pids(select(&spec, Some("postgres"), &[container()])),
            [11, 12]
        );
        assert_eq!(pids(select(&spec, Some("sleep"), &[container()])), [13]);
        assert_eq!(pids(select(&spec, Some("java"), &[container()])), [14]);
        assert!(select(&spec, Some("app.jar"), &[container()]).is_empty());
        assert!(select(&spec, Some("redis"), &[container()]).is_empty());
    }

    #[test]
    fn a_cgroup_target_without_filter_hits_every_process() {
        let spec = TargetSpec::Cgroup("/c1".into());
        assert_eq!(
            pids(select(&spec, None, &[container()])),
            [10, 11, 12, 13, 14]
        );
    }

    #[test]
    fn no_match_is_a_failed_precondition() {
        let fault = ProcessFault::new(ProcessPlan {
            signal: Signal::SIGKILL,
            process_filter: Some("redis".into()),
            interval: None,
        });
        let spec = TargetSpec::Container("c1".into());
        assert!(matches!(
            fault.choose(&spec, &[container()]),
            Err(AgentError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn status_keeps_a_bounded_history() {
        let mut fault = ProcessFault::new(ProcessPlan {
            signal: Signal::SIGTERM,
            process_filter: None,
            interval: None,
        });
        for _ in 0..(MAX_REPORTED + 10) {
            fault.record_empty_round("restarting");
        }
        assert_eq!(fault.status.signalled.len(), MAX_REPORTED);
        assert_eq!(fault.status.rounds as usize, MAX_REPORTED + 10);
        assert_eq!(fault.status.signalled[0].signal, "TERM");
    }
}
