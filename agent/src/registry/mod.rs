//! The faults this agent holds. Every fault gets a driver task (`driver`) that ends it
//! at its deadline, on request, when its lease lapses, when its target is gone or when
//! the agent drains, and that reverts it, retrying a failed revert until it succeeds;
//! `recovery` reverts what the journal of a previous run lists.
//!
//! Invariants the registry keeps:
//! - a fault is journaled before it touches the node, and its record goes only once
//!   the node is put back (a failed revert keeps it, for the retries and the next start);
//! - one CPU and one memory fault per target cgroup, and a node-wide budget of stressor
//!   threads, checked and claimed atomically with the registration;
//! - once draining (SIGTERM) no inject starts, and the drain waits for the injects under
//!   way before it reverts, so no fault outlives the agent.

mod driver;
mod recovery;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chaos_proto::api;
use tokio::sync::{Notify, oneshot, watch};

use crate::authz::Caller;
use crate::capabilities::CapabilitySet;
use crate::clock::{unix_ms_after, unix_ms_now};
use crate::error::AgentError;
use crate::faults::{self, ActiveFault, PrepareContext, Prepared, check_capabilities};
use crate::journal::{Journal, JournalRecord};
use crate::metrics::Metrics;
use crate::procfs::ProcessInfo;
use crate::protect::ProtectionPolicy;
use crate::resolve::{Resolved, Resolver};
use crate::validate::{FaultPlan, LeaseSpec, Limits, validate_inject, validate_lease};

pub use driver::{EndReason, retry_delay};

/// Ended faults kept for `List --include-ended` and `Get`.
const ENDED_KEPT: usize = 256;
/// The most faults an agent holds at once (the descriptor reserve is sized by it).
pub const MAX_ACTIVE: usize = 1024;
/// A fault still active this long after its deadline counts as overdue.
const OVERDUE_GRACE: Duration = Duration::from_secs(2);

/// One resource a stressing fault holds alone: (kind, the target cgroup's path).
type ClaimKey = (api::FaultKind, String);

struct Entry {
    view: api::Fault,
    deadline: Instant,
    /// Taken by the first request to end the fault.
    stop: Option<oneshot::Sender<EndReason>>,
    /// Every outcome of the fault's end: the final view, or a pending one after each
    /// failed revert attempt.
    done: watch::Receiver<Option<api::Fault>>,
    /// Wakes a pending revert for its next attempt now.
    retry_now: Arc<Notify>,
    claims: Vec<ClaimKey>,
}

impl Entry {
    fn is_revert_pending(&self) -> bool {
        self.view.state == api::FaultState::RevertPending as i32
    }
}

#[derive(Default)]
struct State {
    active: HashMap<String, Entry>,
    ended: VecDeque<api::Fault>,
    leases: HashMap<String, Instant>,
    /// Who created each lease (its first inject or renewal): only that identity renews
    /// it, so one caller cannot keep another's faults alive or let them lapse early.
    lease_owners: HashMap<String, String>,
    /// The cgroups a CPU or memory fault holds, and by which fault.
    claims: HashMap<ClaimKey, String>,
    /// Stressor threads per fault, from its claim (before it is registered) to its end.
    threads: HashMap<String, u32>,
    /// Set by `drain`: no inject starts after it.
    draining: bool,
    /// Injects between their start and their registration (or refusal).
    injects_under_way: usize,
}

impl State {
    fn stressor_threads(&self) -> u32 {
        self.threads.values().sum()
    }
}

pub struct Registry {
    state: Mutex<State>,
    journal: Journal,
    metrics: Metrics,
    resolver: Resolver,
    policy: ProtectionPolicy,
    limits: Limits,
    /// What the agent holds in effect, read at start: kinds that need more are refused.
    capabilities: CapabilitySet,
    /// Wakes the reaper when a lease or a fault appears or a fault ends, so it sleeps
    /// until the next moment that matters instead of polling.
    reaper_wake: Notify,
    /// Notified when the last inject under way settles (for the drain).
    injects_settled: Notify,
    /// The runtime that owns the faults' lifetimes: each fault's driver (deadline,
    /// periodic work, revert) and the lease reverts run there, apart from the requests.
    lifetimes: tokio::runtime::Handle,
    /// Where periodic work that may block runs (finding a container again through the
    /// runtime and /proc), so it never holds up another fault's deadline or revert.
    periodic: tokio::runtime::Handle,
    /// The agent's start time, for the protection check's parent walk.
    agent_started: std::sync::OnceLock<u64>,
}

/// The runtimes a registry runs its work on.
pub struct Runtimes {
    pub lifetimes: tokio::runtime::Handle,
    pub periodic: tokio::runtime::Handle,
}

fn new_fault_id() -> String {
    let bytes = uuid::Uuid::new_v4();
    let hex: String = bytes.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("f-{hex}")
}

/// Counts an inject as under way from before its draining check to its end, so the
/// drain cannot miss one that started before it.
struct InjectUnderWay<'a> {
    registry: &'a Registry,
}

impl Drop for InjectUnderWay<'_> {
    fn drop(&mut self) {
        let settled = {
            let mut state = self.registry.lock();
            state.injects_under_way -= 1;
            state.injects_under_way == 0
        };
        if settled {
            self.registry.injects_settled.notify_waiters();
        }
    }
}

impl Registry {
    pub fn new(
        journal: Journal,
        metrics: Metrics,
        resolver: Resolver,
        policy: ProtectionPolicy,
        limits: Limits,
        capabilities: CapabilitySet,
        runtimes: Runtimes,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            state: Mutex::new(State::default()),
            journal,
            metrics,
            resolver,
            policy,
            limits,
            capabilities,
            reaper_wake: Notify::new(),
            injects_settled: Notify::new(),
            lifetimes: runtimes.lifetimes,
            periodic: runtimes.periodic,
            agent_started: std::sync::OnceLock::new(),
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

    pub fn capabilities(&self) -> &CapabilitySet {
        &self.capabilities
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

    /// When the agent's process started (clock ticks since boot), read once; 0 (nothing
    /// is older) while it cannot be read.
    fn agent_started(&self) -> u64 {
        if let Some(started) = self.agent_started.get() {
            return *started;
        }
        match self.resolver.procfs.stat(self.policy.agent_pid) {
            Ok(stat) => *self.agent_started.get_or_init(|| stat.start_time),
            Err(_) => 0,
        }
    }

    /// Refuses protected processes: the agent's own tree, pid 1, node daemons. The
    /// parent chain is read only as far as it can lead to the agent (see
    /// `Procfs::ancestors_born_since`).
    fn check_processes(&self, processes: &[ProcessInfo]) -> Result<(), AgentError> {
        let agent_started = self.agent_started();
        for p in processes {
            let ancestors = self
                .resolver
                .procfs
                .ancestors_born_since(p.pid, 64, agent_started);
            self.policy.check_process(p, &ancestors)?;
        }
        Ok(())
    }

    /// The one policy, for every target form: the target's main process, whose it is (a
    /// protected pod, a sandbox, the node's own), the agent's own cgroup, and for a
    /// stressor a cgroup that bounds it.
    fn check_targets(&self, targets: &[Resolved], plan: &FaultPlan) -> Result<(), AgentError> {
        for t in targets {
            // The process first: "PID 1" and "the agent's own" say more than "no container".
            self.check_processes(std::slice::from_ref(&t.init))?;
            self.policy.check_owner(t)?;
            self.policy.check_cgroup(t)?;
            if plan.is_resource_stress() {
                self.policy
                    .check_resource_cgroup(t, self.limits.allow_node_scope)?;
            }
        }
        Ok(())
    }

    pub async fn inject(
        self: &Arc<Self>,
        request: api::InjectRequest,
        caller: &Caller,
    ) -> Result<api::Fault, AgentError> {
        let started = Instant::now();
        let kind = request_kind(&request);
        let result = self.inject_inner(request, caller).await;
        match &result {
            Ok(view) if view.state != api::FaultState::Unspecified as i32 => {
                self.metrics.injected(kind.label(), started.elapsed());
            }
            Ok(_) => {}
            Err(err) => self.metrics.rejected(kind.label(), err.code_label()),
        }
        result
    }

    /// Marks an inject as under way, unless the agent is draining.
    fn start_inject(&self) -> Result<InjectUnderWay<'_>, AgentError> {
        let mut state = self.lock();
        if state.draining {
            return Err(AgentError::Unavailable(
                "the agent is shutting down: it is reverting its faults and takes no new ones"
                    .into(),
            ));
        }
        state.injects_under_way += 1;
        Ok(InjectUnderWay { registry: self })
    }

    async fn inject_inner(
        self: &Arc<Self>,
        request: api::InjectRequest,
        caller: &Caller,
    ) -> Result<api::Fault, AgentError> {
        caller
            .require(crate::authz::Role::Operator, "inject")
            .map_err(AgentError::PermissionDenied)?;
        let _under_way = self.start_inject()?;
        // Phase times go to the debug log: where an injection spends its time on a node.
        let started = Instant::now();
        let valid = validate_inject(&request, &self.limits)?;
        // Before anything is resolved or touched: a kind the agent cannot carry out
        // completely is refused whole.
        check_capabilities(valid.plan.kind(), &self.capabilities)?;
        if let Some(lease) = &valid.lease {
            self.check_lease_owner(&lease.holder, caller)?;
        }
        let validated_at = started.elapsed();
        let targets = self.resolver.resolve(&valid.target).await?;
        let looked_up_at = started.elapsed();
        self.check_targets(&targets, &valid.plan)?;
        let checked_at = started.elapsed();
        // After resolving: the namespace is the one of the pod the target really is in,
        // whatever form named it (a pid in a pod is that pod's).
        for t in &targets {
            let namespace = match &t.owner {
                crate::resolve::Owner::Container(c) => Some(c.pod_namespace.as_str()),
                _ => None,
            };
            caller
                .check_target(&t.describe(), namespace)
                .map_err(AgentError::PermissionDenied)?;
            // kube-system is a target only where the agent allows it, and then only an
            // admin's: the cluster's own components run there.
            if namespace == Some("kube-system") {
                caller
                    .require(
                        crate::authz::Role::Admin,
                        &format!("inject into {} (kube-system)", t.describe()),
                    )
                    .map_err(AgentError::PermissionDenied)?;
            }
        }
        // Node scope is the admin's: a node-scope blackhole, and any network fault whose
        // target shares the node's namespace (a hostNetwork pod), act on the whole node.
        let network = matches!(valid.plan, FaultPlan::Network(_) | FaultPlan::Blackhole(_));
        if network {
            let node = self.resolver.node_netns();
            let node_scope = matches!(&valid.plan, FaultPlan::Blackhole(b) if b.node_scope)
                || targets
                    .iter()
                    .any(|t| self.resolver.in_netns(t.init.pid, node));
            if node_scope {
                caller
                    .require(
                        crate::authz::Role::Admin,
                        "inject a network fault in the node's network namespace (node scope)",
                    )
                    .map_err(AgentError::PermissionDenied)?;
            }
        }
        let resolved_at = started.elapsed();

        let context = PrepareContext {
            resolver: &self.resolver,
            metrics: &self.metrics,
            duration: valid.duration,
        };
        // A cgroup another fault holds is refused before prepare reads it: a pause there
        // would otherwise be refused as "already frozen", naming no fault.
        let claims = claim_keys(&valid.plan, &targets);
        self.check_room(&self.lock(), &claims, 0)?;
        let prepared = faults::prepare(&valid.plan, &valid.target, &targets, &context).await?;
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

        let stressor_threads = stressor_threads(&fault, targets.len());
        let created = unix_ms_now();
        let mut view = api::Fault {
            id: new_fault_id(),
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
            created_by: caller.identity.clone(),
            status: Some(fault.status()),
        };
        if valid.dry_run {
            // What a real inject would be refused for, without holding anything.
            self.check_room(&self.lock(), &claims, stressor_threads)?;
            view.id.clear();
            view.message = format!("dry run: {plan_summary}; nothing changed");
            return Ok(view);
        }
        self.claim(&view.id, &claims, stressor_threads)?;
        let fault_id = view.id.clone();
        let mut claimed = ClaimGuard {
            registry: self,
            id: &fault_id,
            keys: &claims,
            kept: false,
        };

        let record = JournalRecord {
            id: view.id.clone(),
            kind: fault.kind().label().to_string(),
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
            if fault.holds_changes() {
                // Apply could not undo all it did: the fault stays, as a revert that is
                // retried until it succeeds, with its journal record and its claims.
                claimed.kept = true;
                drop(claimed);
                let message = format!(
                    "{err}; what was already changed could not be undone, so fault {} stays listed as revert-pending and the agent keeps retrying",
                    view.id
                );
                self.hold_failed_apply(view, fault, claims);
                return Err(AgentError::Internal(message));
            }
            // apply left nothing behind: the record can go.
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
            validate_us = validated_at.as_micros() as u64,
            lookup_us = (looked_up_at - validated_at).as_micros() as u64,
            protect_us = (checked_at - looked_up_at).as_micros() as u64,
            scope_us = (resolved_at - checked_at).as_micros() as u64,
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
        claimed.kept = true;
        drop(claimed);
        let deadline = Instant::now() + valid.duration;
        self.register(view.clone(), deadline, fault, valid, claims);
        Ok(view)
    }

    /// Enters a fault that holds state, and starts its driver.
    fn register(
        self: &Arc<Self>,
        view: api::Fault,
        deadline: Instant,
        fault: ActiveFault,
        valid: crate::validate::ValidInject,
        claims: Vec<ClaimKey>,
    ) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = watch::channel(None);
        let retry_now = Arc::new(Notify::new());
        let kind = fault.kind();
        {
            let mut state = self.lock();
            if let Some(lease) = &valid.lease {
                renew(&mut state, lease);
                state
                    .lease_owners
                    .entry(lease.holder.clone())
                    .or_insert_with(|| view.created_by.clone());
            }
            state.active.insert(
                view.id.clone(),
                Entry {
                    view: view.clone(),
                    deadline,
                    stop: Some(stop_tx),
                    done: done_rx,
                    retry_now: Arc::clone(&retry_now),
                    claims,
                },
            );
        }
        self.reaper_wake.notify_one();
        self.metrics.active_changed(kind.label(), 1);
        let registry = Arc::clone(self);
        let driver = driver::Driver {
            id: view.id,
            spec: valid.target,
            plan: valid.plan,
            fault,
            deadline,
        };
        self.lifetimes
            .spawn(async move { registry.drive(driver, stop_rx, done_tx, retry_now).await });
    }

    /// A fault whose apply failed and could not be rolled back: listed as revert-pending
    /// and reverted by a driver that retries until it succeeds.
    fn hold_failed_apply(
        self: &Arc<Self>,
        mut view: api::Fault,
        fault: ActiveFault,
        claims: Vec<ClaimKey>,
    ) {
        view.state = api::FaultState::RevertPending as i32;
        view.status = Some(fault.status());
        view.message = "apply failed part way and its rollback failed: retrying".into();
        let kind = fault.kind();
        let (done_tx, done_rx) = watch::channel(None);
        let retry_now = Arc::new(Notify::new());
        self.lock().active.insert(
            view.id.clone(),
            Entry {
                view: view.clone(),
                deadline: Instant::now(),
                stop: None,
                done: done_rx,
                retry_now: Arc::clone(&retry_now),
                claims,
            },
        );
        self.metrics.active_changed(kind.label(), 1);
        self.refresh_pending_gauge();
        let registry = Arc::clone(self);
        let id = view.id.clone();
        self.lifetimes.spawn(async move {
            registry
                .finish(
                    &id,
                    driver::Reverter::Live(fault),
                    EndReason::ApplyFailed,
                    None,
                    done_tx,
                    retry_now,
                )
                .await
        });
    }

    /// Refuses a fault that would stress a cgroup another fault of its kind stresses,
    /// or exceed the node's stressor-thread budget.
    fn check_room(
        &self,
        state: &State,
        claims: &[ClaimKey],
        stressor_threads: u32,
    ) -> Result<(), AgentError> {
        for key in claims {
            let held = state
                .claims
                .iter()
                .find(|(held, _)| claims_conflict(held, key));
            if let Some((held, holder)) = held {
                let what = claim_name(held.0);
                let rule = if held.0 == key.0 {
                    format!(
                        "one {what} fault per container at a time (revert it, or change it in one request)"
                    )
                } else {
                    "a pause and another fault that holds the cgroup (CPU or memory stress, a stop) do not run together (revert it first)".to_string()
                };
                return Err(AgentError::FailedPrecondition(format!(
                    "cgroup {} already has {what} fault {holder}: {rule}",
                    key.1,
                )));
            }
        }
        let in_use = state.stressor_threads();
        let budget = self.limits.max_stressor_threads;
        if stressor_threads > 0 && in_use + stressor_threads > budget {
            return Err(AgentError::ResourceExhausted(format!(
                "this fault needs {stressor_threads} stressor thread(s) and {in_use} of this node's {budget} are in use (--max-stressor-threads)"
            )));
        }
        Ok(())
    }

    /// Checks and takes the claims in one step under the lock.
    fn claim(
        &self,
        id: &str,
        claims: &[ClaimKey],
        stressor_threads: u32,
    ) -> Result<(), AgentError> {
        let mut state = self.lock();
        if state.active.len() >= MAX_ACTIVE {
            return Err(AgentError::ResourceExhausted(format!(
                "this agent already holds {MAX_ACTIVE} faults"
            )));
        }
        self.check_room(&state, claims, stressor_threads)?;
        for key in claims {
            state.claims.insert(key.clone(), id.to_string());
        }
        if stressor_threads > 0 {
            state.threads.insert(id.to_string(), stressor_threads);
        }
        Ok(())
    }

    fn release_claims(&self, id: &str, claims: &[ClaimKey]) {
        let mut state = self.lock();
        for key in claims {
            if state.claims.get(key).is_some_and(|holder| holder == id) {
                state.claims.remove(key);
            }
        }
        state.threads.remove(id);
    }

    fn forget_journal(&self, id: &str, kind: api::FaultKind) {
        if let Err(e) = self.journal.remove(id) {
            tracing::error!(fault = id, error = %e, "cannot remove the journal record");
            self.metrics.revert_failed(kind.label());
        }
    }

    fn trim_ended(&self) {
        let mut state = self.lock();
        while state.ended.len() > ENDED_KEPT {
            state.ended.pop_front();
        }
    }

    fn refresh_pending_gauge(&self) {
        let pending = self
            .lock()
            .active
            .values()
            .filter(|e| e.is_revert_pending())
            .count();
        self.metrics.set_revert_pending(pending as i64);
    }

    /// Ends a fault and waits until its revert is done, or has failed once (the view
    /// then says revert-pending, and the agent keeps retrying).
    pub async fn revert(&self, id: &str, caller: &Caller) -> Result<api::Fault, AgentError> {
        caller
            .require(crate::authz::Role::Operator, "revert")
            .map_err(AgentError::PermissionDenied)?;
        let owner = self
            .lock()
            .active
            .get(id)
            .map(|e| e.view.created_by.clone());
        if let Some(owner) = owner
            && !caller.may_touch(&owner)
        {
            return Err(AgentError::PermissionDenied(format!(
                "{} (role {}) may not revert fault {id}: {owner} created it, and reverting another's fault needs role admin",
                caller.identity, caller.role
            )));
        }
        self.end(id, EndReason::Requested).await
    }

    /// Reverts every fault this caller may end: an admin all, anyone else its own.
    pub async fn revert_all_of(&self, caller: &Caller) -> Result<Vec<api::Fault>, AgentError> {
        caller
            .require(crate::authz::Role::Operator, "revert")
            .map_err(AgentError::PermissionDenied)?;
        let ids: Vec<String> = self
            .lock()
            .active
            .iter()
            .filter(|(_, e)| caller.may_touch(&e.view.created_by))
            .map(|(id, _)| id.clone())
            .collect();
        let ends = ids.iter().map(|id| self.end(id, EndReason::Requested));
        Ok(futures::future::join_all(ends)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect())
    }

    /// A lease is its creator's: another caller (admins included) may not renew it.
    fn check_lease_owner(&self, holder: &str, caller: &Caller) -> Result<(), AgentError> {
        match self.lock().lease_owners.get(holder) {
            Some(owner) if *owner != caller.identity => Err(AgentError::PermissionDenied(format!(
                "{} (role {}) may not use lease {holder}: it belongs to {owner}",
                caller.identity, caller.role
            ))),
            _ => Ok(()),
        }
    }

    async fn end(&self, id: &str, reason: EndReason) -> Result<api::Fault, AgentError> {
        let mut done = {
            let mut state = self.lock();
            match state.active.get_mut(id) {
                Some(entry) if entry.is_revert_pending() => {
                    // Already ended and being retried: try again now, answer at once.
                    entry.retry_now.notify_one();
                    return Ok(entry.view.clone());
                }
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

    /// For SIGTERM: takes no new inject, waits for the ones under way, and reverts
    /// until nothing is active or `bound` has passed. Faults whose revert keeps failing
    /// are left with their journal records for the next start. Returns how many faults
    /// were reverted and how many are left.
    pub async fn drain(&self, bound: Duration) -> (usize, usize) {
        let give_up = tokio::time::Instant::now() + bound;
        self.lock().draining = true;
        let mut reverted = 0;
        loop {
            // Injects that passed their draining check finish (registered or refused)
            // before the faults are counted: none can register after the last pass.
            loop {
                let settled = self.injects_settled.notified();
                if self.lock().injects_under_way == 0 {
                    break;
                }
                if tokio::time::timeout_at(give_up, settled).await.is_err() {
                    break;
                }
            }
            let ended = self.revert_all(EndReason::Shutdown).await;
            reverted += ended
                .iter()
                .filter(|f| f.state != api::FaultState::RevertPending as i32)
                .count();
            let left = self.lock().active.len();
            let under_way = self.lock().injects_under_way;
            if left == 0 && under_way == 0 {
                return (reverted, 0);
            }
            if tokio::time::Instant::now() >= give_up {
                return (reverted, left);
            }
            // Pending reverts retry on their own; look again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        caller: &Caller,
    ) -> Result<api::RenewLeaseResponse, AgentError> {
        caller
            .require(crate::authz::Role::Operator, "renew a lease")
            .map_err(AgentError::PermissionDenied)?;
        let lease = validate_lease(holder, ttl_ms, &self.limits, "")?;
        self.check_lease_owner(holder, caller)?;
        let mut state = self.lock();
        state
            .lease_owners
            .entry(lease.holder.clone())
            .or_insert_with(|| caller.identity.clone());
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
}

/// Releases a fault's claims when its inject fails before it is registered.
struct ClaimGuard<'a> {
    registry: &'a Registry,
    id: &'a str,
    keys: &'a [ClaimKey],
    /// Set once the fault is registered (or held as revert-pending): its end releases.
    kept: bool,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.registry.release_claims(self.id, self.keys);
        }
    }
}

/// The cgroups a fault claims, one claim per target: CPU, memory and IO stress, a held stop,
/// a pause and an IO limit (which claims go together: [`claims_conflict`]). Two stops of one container would share its processes, and the first to end
/// would continue what the other still holds.
fn claim_keys(plan: &FaultPlan, targets: &[Resolved]) -> Vec<ClaimKey> {
    let holds_alone = match plan {
        FaultPlan::Cpu(_)
        | FaultPlan::Memory(_)
        | FaultPlan::Pause(_)
        | FaultPlan::Io(_)
        | FaultPlan::IoStress(_) => true,
        FaultPlan::Process(process) => crate::validate::is_stop_signal(process.signal),
        // A DNS fault claims its namespaces itself (one per namespace, see `faults::dns`).
        FaultPlan::Network(_)
        | FaultPlan::Blackhole(_)
        | FaultPlan::DiskFill(_)
        | FaultPlan::Dns(_) => false,
    };
    if !holds_alone {
        return Vec::new();
    }
    let mut keys: Vec<ClaimKey> = targets
        .iter()
        .map(|t| (plan.kind(), t.cgroup.display_path()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Two claims on one cgroup conflict when they are of one kind (two IO faults would
/// each restore the other's limits), or when one is a pause and the other holds
/// processes of the cgroup: a frozen cgroup would freeze a stressor started in it (and
/// its start would wait for it), and a pause would freeze the stressors and stopped
/// processes other faults hold and must end. An IO limit and a pause hold no process,
/// so they go together.
fn claims_conflict(held: &ClaimKey, wanted: &ClaimKey) -> bool {
    let holds_processes = |kind: api::FaultKind| {
        matches!(
            kind,
            api::FaultKind::Cpu
                | api::FaultKind::Memory
                | api::FaultKind::IoStress
                | api::FaultKind::Process
        )
    };
    let pause_beside =
        |a: api::FaultKind, b: api::FaultKind| a == api::FaultKind::Pause && holds_processes(b);
    held.1 == wanted.1
        && (held.0 == wanted.0 || pause_beside(held.0, wanted.0) || pause_beside(wanted.0, held.0))
}

/// What a claim of `kind` is called in a refusal: a process fault claims only as a stop.
fn claim_name(kind: api::FaultKind) -> &'static str {
    match kind {
        api::FaultKind::Process => "stop",
        other => other.label(),
    }
}

/// The threads a fault's stressors run on all its targets.
fn stressor_threads(fault: &ActiveFault, targets: usize) -> u32 {
    fault
        .stressor_threads_per_target()
        .saturating_mul(targets as u32)
}

/// What one reaper pass found: faults whose lease lapsed, how many faults are overdue,
/// and when the next pass is due (None: nothing will happen until something changes).
#[derive(Debug, PartialEq)]
struct ReaperPass {
    lapsed: Vec<String>,
    overdue: usize,
    next_wake: Option<Instant>,
}

/// Drops the leases that expired by `now` and reports what the reaper must do. A fault
/// whose revert is pending has already ended: it is neither lapsed nor overdue.
fn reaper_pass(state: &mut State, now: Instant) -> ReaperPass {
    let expired: Vec<String> = state
        .leases
        .iter()
        .filter(|(_, until)| **until <= now)
        .map(|(holder, _)| holder.clone())
        .collect();
    for holder in &expired {
        state.leases.remove(holder);
        state.lease_owners.remove(holder);
    }
    let running = || state.active.iter().filter(|(_, e)| !e.is_revert_pending());
    let mut lapsed: Vec<String> = running()
        .filter(|(_, e)| expired.contains(&e.view.lease_holder))
        .map(|(id, _)| id.clone())
        .collect();
    lapsed.sort();
    let overdue_at = |e: &Entry| e.deadline + OVERDUE_GRACE;
    let overdue = running().filter(|(_, e)| now > overdue_at(e)).count();
    let next_wake = state
        .leases
        .values()
        .copied()
        .chain(
            running()
                .map(|(_, e)| overdue_at(e))
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
    request
        .fault
        .as_ref()
        .map_or(api::FaultKind::Unspecified, |fault| fault.kind())
}

fn state_name(state: i32) -> &'static str {
    api::FaultState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("FAULT_STATE_UNSPECIFIED")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_conflicts_with_kinds_holding_processes_and_an_io_limit_only_with_another() {
        use api::FaultKind::{Cpu, Io, IoStress, Memory, Pause, Process};
        let on = |kind: api::FaultKind, cgroup: &str| (kind, cgroup.to_string());
        for kind in [Cpu, Memory, IoStress, Process, Pause] {
            assert!(
                claims_conflict(&on(Pause, "/c"), &on(kind, "/c")),
                "{kind:?}"
            );
            assert!(
                claims_conflict(&on(kind, "/c"), &on(Pause, "/c")),
                "{kind:?}"
            );
            assert!(
                !claims_conflict(&on(Pause, "/c"), &on(kind, "/d")),
                "{kind:?}"
            );
        }
        assert!(claims_conflict(&on(Io, "/c"), &on(Io, "/c")));
        // The IO stressor holds processes in the cgroup, and a limit beside it is allowed.
        assert!(claims_conflict(&on(IoStress, "/c"), &on(IoStress, "/c")));
        for kind in [Cpu, Memory, IoStress, Process, Pause] {
            assert!(!claims_conflict(&on(Io, "/c"), &on(kind, "/c")), "{kind:?}");
            assert!(!claims_conflict(&on(kind, "/c"), &on(Io, "/c")), "{kind:?}");
        }
    }

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
            retry_now: Arc::new(Notify::new()),
            claims: Vec::new(),
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

    #[test]
    fn a_pending_revert_is_neither_lapsed_nor_overdue() {
        let now = Instant::now();
        let mut state = State::default();
        state
            .leases
            .insert("gone".into(), now - Duration::from_millis(1));
        let mut pending = entry("gone", now - OVERDUE_GRACE - Duration::from_secs(1));
        pending.view.state = api::FaultState::RevertPending as i32;
        state.active.insert("f-1".into(), pending);
        let pass = reaper_pass(&mut state, now);
        assert!(pass.lapsed.is_empty());
        assert_eq!(pass.overdue, 0);
    }

    #[test]
    fn the_stressor_threads_of_claimed_faults_add_up() {
        let mut state = State::default();
        state.threads.insert("f-1".into(), 3);
        state.threads.insert("f-2".into(), 2);
        assert_eq!(state.stressor_threads(), 5);
    }
}
