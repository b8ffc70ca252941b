//! The faults this agent holds. Every fault gets a driver task that ends it at its
//! deadline, on request, when its lease lapses or when the agent shuts down, and
//! that always runs the revert and removes the journal record.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chaos_proto::api;
use tokio::sync::{Notify, oneshot, watch};

use crate::clock::{unix_ms_after, unix_ms_now};
use crate::error::AgentError;
use crate::faults::{self, ActiveFault, PrepareContext, Prepared, kind_label};
use crate::journal::{Journal, JournalRecord};
use crate::metrics::Metrics;
use crate::procfs::ProcessInfo;
use crate::protect::ProtectionPolicy;
use crate::resolve::{Resolved, Resolver};
use crate::target::TargetSpec;
use crate::validate::{LeaseSpec, Limits, validate_inject, validate_lease};

/// Ended faults kept for `List --include-ended` and `Get`.
const ENDED_KEPT: usize = 256;
const MAX_ACTIVE: usize = 1024;
/// A fault still active this long after its deadline counts as overdue.
const OVERDUE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Requested,
    Expired,
    LeaseExpired,
    Shutdown,
}

impl EndReason {
    fn state(self) -> api::FaultState {
        match self {
            EndReason::Requested | EndReason::Shutdown => api::FaultState::Reverted,
            EndReason::Expired => api::FaultState::Expired,
            EndReason::LeaseExpired => api::FaultState::LeaseExpired,
        }
    }

    fn message(self) -> &'static str {
        match self {
            EndReason::Requested => "reverted on request",
            EndReason::Expired => "reverted at its deadline",
            EndReason::LeaseExpired => "reverted: its lease was not renewed",
            EndReason::Shutdown => "reverted: the agent is shutting down",
        }
    }

    fn metric_reason(self) -> &'static str {
        match self {
            EndReason::Requested | EndReason::Shutdown => "requested",
            EndReason::Expired => "expired",
            EndReason::LeaseExpired => "lease",
        }
    }
}

struct Entry {
    view: api::Fault,
    deadline: Instant,
    stop: Option<oneshot::Sender<EndReason>>,
    done: watch::Receiver<Option<api::Fault>>,
}

#[derive(Default)]
struct State {
    active: HashMap<String, Entry>,
    ended: VecDeque<api::Fault>,
    leases: HashMap<String, Instant>,
}

pub struct Registry {
    state: Mutex<State>,
    journal: Journal,
    metrics: Metrics,
    resolver: Resolver,
    policy: ProtectionPolicy,
    limits: Limits,
    /// Wakes the reaper when a lease or a fault appears or a fault ends, so it sleeps
    /// until the next moment that matters instead of polling.
    reaper_wake: Notify,
    /// The runtime that owns the faults' lifetimes: each fault's driver (deadline,
    /// periodic work, revert) and the lease reverts run there, apart from the requests.
    lifetimes: tokio::runtime::Handle,
}

fn new_fault_id() -> String {
    let bytes = uuid::Uuid::new_v4();
    let hex: String = bytes.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("f-{hex}")
}

impl Registry {
    pub fn new(
        journal: Journal,
        metrics: Metrics,
        resolver: Resolver,
        policy: ProtectionPolicy,
        limits: Limits,
        lifetimes: tokio::runtime::Handle,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            state: Mutex::new(State::default()),
            journal,
            metrics,
            resolver,
            policy,
            limits,
            reaper_wake: Notify::new(),
            lifetimes,
        })
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    pub fn policy(&self) -> &ProtectionPolicy {
        &self.policy
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The lock is never held across an await; a poisoned lock only means another
    /// request panicked mid-update, and the state it guards stays usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Refuses protected processes: the agent's own tree, pid 1, node daemons.
    fn check_processes(&self, processes: &[ProcessInfo]) -> Result<(), AgentError> {
        for p in processes {
            let ancestors = self.resolver.procfs.ancestors(p.pid, 64);
            self.policy.check_process(p, &ancestors)?;
        }
        Ok(())
    }

    fn check_targets(&self, targets: &[Resolved]) -> Result<(), AgentError> {
        for t in targets {
            if let Some(c) = &t.container {
                self.policy.check_pod_namespace(&c.pod_namespace)?;
            }
            self.check_processes(std::slice::from_ref(&t.init))?;
        }
        Ok(())
    }

    pub async fn inject(
        self: &Arc<Self>,
        request: api::InjectRequest,
    ) -> Result<api::Fault, AgentError> {
        let started = Instant::now();
        let kind = request_kind(&request);
        let result = self.inject_inner(request).await;
        match &result {
            Ok(view) if view.state != api::FaultState::Unspecified as i32 => {
                self.metrics.injected(kind_label(kind), started.elapsed());
            }
            Ok(_) => {}
            Err(err) => self.metrics.rejected(kind_label(kind), err.code_label()),
        }
        result
    }

    async fn inject_inner(
        self: &Arc<Self>,
        request: api::InjectRequest,
    ) -> Result<api::Fault, AgentError> {
        // Phase times go to the debug log: where an injection spends its time on a node.
        let started = Instant::now();
        let valid = validate_inject(&request, &self.limits)?;
        let targets = self.resolver.resolve(&valid.target).await?;
        self.check_targets(&targets)?;
        let resolved_at = started.elapsed();

        let context = PrepareContext {
            resolver: &self.resolver,
            metrics: &self.metrics,
            duration: valid.duration,
        };
        let prepared = ActiveFault::prepare(&valid.plan, &valid.target, &targets, &context).await?;
        // The targets' own processes were checked above (a walk up /proc each): only the
        // rest of what the fault acts on, e.g. a container's other processes.
        let unchecked: Vec<ProcessInfo> = prepared
            .acts_on
            .iter()
            .filter(|p| {
                !targets
                    .iter()
                    .any(|t| t.init.pid == p.pid && t.init.start_time == p.start_time)
            })
            .cloned()
            .collect();
        self.check_processes(&unchecked)?;
        let prepared_at = started.elapsed();
        let Prepared {
            mut fault,
            acts_on,
            plan_summary,
        } = prepared;

        let created = unix_ms_now();
        let mut view = api::Fault {
            id: String::new(),
            kind: fault.kind() as i32,
            target: valid.target.to_string(),
            targets: targets
                .iter()
                .map(|t| t.to_api(&self.resolver.procfs))
                .collect(),
            state: api::FaultState::Unspecified as i32,
            created_unix_ms: created,
            deadline_unix_ms: unix_ms_after(valid.duration),
            ended_unix_ms: 0,
            message: String::new(),
            request: Some(request.clone()),
            lease_holder: valid
                .lease
                .as_ref()
                .map(|l| l.holder.clone())
                .unwrap_or_default(),
            status: Some(fault.status()),
        };
        if valid.dry_run {
            view.message = format!("dry run: {plan_summary}; nothing changed");
            return Ok(view);
        }
        {
            let state = self.lock();
            if state.active.len() >= MAX_ACTIVE {
                return Err(AgentError::ResourceExhausted(format!(
                    "this agent already holds {MAX_ACTIVE} faults"
                )));
            }
        }

        view.id = new_fault_id();
        let record = JournalRecord {
            id: view.id.clone(),
            kind: kind_label(fault.kind()).to_string(),
            target: view.target.clone(),
            created_unix_ms: created,
            deadline_unix_ms: view.deadline_unix_ms,
            undo: fault.undo(),
        };
        // Journal first: if the agent dies after this line, its next start reverts.
        self.journal.write(&record).map_err(|e| {
            AgentError::Internal(format!(
                "cannot journal the fault, nothing was changed: {e}"
            ))
        })?;
        let journaled_at = started.elapsed();

        if let Err(err) = fault.apply(&self.resolver.procfs, &acts_on).await {
            // apply leaves nothing behind on error; the record can go.
            self.forget_journal(&view.id, fault.kind());
            return Err(err);
        }
        // Apply may have learnt what to undo (stressor pids): journal it.
        let undo = fault.undo();
        if undo != record.undo {
            let updated = JournalRecord { undo, ..record };
            if let Err(e) = self.journal.write(&updated) {
                tracing::error!(fault = %view.id, error = %e, "cannot update the journal record");
            }
        }
        view.status = Some(fault.status());
        tracing::debug!(
            fault = %view.id,
            resolve_us = resolved_at.as_micros() as u64,
            prepare_us = (prepared_at - resolved_at).as_micros() as u64,
            journal_us = (journaled_at - prepared_at).as_micros() as u64,
            apply_us = (started.elapsed() - journaled_at).as_micros() as u64,
            "injection phases"
        );

        if fault.is_one_shot() {
            // A single kill: done as soon as it is sent.
            view.state = api::FaultState::Completed as i32;
            view.ended_unix_ms = unix_ms_now();
            view.message = "signal sent".into();
            self.forget_journal(&view.id, fault.kind());
            self.lock().ended.push_back(view.clone());
            self.trim_ended();
            return Ok(view);
        }

        view.state = api::FaultState::Active as i32;
        let deadline = Instant::now() + valid.duration;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = watch::channel(None);
        {
            let mut state = self.lock();
            if let Some(lease) = &valid.lease {
                renew(&mut state, lease);
            }
            state.active.insert(
                view.id.clone(),
                Entry {
                    view: view.clone(),
                    deadline,
                    stop: Some(stop_tx),
                    done: done_rx,
                },
            );
        }
        self.reaper_wake.notify_one();
        self.metrics.active_changed(kind_label(fault.kind()), 1);
        let registry = Arc::clone(self);
        let driver = Driver {
            id: view.id.clone(),
            spec: valid.target.clone(),
            fault,
            deadline,
        };
        self.lifetimes
            .spawn(async move { registry.drive(driver, stop_rx, done_tx).await });
        Ok(view)
    }

    fn forget_journal(&self, id: &str, kind: api::FaultKind) {
        if let Err(e) = self.journal.remove(id) {
            tracing::error!(fault = id, error = %e, "cannot remove the journal record");
            self.metrics.revert_failed(kind_label(kind));
        }
    }

    fn trim_ended(&self) {
        let mut state = self.lock();
        while state.ended.len() > ENDED_KEPT {
            state.ended.pop_front();
        }
    }

    async fn drive(
        self: Arc<Self>,
        mut driver: Driver,
        mut stop: oneshot::Receiver<EndReason>,
        done: watch::Sender<Option<api::Fault>>,
    ) {
        let interval = driver.fault.tick_interval();
        // Without periodic work the tick never fires.
        let mut next_tick =
            tokio::time::Instant::now() + interval.unwrap_or(Duration::from_secs(86_400 * 365));
        let reason = loop {
            tokio::select! {
                reason = &mut stop => break reason.unwrap_or(EndReason::Requested),
                _ = tokio::time::sleep_until(driver.deadline.into()) => break EndReason::Expired,
                _ = tokio::time::sleep_until(next_tick), if interval.is_some() => {
                    self.tick(&mut driver).await;
                    next_tick += interval.unwrap_or_default();
                }
            }
        };
        let kind = driver.fault.kind();
        let started = Instant::now();
        let revert_error = driver.fault.revert().await.err();
        let reverted_at = started.elapsed();
        if revert_error.is_none() {
            self.forget_journal(&driver.id, kind);
            tracing::debug!(
                fault = %driver.id,
                revert_us = reverted_at.as_micros() as u64,
                journal_us = (started.elapsed() - reverted_at).as_micros() as u64,
                "revert phases"
            );
            self.metrics
                .reverted(kind_label(kind), reason.metric_reason());
        } else {
            self.metrics.revert_failed(kind_label(kind));
        }
        let final_view = {
            let mut state = self.lock();
            let Some(entry) = state.active.remove(&driver.id) else {
                return;
            };
            let mut view = entry.view;
            view.status = Some(driver.fault.status());
            view.ended_unix_ms = unix_ms_now();
            match &revert_error {
                None => {
                    view.state = reason.state() as i32;
                    view.message = reason.message().to_string();
                }
                Some(e) => {
                    view.state = api::FaultState::Failed as i32;
                    view.message = format!("revert failed (journal kept for the next start): {e}");
                }
            }
            state.ended.push_back(view.clone());
            view
        };
        self.trim_ended();
        // The overdue gauge may have to drop now.
        self.reaper_wake.notify_one();
        self.metrics.active_changed(kind_label(kind), -1);
        tracing::info!(fault = %driver.id, state = ?api::FaultState::try_from(final_view.state).ok(), "fault ended");
        let _ = done.send(Some(final_view));
    }

    /// The fault's periodic work, then its status into the view.
    async fn tick(&self, driver: &mut Driver) {
        let check = |processes: &[ProcessInfo]| self.check_processes(processes);
        driver
            .fault
            .tick(&self.resolver, &driver.spec, &check)
            .await;
        let status = driver.fault.status();
        if let Some(entry) = self.lock().active.get_mut(&driver.id) {
            entry.view.status = Some(status);
        }
    }

    /// Ends a fault and waits until its revert is done.
    pub async fn revert(&self, id: &str) -> Result<api::Fault, AgentError> {
        self.end(id, EndReason::Requested).await
    }

    async fn end(&self, id: &str, reason: EndReason) -> Result<api::Fault, AgentError> {
        let mut done = {
            let mut state = self.lock();
            match state.active.get_mut(id) {
                Some(entry) => {
                    if let Some(stop) = entry.stop.take() {
                        let _ = stop.send(reason);
                    }
                    entry.done.clone()
                }
                None => {
                    return match state.ended.iter().find(|f| f.id == id) {
                        Some(f) => Err(AgentError::FailedPrecondition(format!(
                            "fault {id} already ended ({})",
                            state_name(f.state)
                        ))),
                        None => Err(AgentError::NotFound(format!("no fault {id} on this agent"))),
                    };
                }
            }
        };
        let view = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::Internal(format!("the driver of fault {id} stopped")))?
            .clone();
        view.ok_or_else(|| AgentError::Internal(format!("fault {id} ended without a status")))
    }

    pub async fn revert_all(&self, reason: EndReason) -> Vec<api::Fault> {
        let ids: Vec<String> = self.lock().active.keys().cloned().collect();
        let ends = ids.iter().map(|id| self.end(id, reason));
        futures::future::join_all(ends)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect()
    }

    pub fn list(&self, include_ended: bool) -> Vec<api::Fault> {
        let state = self.lock();
        let mut faults: Vec<api::Fault> = state.active.values().map(|e| e.view.clone()).collect();
        if include_ended {
            faults.extend(state.ended.iter().cloned());
        }
        faults.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        faults
    }

    pub fn get(&self, id: &str) -> Result<api::Fault, AgentError> {
        let state = self.lock();
        state
            .active
            .get(id)
            .map(|e| e.view.clone())
            .or_else(|| state.ended.iter().rev().find(|f| f.id == id).cloned())
            .ok_or_else(|| AgentError::NotFound(format!("no fault {id} on this agent")))
    }

    pub fn renew_lease(
        &self,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<api::RenewLeaseResponse, AgentError> {
        let lease = validate_lease(holder, ttl_ms, &self.limits, "")?;
        let mut state = self.lock();
        renew(&mut state, &lease);
        self.reaper_wake.notify_one();
        let faults = state
            .active
            .values()
            .filter(|e| e.view.lease_holder == holder)
            .count();
        Ok(api::RenewLeaseResponse {
            faults: faults as u32,
            expires_unix_ms: unix_ms_after(lease.ttl),
        })
    }

    /// Ends the faults of lapsed leases and keeps the overdue gauge current. Runs for
    /// the agent's lifetime, asleep until the next lease expiry or overdue moment, or
    /// until a lease or fault changes.
    pub async fn reap(self: Arc<Self>) {
        loop {
            let pass = reaper_pass(&mut self.lock(), Instant::now());
            self.metrics.set_overdue(pass.overdue as i64);
            for id in pass.lapsed {
                tracing::warn!(fault = %id, "lease lapsed, reverting");
                let registry = Arc::clone(&self);
                self.lifetimes.spawn(async move {
                    let _ = registry.end(&id, EndReason::LeaseExpired).await;
                });
            }
            match pass.next_wake {
                Some(at) => {
                    tokio::select! {
                        _ = self.reaper_wake.notified() => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => self.reaper_wake.notified().await,
            }
        }
    }

    /// Reverts what the journal of a previous run lists. Called before serving.
    /// Returns how many records were reverted and how many could not be.
    pub fn recover(&self) -> (usize, usize) {
        self.journal.drop_records_of_earlier_boots();
        // The journal is not fsynced (see journal.rs): a node that lost power may have
        // left records cut short, describing state the reboot already wiped.
        match self.resolver.procfs.boot_time() {
            Ok(boot) => match self.journal.drop_unreadable_before(boot) {
                Ok(dropped) => {
                    for path in dropped {
                        tracing::warn!(path = %path.display(), "dropped an unreadable journal record written before this boot: the kernel state it described did not survive the reboot");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot check the journal for records cut short by a reboot")
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot read the boot time; unreadable journal records are kept")
            }
        }
        let records = match self.journal.records() {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal");
                return (0, 1);
            }
        };
        let (mut reverted, mut failed) = (0, 0);
        for record in records {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!(error = %e, "skipping an unreadable journal record");
                    failed += 1;
                    continue;
                }
            };
            match faults::undo(&self.resolver.procfs, &record.undo) {
                Ok(()) => {
                    self.forget_journal(&record.id, faults::kind_from_label(&record.kind));
                    self.metrics.reverted(&record.kind, "recovered");
                    tracing::info!(fault = %record.id, kind = %record.kind, target = %record.target, "reverted a fault left by a previous run");
                    reverted += 1;
                    self.lock().ended.push_back(api::Fault {
                        id: record.id,
                        kind: faults::kind_from_label(&record.kind) as i32,
                        target: record.target,
                        state: api::FaultState::Recovered as i32,
                        created_unix_ms: record.created_unix_ms,
                        deadline_unix_ms: record.deadline_unix_ms,
                        ended_unix_ms: unix_ms_now(),
                        message: "reverted at agent start from the journal".into(),
                        ..Default::default()
                    });
                }
                Err(e) => {
                    tracing::error!(fault = %record.id, error = %e, "cannot revert a journaled fault; record kept");
                    self.metrics.revert_failed(&record.kind);
                    failed += 1;
                }
            }
        }
        self.trim_ended();
        (reverted, failed)
    }
}

struct Driver {
    id: String,
    spec: TargetSpec,
    fault: ActiveFault,
    deadline: Instant,
}

/// What one reaper pass found: faults whose lease lapsed, how many faults are overdue,
/// and when the next pass is due (None: nothing will happen until something changes).
#[derive(Debug, PartialEq)]
struct ReaperPass {
    lapsed: Vec<String>,
    overdue: usize,
    next_wake: Option<Instant>,
}

/// Drops the leases that expired by `now` and reports what the reaper must do.
fn reaper_pass(state: &mut State, now: Instant) -> ReaperPass {
    let expired: Vec<String> = state
        .leases
        .iter()
        .filter(|(_, until)| **until <= now)
        .map(|(holder, _)| holder.clone())
        .collect();
    for holder in &expired {
        state.leases.remove(holder);
    }
    let mut lapsed: Vec<String> = state
        .active
        .iter()
        .filter(|(_, e)| expired.contains(&e.view.lease_holder))
        .map(|(id, _)| id.clone())
        .collect();
    lapsed.sort();
    let overdue_at = |e: &Entry| e.deadline + OVERDUE_GRACE;
    let overdue = state
        .active
        .values()
        .filter(|e| now > overdue_at(e))
        .count();
    let next_wake = state
        .leases
        .values()
        .copied()
        .chain(
            state
                .active
                .values()
                .map(overdue_at)
                .filter(|at| *at >= now),
        )
        .min();
    ReaperPass {
        lapsed,
        overdue,
        next_wake,
    }
}

fn renew(state: &mut State, lease: &LeaseSpec) {
    state
        .leases
        .insert(lease.holder.clone(), Instant::now() + lease.ttl);
}

fn request_kind(request: &api::InjectRequest) -> api::FaultKind {
    use api::inject_request::Fault;
    match &request.fault {
        Some(Fault::Cpu(_)) => api::FaultKind::Cpu,
        Some(Fault::Memory(_)) => api::FaultKind::Memory,
        Some(Fault::Network(_)) => api::FaultKind::Network,
        Some(Fault::Process(_)) => api::FaultKind::Process,
        Some(Fault::Io(_)) => api::FaultKind::Io,
        Some(Fault::Blackhole(_)) => api::FaultKind::Blackhole,
        None => api::FaultKind::Unspecified,
    }
}

fn state_name(state: i32) -> &'static str {
    api::FaultState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("FAULT_STATE_UNSPECIFIED")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(holder: &str, deadline: Instant) -> Entry {
        let (stop, _) = oneshot::channel();
        let (_, done) = watch::channel(None);
        Entry {
            view: api::Fault {
                lease_holder: holder.to_string(),
                ..Default::default()
            },
            deadline,
            stop: Some(stop),
            done,
        }
    }

    #[test]
    fn an_idle_reaper_sleeps_until_woken() {
        let pass = reaper_pass(&mut State::default(), Instant::now());
        assert_eq!(
            pass,
            ReaperPass {
                lapsed: vec![],
                overdue: 0,
                next_wake: None
            }
        );
    }

    #[test]
    fn wakes_at_the_earliest_lease_expiry_or_overdue_moment() {
        let now = Instant::now();
        let mut state = State::default();
        state
            .leases
            .insert("ctl".into(), now + Duration::from_secs(5));
        state
            .active
            .insert("f-1".into(), entry("ctl", now + Duration::from_secs(1)));
        let pass = reaper_pass(&mut state, now);
        assert_eq!(
            pass.next_wake,
            Some(now + Duration::from_secs(1) + OVERDUE_GRACE)
        );
        assert!(pass.lapsed.is_empty());
        assert_eq!(pass.overdue, 0);
    }

    #[test]
    fn a_lapsed_lease_ends_only_its_holders_faults_and_is_forgotten() {
        let now = Instant::now();
        let mut state = State::default();
        state
            .leases
            .insert("gone".into(), now - Duration::from_millis(1));
        state
            .leases
            .insert("alive".into(), now + Duration::from_secs(3));
        let far = now + Duration::from_secs(600);
        state.active.insert("f-2".into(), entry("gone", far));
        state.active.insert("f-1".into(), entry("gone", far));
        state.active.insert("f-3".into(), entry("alive", far));
        let pass = reaper_pass(&mut state, now);
        assert_eq!(pass.lapsed, vec!["f-1".to_string(), "f-2".to_string()]);
        assert!(!state.leases.contains_key("gone"));
        assert_eq!(pass.next_wake, Some(now + Duration::from_secs(3)));
    }

    #[test]
    fn counts_faults_past_deadline_and_grace_as_overdue() {
        let now = Instant::now();
        let mut state = State::default();
        let late = now - OVERDUE_GRACE - Duration::from_millis(1);
        state.active.insert("f-1".into(), entry("", late));
        state
            .active
            .insert("f-2".into(), entry("", now + Duration::from_secs(10)));
        let pass = reaper_pass(&mut state, now);
        assert_eq!(pass.overdue, 1);
        // The overdue one is not a future event: its end wakes the reaper instead.
        assert_eq!(
            pass.next_wake,
            Some(now + Duration::from_secs(10) + OVERDUE_GRACE)
        );
    }
}
