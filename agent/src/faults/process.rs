//! The process fault: send a signal to a target's processes, once or every interval,
//! or stop them (SIGSTOP and the other stop signals) until the fault ends. Selecting the
//! processes is a pure decision; delivering goes through a pidfd, checked against the
//! process's start time so a reused pid is never hit.

use chaos_proto::api;
use nix::sys::signal::Signal;

use futures::future::BoxFuture;

use crate::error::AgentError;
use crate::faults::{Fault, KindInfo, PrepareContext, Prepared, TickNeeds, TickOutcome};
use crate::journal::UndoRecord;
use crate::procfs::{ProcessIdentity, ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::sys::{PinnedProcess, SignalError, signal_each, signal_process};
use crate::target::TargetSpec;
use crate::validate::{ProcessPlan, is_stop_signal, signal_name};

pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::Process,
    capabilities: &[(
        crate::capabilities::Capability::Kill,
        "to signal processes that run as another user",
    )],
    replay,
    node_lacks: crate::faults::lacks_nothing,
};

/// Chooses the processes a process fault acts on first; touches nothing.
pub fn prepare(
    plan: &ProcessPlan,
    spec: &TargetSpec,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let (fault, chosen) =
        ProcessFault::prepare(plan.clone(), spec, targets, &context.resolver.procfs)?;
    let verb = if fault.holds_stop() {
        "stop (until the fault ends)"
    } else {
        "signal"
    };
    Ok(Prepared {
        plan_summary: format!("would {verb} {} process(es)", chosen.len()),
        acts_on: chosen,
        fault: Box::new(fault),
    })
}

/// How long an inject waits for a stopped process to show as stopped (it stops when it
/// next runs, which a loaded node or a slow VM can delay).
const STOP_READ_BACK: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a stop fault reads back whether its processes are still stopped.
pub const STOP_STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

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

#[derive(Debug)]
pub struct ProcessFault {
    pub plan: ProcessPlan,
    pub status: api::ProcessStatus,
    /// For a `pid:` target, the process seen at inject, held by a pidfd. Its pid may name
    /// another process once it has exited (even within the same clock tick, which a start
    /// time cannot tell apart), so it is never resolved again: a repeating fault signals
    /// only this process and ends when it is gone.
    pinned: Option<(PinnedProcess, ProcessInfo)>,
    /// A stop signal holds its processes stopped until the fault ends, when each one that
    /// is still the same process is continued (SIGCONT). Known before apply, so the
    /// journal lists them before any is stopped.
    stopped: Vec<ProcessIdentity>,
}

fn identity(p: &ProcessInfo) -> ProcessIdentity {
    ProcessIdentity {
        pid: p.pid,
        start_time: p.start_time,
    }
}

impl ProcessFault {
    /// Chooses the processes of the first round. `spec` decides whether the target is
    /// pinned (a pid names one process, never its successor).
    pub fn prepare(
        plan: ProcessPlan,
        spec: &TargetSpec,
        targets: &[Resolved],
        procfs: &Procfs,
    ) -> Result<(ProcessFault, Vec<ProcessInfo>), AgentError> {
        let mut fault = ProcessFault {
            plan,
            status: api::ProcessStatus::default(),
            pinned: None,
            stopped: Vec::new(),
        };
        let chosen = fault.choose(spec, targets)?;
        if let (TargetSpec::Pid(_), Some(target)) = (spec, targets.first())
            && fault.plan.interval.is_some()
        {
            let held = PinnedProcess::open(procfs, target.init.pid, target.init.start_time)
                .map_err(|e| AgentError::NotFound(format!("pid {}: {e}", target.init.pid)))?;
            fault.pinned = Some((held, target.init.clone()));
        }
        if is_stop_signal(fault.plan.signal) {
            fault.stopped = chosen.iter().map(identity).collect();
        }
        Ok((fault, chosen))
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

    /// True while the fault holds processes stopped (a stop signal).
    pub fn holds_stop(&self) -> bool {
        is_stop_signal(self.plan.signal)
    }

    pub fn pinned(&self) -> Option<ProcessIdentity> {
        self.pinned.as_ref().map(|(_, info)| identity(info))
    }

    /// A round of a repeating fault on its pinned process; Err (why) once it is gone.
    pub fn pinned_round(&mut self) -> Result<(), String> {
        let Some((held, info)) = &self.pinned else {
            return Ok(());
        };
        let result = held.signal(self.plan.signal);
        let (pid, name) = (info.pid, info.comm.clone());
        let error = match &result {
            Ok(()) => String::new(),
            Err(SignalError::Gone(_)) => {
                return Err(format!(
                    "the target process {pid} has exited: nothing is left to signal"
                ));
            }
            Err(e) => e.to_string(),
        };
        self.record(api::SignalledProcess {
            pid,
            name,
            signal: signal_name(self.plan.signal),
            delivered: result.is_ok(),
            error,
            at_unix_ms: crate::clock::unix_ms_now(),
        });
        self.status.rounds += 1;
        Ok(())
    }

    /// The first round. A stop is read back: every chosen process must show as stopped
    /// (the kernel discards TSTP, TTIN and TTOU for an orphaned process group, and a
    /// process may handle them), else the ones stopped are continued and the inject
    /// fails: stopped completely or not at all.
    pub async fn first_round(
        &mut self,
        procfs: &Procfs,
        chosen: &[ProcessInfo],
    ) -> Result<(), AgentError> {
        let mut failures = self.signal_round(procfs, chosen);
        if !self.holds_stop() {
            return Ok(());
        }
        if failures.is_empty() {
            let not_stopped = self.wait_until_stopped(procfs).await;
            if !not_stopped.is_empty() {
                failures.push(format!(
                    "{} did not stop on {} (a process may handle it, and the kernel discards TSTP, TTIN and TTOU for an orphaned process group; SIGSTOP always stops)",
                    not_stopped
                        .iter()
                        .map(|p| format!("pid {p}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    signal_name(self.plan.signal)
                ));
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        let undone = self.continue_stopped(procfs);
        let mut message = format!("cannot stop every chosen process: {}", failures.join("; "));
        if let Err(e) = undone {
            message += &format!("; continuing the ones already stopped failed too: {e}");
        }
        Err(AgentError::FailedPrecondition(message))
    }

    /// Waits (bounded) until every process the stop reached shows as stopped; returns
    /// the pids that did not.
    async fn wait_until_stopped(&mut self, procfs: &Procfs) -> Vec<u32> {
        let give_up = tokio::time::Instant::now() + STOP_READ_BACK;
        loop {
            let not_stopped: Vec<u32> = self
                .stopped
                .iter()
                .filter(|p| !is_stopped(procfs, p))
                .map(|p| p.pid)
                .collect();
            if not_stopped.is_empty() || tokio::time::Instant::now() >= give_up {
                self.measure_stopped(procfs);
                return not_stopped;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Signals each chosen process and records what happened; returns the deliveries
    /// that failed for another reason than the process having exited meanwhile.
    pub fn signal_round(&mut self, procfs: &Procfs, chosen: &[ProcessInfo]) -> Vec<String> {
        let now = crate::clock::unix_ms_now();
        let mut failures = Vec::new();
        for p in chosen {
            let result = signal_process(procfs, p.pid, p.start_time, self.plan.signal);
            let error = match &result {
                Ok(()) => String::new(),
                Err(SignalError::Gone(_) | SignalError::Reused(_)) => {
                    // Nothing to continue later: that process is not there any more.
                    self.stopped.retain(|s| *s != identity(p));
                    "already exited".into()
                }
                Err(e) => {
                    failures.push(e.to_string());
                    e.to_string()
                }
            };
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
        failures
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

    /// Reads back how many of the stopped processes the kernel shows stopped now.
    pub fn measure_stopped(&mut self, procfs: &Procfs) {
        self.status.stopped = self
            .stopped
            .iter()
            .filter(|p| is_stopped(procfs, p))
            .count() as u32;
    }

    /// SIGCONT to every process this fault stopped that is still the same process.
    pub fn continue_stopped(&mut self, procfs: &Procfs) -> Result<(), String> {
        let result = continue_processes(procfs, &self.stopped);
        if result.is_ok() {
            self.stopped.clear();
            self.status.stopped = 0;
        }
        result
    }

    /// Whether processes this fault stopped may still be stopped (a failed rollback).
    pub fn holds_stopped(&self) -> bool {
        self.holds_stop() && !self.stopped.is_empty()
    }

    /// What the journal must hold to undo this fault after a crash.
    pub fn undo_form(&self) -> ProcessUndo {
        if self.holds_stop() {
            ProcessUndo::ContinueProcesses {
                processes: self.stopped.clone(),
            }
        } else {
            ProcessUndo::Nothing
        }
    }

    fn record(&mut self, entry: api::SignalledProcess) {
        if self.status.signalled.len() >= MAX_REPORTED {
            self.status.signalled.remove(0);
        }
        self.status.signalled.push(entry);
    }
}

impl Fault for ProcessFault {
    fn kind(&self) -> api::FaultKind {
        api::FaultKind::Process
    }

    fn apply<'a>(
        &'a mut self,
        procfs: &'a Procfs,
        acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(self.first_round(procfs, acts_on))
    }

    fn holds_changes(&self) -> bool {
        self.holds_stopped()
    }

    /// A single signal that leaves nothing to hold: done once sent.
    fn is_one_shot(&self) -> bool {
        self.plan.interval.is_none() && !self.holds_stop()
    }

    /// A held stop is read back every round; a repeating signal goes out every interval.
    fn tick_interval(&self) -> Option<std::time::Duration> {
        if self.holds_stop() {
            Some(STOP_STATUS_INTERVAL)
        } else {
            self.plan.interval
        }
    }

    /// A repeating signal to a container finds its processes again every round (a
    /// restarted container has a new init); a pinned process is held by its pidfd.
    fn tick_needs(&self) -> TickNeeds {
        if self.plan.interval.is_some() && self.pinned.is_none() {
            TickNeeds::ChosenProcesses
        } else {
            TickNeeds::Nothing
        }
    }

    fn tick(
        &mut self,
        procfs: &Procfs,
        chosen: Option<Result<Vec<ProcessInfo>, String>>,
    ) -> TickOutcome {
        if self.holds_stop() {
            self.measure_stopped(procfs);
            // Held until the deadline otherwise, listed as active, holding nothing.
            if !self.stopped.is_empty() && self.stopped.iter().all(|p| is_gone(procfs, p)) {
                return TickOutcome::Ended(
                    "every process the stop held has exited: nothing is left to continue".into(),
                );
            }
            return TickOutcome::Continue;
        }
        match (self.pinned.is_some(), chosen) {
            (true, _) => {
                if let Err(why) = self.pinned_round() {
                    return TickOutcome::Ended(why);
                }
            }
            (false, Some(Ok(processes))) => {
                self.signal_round(procfs, &processes);
            }
            (false, Some(Err(reason))) => self.record_empty_round(&reason),
            (false, None) => {}
        }
        TickOutcome::Continue
    }

    fn revert<'a>(&'a mut self, procfs: &'a Procfs) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.continue_stopped(procfs) })
    }

    fn undo(&self) -> UndoRecord {
        UndoRecord::of(&self.undo_form())
    }

    fn status(&self) -> api::fault::Status {
        api::fault::Status::Process(self.status.clone())
    }
}

/// The journal's form for a process fault. Tagged as every undo form is (see
/// `journal::UndoRecord`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ProcessUndo {
    /// A signal that was sent holds nothing on the node: ending the fault is its revert.
    Nothing,
    /// Processes a stop signal stopped: continue them (SIGCONT), if still the same.
    ContinueProcesses { processes: Vec<ProcessIdentity> },
}

/// Puts back what a journal record of a process fault lists, after a crash.
pub fn replay(procfs: &Procfs, record: &UndoRecord) -> Result<(), String> {
    match record.read()? {
        ProcessUndo::Nothing => Ok(()),
        ProcessUndo::ContinueProcesses { processes } => continue_processes(procfs, &processes),
    }
}

/// Whether the process identified has exited (its pid gone, or now another process's).
fn is_gone(procfs: &Procfs, process: &ProcessIdentity) -> bool {
    procfs
        .stat(process.pid)
        .map_or(true, |stat| stat.start_time != process.start_time)
}

/// Whether the process is still the one identified and the kernel shows it stopped.
fn is_stopped(procfs: &Procfs, process: &ProcessIdentity) -> bool {
    procfs
        .stat(process.pid)
        .is_ok_and(|stat| stat.start_time == process.start_time && matches!(stat.state, 'T' | 't'))
}

/// SIGCONT to each process that is still the one identified (a pid reused by another
/// process is left alone); those that exited are done.
pub fn continue_processes(procfs: &Procfs, processes: &[ProcessIdentity]) -> Result<(), String> {
    signal_each(procfs, processes, Signal::SIGCONT)
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

    fn plan(signal: Signal, filter: Option<&str>) -> ProcessPlan {
        ProcessPlan {
            signal,
            process_filter: filter.map(str::to_string),
            interval: None,
        }
    }

    #[test]
    fn no_match_is_a_failed_precondition() {
        let spec = TargetSpec::Container("c1".into());
        assert!(matches!(
            ProcessFault::prepare(
                plan(Signal::SIGKILL, Some("redis")),
                &spec,
                &[container()],
                &Procfs::default()
            ),
            Err(AgentError::FailedPrecondition(_))
        ));
    }

    /// A real `sleep` child, resolved as a `pid:` target of the node.
    fn sleeping_child(procfs: &Procfs) -> (std::process::Child, Resolved) {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let me = ProcessInfo {
            pid,
            ppid: std::process::id(),
            comm: "sleep".into(),
            cmdline: "sleep 30".into(),
            argv0_name: "sleep".into(),
            start_time: procfs.stat(pid).unwrap().start_time,
        };
        let target = Resolved {
            spec: TargetSpec::Pid(pid),
            owner: crate::resolve::Owner::Node,
            init: me.clone(),
            processes: vec![me],
            cgroup: container().cgroup,
        };
        (child, target)
    }

    #[test]
    fn a_repeating_pid_target_is_pinned_and_a_container_target_is_not() {
        let procfs = Procfs::default();
        let (mut child, target) = sleeping_child(&procfs);
        let (pid, start_time) = (target.init.pid, target.init.start_time);
        let repeating = ProcessPlan {
            interval: Some(std::time::Duration::from_millis(100)),
            ..plan(Signal::SIGTERM, None)
        };
        let (mut fault, _) =
            ProcessFault::prepare(repeating, &TargetSpec::Pid(pid), &[target], &procfs).unwrap();
        assert_eq!(fault.pinned(), Some(ProcessIdentity { pid, start_time }));
        // A round on the pinned process; once it is gone the fault says so.
        assert_eq!(fault.pinned_round(), Ok(()));
        child.wait().unwrap();
        assert!(fault.pinned_round().unwrap_err().contains("has exited"));
        let (fault, _) = ProcessFault::prepare(
            plan(Signal::SIGTERM, None),
            &TargetSpec::Container("c1".into()),
            &[container()],
            &procfs,
        )
        .unwrap();
        assert_eq!(fault.pinned(), None);
        assert!(fault.is_one_shot());
    }

    #[test]
    fn a_stop_holds_its_processes_and_the_journal_lists_them_before_apply() {
        for signal in [
            Signal::SIGSTOP,
            Signal::SIGTSTP,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
        ] {
            let (fault, chosen) = ProcessFault::prepare(
                plan(signal, Some("postgres")),
                &TargetSpec::Container("c1".into()),
                &[container()],
                &Procfs::default(),
            )
            .unwrap();
            assert!(fault.holds_stop() && !fault.is_one_shot(), "{signal}");
            assert_eq!(pids(chosen), [11, 12]);
            assert_eq!(
                fault.undo_form(),
                ProcessUndo::ContinueProcesses {
                    processes: vec![
                        ProcessIdentity {
                            pid: 11,
                            start_time: 11
                        },
                        ProcessIdentity {
                            pid: 12,
                            start_time: 12
                        }
                    ]
                }
            );
        }
        let (kill, _) = ProcessFault::prepare(
            plan(Signal::SIGKILL, None),
            &TargetSpec::Container("c1".into()),
            &[container()],
            &Procfs::default(),
        )
        .unwrap();
        assert_eq!(kill.undo_form(), ProcessUndo::Nothing);
    }

    /// A held SIGSTOP of `target`, its first round sent, and the runtime it ran on.
    fn stopped(procfs: &Procfs, target: Resolved) -> (ProcessFault, tokio::runtime::Runtime) {
        let (mut fault, chosen) = ProcessFault::prepare(
            plan(Signal::SIGSTOP, None),
            &TargetSpec::Pid(target.init.pid),
            &[target],
            procfs,
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime
            .block_on(fault.first_round(procfs, &chosen))
            .unwrap();
        (fault, runtime)
    }

    #[test]
    fn a_stop_ends_by_itself_once_every_process_it_held_has_exited() {
        let procfs = Procfs::default();
        let (mut child, target) = sleeping_child(&procfs);
        let (mut fault, runtime) = stopped(&procfs, target);
        assert_eq!(fault.tick(&procfs, None), TickOutcome::Continue);
        assert_eq!(fault.status.stopped, 1);
        // SIGKILL ends a stopped process too; reaped, its pid is gone.
        child.kill().unwrap();
        child.wait().unwrap();
        let TickOutcome::Ended(why) = fault.tick(&procfs, None) else {
            panic!("a stop of exited processes goes on");
        };
        assert!(
            why.contains("every process the stop held has exited"),
            "{why}"
        );
        assert_eq!(fault.status.stopped, 0);
        assert_eq!(runtime.block_on(Fault::revert(&mut fault, &procfs)), Ok(()));
    }

    #[test]
    fn a_stopped_process_is_continued_and_a_reused_pid_is_left_alone() {
        let procfs = Procfs::default();
        let (mut child, target) = sleeping_child(&procfs);
        let (pid, start_time) = (target.init.pid, target.init.start_time);
        let (mut fault, _runtime) = stopped(&procfs, target);
        let state = |procfs: &Procfs| procfs.stat(pid).unwrap().state;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while state(&procfs) != 'T' && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        fault.measure_stopped(&procfs);
        assert_eq!(fault.status.stopped, 1);
        fault.continue_stopped(&procfs).unwrap();
        while state(&procfs) == 'T' && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_ne!(state(&procfs), 'T');
        // An identity whose start time does not match is another process: untouched.
        assert_eq!(
            continue_processes(
                &procfs,
                &[ProcessIdentity {
                    pid,
                    start_time: start_time + 1
                }]
            ),
            Ok(())
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn status_keeps_a_bounded_history() {
        let (mut fault, _) = ProcessFault::prepare(
            plan(Signal::SIGTERM, None),
            &TargetSpec::Container("c1".into()),
            &[container()],
            &Procfs::default(),
        )
        .unwrap();
        for _ in 0..(MAX_REPORTED + 10) {
            fault.record_empty_round("restarting");
        }
        assert_eq!(fault.status.signalled.len(), MAX_REPORTED);
        assert_eq!(fault.status.rounds as usize, MAX_REPORTED + 10);
        assert_eq!(fault.status.signalled[0].signal, "TERM");
    }
}
