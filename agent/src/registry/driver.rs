//! The life of one fault after its inject: periodic work raced against its deadline and
//! its stop, then the revert, retried with backoff while it fails. Runs on the faults'
//! own thread (`Registry::lifetimes`); work that may block runs on `Registry::periodic`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_proto::api;
use tokio::sync::{Notify, oneshot, watch};

use super::Registry;
use crate::clock::unix_ms_now;
use crate::faults::{self, ActiveFault, TickNeeds, TickOutcome};
use crate::journal::UndoRecord;
use crate::procfs::{ProcessInfo, Procfs};
use crate::target::TargetSpec;
use crate::validate::FaultPlan;

/// Longest a round of periodic work that may block is waited for; a round that takes
/// longer counts as empty, and the next one starts afresh.
const PERIODIC_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a fault that watches its target's init asks whether it has exited (one
/// poll(2) per init): well within the ~150 ms runc keeps retrying to remove a dead
/// container's cgroup, which a stressor still inside would keep busy (see target_watch).
const TARGET_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Requested,
    Expired,
    LeaseExpired,
    Shutdown,
    /// The fault's target (a pinned process) is gone: nothing is left to act on.
    TargetGone,
    /// Apply failed part way and could not undo all it did.
    ApplyFailed,
    /// Found in the journal of a previous run.
    Recovered,
}

impl EndReason {
    fn state(self) -> api::FaultState {
        match self {
            EndReason::Requested | EndReason::Shutdown | EndReason::ApplyFailed => {
                api::FaultState::Reverted
            }
            EndReason::Expired => api::FaultState::Expired,
            EndReason::LeaseExpired => api::FaultState::LeaseExpired,
            EndReason::TargetGone => api::FaultState::Completed,
            EndReason::Recovered => api::FaultState::Recovered,
        }
    }

    fn message(self) -> &'static str {
        match self {
            EndReason::Requested => "reverted on request",
            EndReason::Expired => "reverted at its deadline",
            EndReason::LeaseExpired => "reverted: its lease was not renewed",
            EndReason::Shutdown => "reverted: the agent is shutting down",
            EndReason::TargetGone => "ended: its target is gone",
            EndReason::ApplyFailed => "reverted after a failed apply",
            EndReason::Recovered => "reverted after the agent restarted, from the journal",
        }
    }

    fn metric_reason(self) -> &'static str {
        match self {
            EndReason::Requested | EndReason::ApplyFailed => "requested",
            EndReason::Expired => "expired",
            EndReason::LeaseExpired => "lease",
            EndReason::Shutdown => "shutdown",
            EndReason::TargetGone => "target_gone",
            EndReason::Recovered => "recovered",
        }
    }
}

/// The wait before revert attempt `attempt + 1`, after `attempt` failures: 1 s doubling
/// to a minute, so a revert that fails for good costs a few syscalls a minute.
pub fn retry_delay(attempt: u32) -> Duration {
    let seconds = 1u64 << attempt.saturating_sub(1).min(6);
    Duration::from_secs(seconds.min(60))
}

pub(super) struct Driver {
    pub id: String,
    pub spec: TargetSpec,
    pub plan: FaultPlan,
    pub fault: ActiveFault,
    pub deadline: Instant,
}

/// What puts the node back: a fault held in memory, or a journal record of a previous
/// run's fault.
pub(super) enum Reverter {
    Live(ActiveFault),
    Journaled {
        kind: api::FaultKind,
        undo: UndoRecord,
    },
}

impl Reverter {
    fn kind(&self) -> api::FaultKind {
        match self {
            Reverter::Live(fault) => fault.kind(),
            Reverter::Journaled { kind, .. } => *kind,
        }
    }

    fn status(&self) -> Option<api::fault::Status> {
        match self {
            Reverter::Live(fault) => Some(fault.status()),
            Reverter::Journaled { .. } => None,
        }
    }

    async fn revert(&mut self, procfs: &Procfs) -> Result<(), String> {
        match self {
            Reverter::Live(fault) => fault.revert(procfs).await,
            Reverter::Journaled { kind, undo } => {
                // The journal's undo is synchronous (netlink on a thread of its own):
                // keep it off the faults' thread.
                let (procfs, kind, undo) = (procfs.clone(), *kind, undo.clone());
                tokio::task::spawn_blocking(move || faults::replay(&procfs, kind, &undo))
                    .await
                    .map_err(|e| format!("the undo task failed: {e}"))?
            }
        }
    }
}

impl Registry {
    pub(super) async fn drive(
        self: Arc<Self>,
        mut driver: Driver,
        mut stop: oneshot::Receiver<EndReason>,
        done: watch::Sender<Option<api::Fault>>,
        retry_now: Arc<Notify>,
    ) {
        let interval = driver.fault.tick_interval();
        // Without periodic work the tick never fires.
        let mut next_tick =
            tokio::time::Instant::now() + interval.unwrap_or(Duration::from_secs(86_400 * 365));
        let (deadline, id) = (driver.deadline, driver.id.clone());
        let watches_target = driver.fault.watches_target();
        // Why a fault ended by itself, carried into its final message.
        let mut detail = None;
        let reason = loop {
            // The round races the deadline and the stop: a round stuck in the runtime or
            // in /proc is dropped when either comes, so it never delays them.
            let round = async {
                tokio::time::sleep_until(next_tick).await;
                self.tick(&mut driver).await
            };
            tokio::select! {
                reason = &mut stop => break reason.unwrap_or(EndReason::Requested),
                _ = tokio::time::sleep_until(deadline.into()) => break EndReason::Expired,
                // Dropping the round here is harmless: a fault that watches its target
                // (CPU, memory) has a round without an await point after its sleep.
                _ = tokio::time::sleep(TARGET_POLL), if watches_target => {
                    if let Some(why) = driver.fault.target_gone() {
                        tracing::info!(fault = %id, why, "the fault's target is gone");
                        detail = Some(why);
                        break EndReason::TargetGone;
                    }
                }
                outcome = round, if interval.is_some() => {
                    next_tick += interval.unwrap_or_default();
                    // A round that overran its interval: start the next one from now.
                    next_tick = next_tick.max(tokio::time::Instant::now());
                    if let TickOutcome::Ended(why) = outcome {
                        tracing::info!(fault = %id, why, "fault ended by itself");
                        detail = Some(why);
                        break EndReason::TargetGone;
                    }
                }
            }
        };
        let Driver { id, fault, .. } = driver;
        self.finish(&id, Reverter::Live(fault), reason, detail, done, retry_now)
            .await;
    }

    /// One round of the fault's periodic work; what may block is fetched elsewhere.
    async fn tick(self: &Arc<Self>, driver: &mut Driver) -> TickOutcome {
        let chosen = match driver.fault.tick_needs() {
            TickNeeds::Nothing => None,
            TickNeeds::ChosenProcesses => Some(self.choose_elsewhere(driver).await),
        };
        let outcome = driver.fault.tick(&self.resolver.procfs, chosen);
        let status = driver.fault.status();
        if let Some(entry) = self.lock().active.get_mut(&driver.id) {
            entry.view.status = Some(status);
        }
        outcome
    }

    /// Resolves the target again (a restarted container has a new init), applies the
    /// protection policy and chooses the processes, on the periodic runtime.
    async fn choose_elsewhere(
        self: &Arc<Self>,
        driver: &Driver,
    ) -> Result<Vec<ProcessInfo>, String> {
        let registry = Arc::clone(self);
        let (spec, plan) = (driver.spec.clone(), driver.plan.clone());
        let FaultPlan::Process(process_plan) = &plan else {
            return Err("only process faults choose processes".into());
        };
        let filter = process_plan.process_filter.clone();
        let work = self.periodic.spawn(async move {
            let targets = registry
                .resolver
                .resolve(&spec)
                .await
                .map_err(|e| e.to_string())?;
            registry
                .check_targets(&targets, &plan)
                .map_err(|e| e.to_string())?;
            let chosen = faults::process::select(&spec, filter.as_deref(), &targets);
            if chosen.is_empty() {
                return Err(format!(
                    "no process of {spec} matches `{}`",
                    filter.unwrap_or_default()
                ));
            }
            registry
                .check_processes(&chosen)
                .map_err(|e| e.to_string())?;
            Ok(chosen)
        });
        match tokio::time::timeout(PERIODIC_TIMEOUT, work).await {
            Ok(Ok(chosen)) => chosen,
            Ok(Err(e)) => Err(format!("finding the target failed: {e}")),
            Err(_) => Err(format!(
                "finding the target took longer than {PERIODIC_TIMEOUT:?} (is the runtime stuck?)"
            )),
        }
    }

    /// Reverts until it succeeds. After each failure the fault is listed as
    /// revert-pending (its journal record kept, the gauge up) and the next attempt waits
    /// a growing delay, or a `retry_now` nudge (a revert request, the drain).
    pub(super) async fn finish(
        &self,
        id: &str,
        mut reverter: Reverter,
        reason: EndReason,
        detail: Option<String>,
        done: watch::Sender<Option<api::Fault>>,
        retry_now: Arc<Notify>,
    ) {
        let kind = reverter.kind();
        let ended = match &detail {
            Some(detail) => format!("{} ({detail})", reason.message()),
            None => reason.message().to_string(),
        };
        let mut attempt: u32 = 0;
        let started = Instant::now();
        loop {
            attempt += 1;
            let started = Instant::now();
            let error = match reverter.revert(&self.resolver.procfs).await {
                Ok(()) => break,
                Err(e) => e,
            };
            self.metrics.revert_failed(kind.label());
            let wait = retry_delay(attempt);
            tracing::error!(
                fault = id,
                attempt,
                error,
                retry_in_s = wait.as_secs(),
                "revert failed; the journal record is kept and the revert retried"
            );
            let pending = {
                let mut state = self.lock();
                let Some(entry) = state.active.get_mut(id) else {
                    return;
                };
                entry.view.state = api::FaultState::RevertPending as i32;
                entry.view.message = format!(
                    "{ended}, but putting the node back failed (attempt {attempt}, {} ms): {error}; retrying in {} s",
                    started.elapsed().as_millis(),
                    wait.as_secs()
                );
                if let Some(status) = reverter.status() {
                    entry.view.status = Some(status);
                }
                entry.view.clone()
            };
            self.refresh_pending_gauge();
            let _ = done.send(Some(pending));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = retry_now.notified() => {}
            }
        }
        let reverted_at = started.elapsed();
        self.forget_journal(id, kind);
        let journaled_at = started.elapsed();
        self.metrics.reverted(kind.label(), reason.metric_reason());
        let final_view = {
            let mut state = self.lock();
            let Some(entry) = state.active.remove(id) else {
                return;
            };
            let mut view = entry.view;
            if let Some(status) = reverter.status() {
                view.status = Some(status);
            }
            view.ended_unix_ms = unix_ms_now();
            view.state = reason.state() as i32;
            view.message = if attempt > 1 {
                format!("{ended} (after {attempt} attempts)")
            } else {
                ended.clone()
            };
            for key in &entry.claims {
                if state.claims.get(key).is_some_and(|holder| holder == id) {
                    state.claims.remove(key);
                }
            }
            state.threads.remove(id);
            state.ended.push_back(view.clone());
            view
        };
        self.trim_ended();
        self.refresh_pending_gauge();
        // The overdue gauge may have to drop now.
        self.reaper_wake.notify_one();
        self.metrics.active_changed(kind.label(), -1);
        tracing::info!(fault = id, state = ?api::FaultState::try_from(final_view.state).ok(), "fault ended");
        tracing::debug!(
            fault = id,
            revert_us = reverted_at.as_micros() as u64,
            journal_us = (journaled_at - reverted_at).as_micros() as u64,
            registry_us = (started.elapsed() - journaled_at).as_micros() as u64,
            "revert phases"
        );
        let _ = done.send(Some(final_view));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_a_second_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX).as_secs(), 60);
    }

    #[test]
    fn every_end_names_its_state() {
        assert_eq!(EndReason::TargetGone.state(), api::FaultState::Completed);
        assert_eq!(EndReason::Shutdown.metric_reason(), "shutdown");
        assert_eq!(EndReason::Recovered.state(), api::FaultState::Recovered);
    }
}
