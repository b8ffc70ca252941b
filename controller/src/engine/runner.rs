//! Carrying out an experiment: select targets, probe the steady state (baseline),
//! inject the method's faults under a renewed lease, watch for abort conditions,
//! revert, watch the recovery, and judge. Every fault injected is reverted on every
//! path out of [`run`]; if this process dies instead, the lease lapses and the agents
//! revert by themselves.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chaos_proto::api;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::agents::fleet::{Candidate, Fleet};
use crate::agents::kube_api::{Deletion, KubeApi, KubeApiError};
use crate::engine::achieved::assess;
use crate::engine::experiment::{
    DuringExpectation, Experiment, FaultSpec, FaultStep, MethodMode, Probe, TargetSpec, step_kind,
};
use crate::engine::load::{LoadResult, LoadRun, Phase, PhaseBounds};
use crate::engine::outage::{FaultOutage, FaultWindow, outages, per_fault};
use crate::engine::partition::{Member, PartitionDirection, PartitionSpec, plan_partition};
use crate::engine::probe::{Sample, observe};
use crate::engine::request::inject_request;
use crate::engine::selection::{
    ApiFacts, Chosen, TargetPolicy, distinct_pods, listing, refuse_named_protected, select,
};
use crate::engine::stats::{PhaseStats, phase_stats, violations};
use crate::engine::task::AbortOnDrop;
use crate::engine::verdict::{Timing, Verdict, timing};

/// How often the run's lease is renewed on its agents.
pub const LEASE_RENEW_PERIOD: Duration = Duration::from_secs(1);
/// How often the watch loop re-checks the recovery hold between samples.
const WATCH_TICK: Duration = Duration::from_millis(100);

pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

pub struct RunOptions {
    /// The lease holder and the `run` label; unique per run.
    pub run_id: String,
    pub progress: Progress,
    /// Set to true to stop the run (Ctrl-C): everything is reverted, verdict aborted.
    pub cancel: watch::Receiver<bool>,
    /// What the command allows beyond the file (`--include-protected`).
    pub policy: TargetPolicy,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub experiment: String,
    pub run_id: String,
    pub started_unix_ms: i64,
    pub verdict: Verdict,
    /// What the experiment claimed, in words (for the report).
    pub hypothesis: String,
    pub reasons: Vec<String>,
    pub phases: Phases,
    pub timing: Timing,
    /// Each fault step's own outage and recovery (see `outage`).
    pub per_fault: Vec<FaultOutage>,
    pub probes: Vec<ProbeResult>,
    pub faults: Vec<FaultRecord>,
    /// What the `load` section measured, per phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadResult>,
    pub abort: Option<AbortRecord>,
    /// Reverts that failed (each names agent and fault).
    pub rollback_errors: Vec<String>,
}

/// Phase boundaries in ms from the start of the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases {
    pub baseline_end_ms: u64,
    pub first_inject_ms: Option<u64>,
    pub method_end_ms: Option<u64>,
    pub end_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub name: String,
    pub before: PhaseStats,
    pub during: PhaseStats,
    pub after: PhaseStats,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub step: String,
    pub kind: String,
    pub agent: String,
    pub target: String,
    pub pod: String,
    pub fault_id: String,
    pub injected_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    /// What the step asked, e.g. `cpu load 50%`.
    pub asked: String,
    /// What the agent measured the fault doing, read back just before its revert.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub achieved: String,
    /// Why the fault took no effect, when it took none (see `achieved`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_effect: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(skip)]
    agent_index: usize,
    /// Done through the Kubernetes API (delete_pod): nothing for an agent to revert.
    #[serde(skip)]
    via_api: bool,
    /// The step's index in method.faults (names need not be unique).
    #[serde(skip)]
    step_index: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct AbortRecord {
    pub reason: String,
    pub at_ms: u64,
    /// When every fault had been reverted.
    pub reverted_at_ms: Option<u64>,
}

/// The targets of each step, chosen before anything is injected.
#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    pub step: String,
    pub kind: String,
    /// What the fault does, e.g. `kill signal KILL process httpd`.
    pub fault: String,
    pub duration_ms: u64,
    pub targets: Vec<PlannedTarget>,
    /// delete_pod: the pods (`namespace/name`) deleted through the Kubernetes API.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delete_pods: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedTarget {
    pub agent: String,
    pub node: String,
    pub target: String,
    pub pod: String,
    /// A partition's blackhole on this target: the other side's addresses (`A.B.C.D/32`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blackhole_to: Vec<String>,
    #[serde(skip)]
    chosen: Chosen,
}

impl PlannedTarget {
    fn of(fleet: &Fleet, chosen: Chosen, blackhole_to: Vec<String>) -> PlannedTarget {
        PlannedTarget {
            agent: fleet
                .addresses
                .get(chosen.agent)
                .cloned()
                .unwrap_or_default(),
            node: chosen.node.clone(),
            target: chosen.target.clone(),
            pod: chosen.pod.clone(),
            blackhole_to,
            chosen,
        }
    }
}

/// Selects the targets of every step from the agents' ListTargets and, for labels and
/// zones, the Kubernetes API, under the command's `policy`. Changes nothing anywhere.
pub async fn plan(
    experiment: &Experiment,
    fleet: &Fleet,
    policy: TargetPolicy,
) -> Result<Vec<StepPlan>, String> {
    refuse_named_protected(experiment, policy)?;
    if let Some(need) = experiment.kube_api_need()
        && fleet.kube_api().is_none()
    {
        return Err(format!(
            "{need} needs Kubernetes API access: pass --kubeconfig, set KUBECONFIG or run in a cluster"
        ));
    }
    let candidates = fleet.candidates().await.map_err(|e| e.to_string())?;
    let seed = experiment.seed.unwrap_or_else(random_seed);
    let mut plans = Vec::new();
    for step in &experiment.method.faults {
        if let FaultSpec::Partition(partition) = &step.fault {
            let targets = plan_partition_step(partition, fleet, &candidates, seed, policy)
                .await
                .map_err(|e| format!("fault `{}`: {e}", step.name))?;
            plans.push(StepPlan {
                step: step.name.clone(),
                kind: step_kind(step).to_string(),
                fault: describe_fault(step),
                duration_ms: step.duration.as_millis() as u64,
                targets,
                delete_pods: Vec::new(),
            });
            continue;
        }
        let facts = api_facts(&step.target, fleet.kube_api())
            .await
            .map_err(|e| format!("fault `{}`: {e}", step.name))?;
        let mut chosen = select(
            &step.target,
            &fleet.addresses,
            &candidates,
            &facts,
            seed,
            policy,
        )
        .map_err(|e| format!("fault `{}`: {e}", step.name))?;
        if matches!(&step.fault, FaultSpec::Blackhole(b) if b.node_scope) {
            chosen = crate::engine::selection::one_per_node(chosen);
        }
        let delete_pods = match step.fault {
            FaultSpec::DeletePod(_) => distinct_pods(&chosen, policy)
                .map_err(|e| format!("fault `{}`: {e}", step.name))?
                .into_iter()
                .map(|(ns, name)| format!("{ns}/{name}"))
                .collect(),
            _ => Vec::new(),
        };
        plans.push(StepPlan {
            step: step.name.clone(),
            kind: step_kind(step).to_string(),
            fault: describe_fault(step),
            duration_ms: step.duration.as_millis() as u64,
            targets: chosen
                .into_iter()
                .map(|c| PlannedTarget::of(fleet, c, Vec::new()))
                .collect(),
            delete_pods,
        });
    }
    Ok(plans)
}

/// A partition's blackholes: each side selected as a step's target is, each chosen
/// target with the addresses its agent listed, then the pure plan (`engine::partition`).
async fn plan_partition_step(
    partition: &PartitionSpec,
    fleet: &Fleet,
    candidates: &[Candidate],
    seed: u64,
    policy: TargetPolicy,
) -> Result<Vec<PlannedTarget>, String> {
    let mut sides = Vec::new();
    for (side, spec) in [("from", &partition.from), ("to", &partition.to)] {
        let facts = api_facts(spec, fleet.kube_api())
            .await
            .map_err(|e| format!("partition.{side}: {e}"))?;
        let chosen = select(spec, &fleet.addresses, candidates, &facts, seed, policy)
            .map_err(|e| format!("partition.{side}: {e}"))?;
        let members: Vec<Member> = chosen
            .into_iter()
            .map(|chosen| {
                let listed = listing(&chosen, candidates);
                Member {
                    addresses: listed
                        .map(|c| {
                            c.info
                                .addresses
                                .iter()
                                .filter_map(|a| a.parse().ok())
                                .collect()
                        })
                        .unwrap_or_default(),
                    host_network: listed.is_some_and(|c| c.info.host_network),
                    chosen,
                }
            })
            .collect();
        sides.push(members);
    }
    let planned =
        plan_partition(&sides[0], &sides[1], partition.direction).map_err(|e| e.to_string())?;
    Ok(planned
        .into_iter()
        .map(|p| PlannedTarget::of(fleet, p.chosen, p.destinations))
        .collect())
}

/// What the Kubernetes API says about the parts of a selector the agents cannot know.
async fn api_facts(spec: &TargetSpec, kube: Option<&KubeApi>) -> Result<ApiFacts, String> {
    let Some(kube) = kube else {
        return match spec.kube_api_field() {
            Some(field) => Err(format!("target.{field} needs Kubernetes API access")),
            None => Ok(ApiFacts::default()),
        };
    };
    let mut facts = ApiFacts::default();
    if !spec.labels.is_empty() {
        let pods = kube
            .pods_with_labels(spec.namespace.as_deref(), &spec.labels)
            .await
            .map_err(|e| e.to_string())?;
        facts.labelled_pods = Some(pods);
    }
    if let Some(zone) = &spec.zone {
        facts.zone_nodes = Some(kube.nodes_in_zone(zone).await.map_err(|e| e.to_string())?);
    }
    Ok(facts)
}

/// One line for people: the fault a step injects, from the request the agents get.
pub fn describe_fault(step: &FaultStep) -> String {
    use api::inject_request::Fault;
    if let FaultSpec::DeletePod(delete) = &step.fault {
        return format!(
            "delete pod through the Kubernetes API, grace period {}s",
            delete.grace_period.as_secs()
        );
    }
    if let FaultSpec::Partition(partition) = &step.fault {
        let (acting, other) = match partition.direction {
            PartitionDirection::To => ("from", "to"),
            PartitionDirection::From => ("to", "from"),
            PartitionDirection::Both => ("from and to", "the other side"),
        };
        return format!(
            "partition (direction {}): on each {acting} pod, a blackhole to {other}'s addresses",
            partition.direction.name()
        );
    }
    let request = inject_request(step, "", None, &HashMap::new(), true);
    let mut parts: Vec<String> = Vec::new();
    match request.fault {
        Some(Fault::Process(p)) => {
            parts.push(format!("kill signal {}", p.signal));
            if !p.process.is_empty() {
                parts.push(format!("process {}", p.process));
            }
            if p.interval_ms > 0 {
                parts.push(format!("every {}ms", p.interval_ms));
            }
        }
        Some(Fault::Cpu(c)) => {
            parts.push(format!("cpu load {}%", c.load_percent));
            if c.cores > 0 {
                parts.push(format!("on {} cores", c.cores));
            }
        }
        Some(Fault::Memory(m)) => {
            parts.push(if m.size_bytes > 0 {
                format!("memory {} bytes", m.size_bytes)
            } else {
                format!("memory {}% of the limit", m.percent)
            });
            if m.ramp_ms > 0 {
                parts.push(format!("ramp {}ms", m.ramp_ms));
            }
        }
        Some(Fault::Network(n)) => {
            parts.push("network".into());
            let values = [
                ("delay", n.delay_us as f64 / 1000.0, "ms"),
                ("jitter", n.jitter_us as f64 / 1000.0, "ms"),
                ("loss", n.loss_percent, "%"),
                ("duplicate", n.duplicate_percent, "%"),
                ("corrupt", n.corrupt_percent, "%"),
                ("reorder", n.reorder_percent, "%"),
                ("rate", n.rate_bytes_per_second as f64, " B/s"),
            ];
            for (name, value, unit) in values {
                if value > 0.0 {
                    parts.push(format!("{name} {value}{unit}"));
                }
            }
            for (name, bytes) in [("burst", n.rate_burst_bytes), ("queue", n.rate_queue_bytes)] {
                if bytes > 0 {
                    parts.push(format!("{name} {bytes} B"));
                }
            }
            if !n.destinations.is_empty() {
                parts.push(format!("to {}", n.destinations.join(",")));
            }
            if !n.ports.is_empty() {
                let ports: Vec<String> = n.ports.iter().map(u32::to_string).collect();
                parts.push(format!("ports {}", ports.join(",")));
            }
        }
        _ => parts.push(step_kind(step).to_string()),
    }
    parts.join(" ")
}

fn random_seed() -> u64 {
    let id = uuid::Uuid::new_v4();
    let bytes = id.as_bytes();
    u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A lease holder made of the experiment name and a random suffix.
pub fn new_run_id(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(80)
        .collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("chaosctl-{clean}-{}", &suffix[..8])
}

enum Outcome {
    Elapsed,
    Recovered,
    Abort(String),
    Cancelled,
}

/// Follows the probes' samples: consecutive failures and whether the steady state holds.
struct Monitor {
    probes: Vec<Probe>,
    consecutive_bad: Vec<u32>,
    last_healthy: Vec<Option<bool>>,
    /// Since when every probe's latest sample is healthy.
    healthy_since: Option<u64>,
}

impl Monitor {
    fn new(probes: &[Probe]) -> Monitor {
        Monitor {
            probes: probes.to_vec(),
            consecutive_bad: vec![0; probes.len()],
            last_healthy: vec![None; probes.len()],
            healthy_since: if probes.is_empty() { Some(0) } else { None },
        }
    }

    fn update(&mut self, index: usize, sample: &Sample) {
        let Some(bad) = self.consecutive_bad.get_mut(index) else {
            return;
        };
        *bad = if sample.healthy { 0 } else { *bad + 1 };
        self.last_healthy[index] = Some(sample.healthy);
        let all = self.last_healthy.iter().all(|h| *h == Some(true));
        self.healthy_since = match (all, self.healthy_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(sample.at_ms),
            (false, _) => None,
        };
    }

    fn abort_reason(&self, index: usize, sample: &Sample) -> Option<String> {
        let probe = self.probes.get(index)?;
        let abort = probe.abort.as_ref()?;
        if let Some(limit) = abort.consecutive_failures
            && self.consecutive_bad[index] >= limit
        {
            return Some(format!(
                "probe {}: {} unhealthy samples in a row ({})",
                probe.name, self.consecutive_bad[index], sample.error
            ));
        }
        if let Some(limit) = abort.latency_above
            && sample.latency_ms > limit.as_secs_f64() * 1000.0
        {
            return Some(format!(
                "probe {}: latency {:.0} ms above {:?}",
                probe.name, sample.latency_ms, limit
            ));
        }
        None
    }
}

struct Run<'a> {
    experiment: &'a Experiment,
    fleet: &'a Fleet,
    options: RunOptions,
    started: Instant,
    samples: Vec<Arc<Mutex<Vec<Sample>>>>,
    receiver: mpsc::UnboundedReceiver<(usize, Sample)>,
    monitor: Monitor,
    faults: Vec<FaultRecord>,
    reasons: Vec<String>,
    rollback_errors: Vec<String>,
    cancel_closed: bool,
}

impl Run<'_> {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn say(&self, line: &str) {
        let at = self.started.elapsed().as_secs_f64();
        (self.options.progress)(&format!("[{at:7.2}s] {line}"));
    }

    /// Waits for `duration` while following the samples.
    async fn watch(
        &mut self,
        duration: Duration,
        abort_armed: bool,
        hold: Option<Duration>,
    ) -> Outcome {
        let deadline = tokio::time::Instant::now() + duration;
        let mut tick = tokio::time::interval(WATCH_TICK);
        loop {
            if let Some(hold) = hold
                && let Some(since) = self.monitor.healthy_since
                && self.now_ms().saturating_sub(since) >= hold.as_millis() as u64
            {
                return Outcome::Recovered;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Outcome::Elapsed,
                received = self.receiver.recv() => {
                    let Some((index, sample)) = received else { continue };
                    let was_healthy = self.monitor.last_healthy.get(index).copied().flatten();
                    self.monitor.update(index, &sample);
                    if was_healthy != Some(sample.healthy) {
                        let name = &self.experiment.steady_state.probes[index].name;
                        let state = if sample.healthy { "healthy".to_string() } else { format!("UNHEALTHY: {}", sample.error) };
                        self.say(&format!("probe {name} {state}"));
                    }
                    if abort_armed && let Some(reason) = self.monitor.abort_reason(index, &sample) {
                        return Outcome::Abort(reason);
                    }
                }
                changed = self.options.cancel.changed(), if !self.cancel_closed => {
                    match changed {
                        Ok(()) if *self.options.cancel.borrow() => return Outcome::Cancelled,
                        Ok(()) => {}
                        Err(_) => self.cancel_closed = true,
                    }
                }
                _ = tick.tick() => {}
            }
        }
    }

    /// Injects every target of a step; on the first failure the caller rolls back.
    async fn inject(
        &mut self,
        step_index: usize,
        step: &FaultStep,
        plan: &StepPlan,
    ) -> Result<(), String> {
        if let FaultSpec::DeletePod(delete) = &step.fault {
            return self
                .delete_pods(step_index, step, plan, delete.grace_period)
                .await;
        }
        let lease = api::Lease {
            holder: self.options.run_id.clone(),
            ttl_ms: self.experiment.lease_ttl.as_millis() as u64,
        };
        let mut labels = HashMap::new();
        labels.insert("experiment".to_string(), self.experiment.name.clone());
        labels.insert("run".to_string(), self.options.run_id.clone());
        let requests: Vec<(usize, api::InjectRequest)> = plan
            .targets
            .iter()
            .map(|t| {
                let mut request =
                    inject_request(step, &t.target, Some(lease.clone()), &labels, false);
                if !t.blackhole_to.is_empty() {
                    // A partition: this target's own blackhole, as the plan made it.
                    request.fault =
                        Some(api::inject_request::Fault::Blackhole(api::BlackholeFault {
                            destinations: t.blackhole_to.clone(),
                            ..Default::default()
                        }));
                }
                (t.chosen.agent, request)
            })
            .collect();
        let at = self.now_ms();
        let answers = self.fleet.inject_all(requests).await;
        let mut problems = Vec::new();
        for (t, answer) in plan.targets.iter().zip(answers) {
            let mut record = FaultRecord {
                step: step.name.clone(),
                kind: step_kind(step).to_string(),
                agent: t.agent.clone(),
                target: t.target.clone(),
                pod: t.pod.clone(),
                fault_id: String::new(),
                injected_at_ms: at,
                ended_at_ms: None,
                asked: if t.blackhole_to.is_empty() {
                    describe_fault(step)
                } else {
                    format!("blackhole to {}", t.blackhole_to.join(","))
                },
                achieved: String::new(),
                no_effect: None,
                error: String::new(),
                agent_index: t.chosen.agent,
                via_api: false,
                step_index,
            };
            match answer {
                Ok(fault) => {
                    self.say(&format!(
                        "injected {} ({}) into {} on {}: fault {}",
                        step.name, record.kind, t.target, t.agent, fault.id
                    ));
                    record.fault_id = fault.id;
                }
                Err(status) => {
                    let message = format!(
                        "inject {} into {} on {}: {:?}: {}",
                        step.name,
                        t.target,
                        t.agent,
                        status.code(),
                        status.message()
                    );
                    self.say(&message);
                    record.error = message.clone();
                    problems.push(message);
                }
            }
            self.faults.push(record);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// delete_pod: deletes the step's pods through the Kubernetes API, recorded like a
    /// kill (one record per pod); a pod already gone counts as deleted.
    async fn delete_pods(
        &mut self,
        step_index: usize,
        step: &FaultStep,
        plan: &StepPlan,
        grace_period: Duration,
    ) -> Result<(), String> {
        let Some(kube) = self.fleet.kube_api().cloned() else {
            return Err(format!(
                "fault `{}`: delete_pod needs Kubernetes API access",
                step.name
            ));
        };
        let at = self.now_ms();
        let deletions = plan.delete_pods.iter().map(|pod| {
            let kube = kube.clone();
            async move {
                let (namespace, name) = pod.split_once('/').unwrap_or_default();
                kube.delete_pod(namespace, name, grace_period).await
            }
        });
        let answers: Vec<Result<Deletion, KubeApiError>> =
            futures::future::join_all(deletions).await;
        let mut problems = Vec::new();
        for (pod, answer) in plan.delete_pods.iter().zip(answers) {
            let mut record = FaultRecord {
                step: step.name.clone(),
                kind: step_kind(step).to_string(),
                agent: "kubernetes-api".into(),
                target: format!("pod:{pod}"),
                pod: pod.clone(),
                fault_id: String::new(),
                injected_at_ms: at,
                ended_at_ms: None,
                asked: describe_fault(step),
                achieved: String::new(),
                no_effect: None,
                error: String::new(),
                agent_index: 0,
                via_api: true,
                step_index,
            };
            match answer {
                Ok(Deletion::Deleted) => self.say(&format!("deleted pod {pod} ({})", step.name)),
                Ok(Deletion::AlreadyGone) => {
                    self.say(&format!("pod {pod} was already gone ({})", step.name))
                }
                Err(e) => {
                    let message = format!("delete_pod {} {pod}: {e}", step.name);
                    self.say(&message);
                    record.error = message.clone();
                    problems.push(message);
                }
            }
            self.faults.push(record);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Reverts every fault not yet ended (all of them, or one step's). A deleted pod is
    /// not reverted (its controller recreates it); its record just ends.
    async fn revert(&mut self, step: Option<usize>) {
        let at = self.now_ms();
        for f in self.faults.iter_mut() {
            if f.via_api && f.ended_at_ms.is_none() && step.is_none_or(|s| s == f.step_index) {
                f.ended_at_ms = Some(at);
            }
        }
        let open: Vec<usize> = (0..self.faults.len())
            .filter(|&i| {
                let f = &self.faults[i];
                f.ended_at_ms.is_none()
                    && !f.fault_id.is_empty()
                    && step.is_none_or(|s| s == f.step_index)
            })
            .collect();
        if open.is_empty() {
            return;
        }
        let calls: Vec<(usize, String)> = open
            .iter()
            .map(|&i| (self.faults[i].agent_index, self.faults[i].fault_id.clone()))
            .collect();
        // What each fault did, while it still holds: after the revert its figures are gone.
        let read_back = self.fleet.get_all(calls.clone()).await;
        for (&i, fault) in open.iter().zip(read_back) {
            match fault {
                Ok(fault) => {
                    let assessed = assess(&fault);
                    self.faults[i].achieved = assessed.summary;
                    self.faults[i].no_effect = assessed.no_effect;
                }
                Err(e) => self.faults[i].achieved = format!("not read back: {e}"),
            }
        }
        let results = self.fleet.revert_all(calls).await;
        let at = self.now_ms();
        for (i, result) in open.into_iter().zip(results) {
            self.faults[i].ended_at_ms = Some(at);
            if let Err(e) = result {
                self.say(&format!("ROLLBACK PROBLEM: {e}"));
                self.rollback_errors
                    .push(format!("{}: {e}", self.faults[i].agent));
            }
        }
        let what = match step.and_then(|s| self.experiment.method.faults.get(s)) {
            Some(step) => format!("fault {}", step.name),
            None => "every fault".to_string(),
        };
        self.say(&format!("reverted {what}"));
    }

    /// The method: every step as the mode says. Returns how it ended.
    async fn method(&mut self, plans: &[StepPlan]) -> Outcome {
        let steps = &self.experiment.method.faults;
        match self.experiment.method.mode {
            MethodMode::Sequential => {
                for (index, (step, plan)) in steps.iter().zip(plans).enumerate() {
                    if let Err(e) = self.inject(index, step, plan).await {
                        self.reasons.push(e);
                        return Outcome::Abort("an injection failed".into());
                    }
                    let outcome = self.watch(step.duration, true, None).await;
                    if !matches!(outcome, Outcome::Elapsed) {
                        return outcome;
                    }
                    self.revert(Some(index)).await;
                    let pause = self.experiment.method.pause;
                    if index + 1 < steps.len() && !pause.is_zero() {
                        let outcome = self.watch(pause, true, None).await;
                        if !matches!(outcome, Outcome::Elapsed) {
                            return outcome;
                        }
                    }
                }
                Outcome::Elapsed
            }
            MethodMode::Parallel => {
                let mut ends = Vec::new();
                for (index, (step, plan)) in steps.iter().zip(plans).enumerate() {
                    let injected_at = self.now_ms();
                    if let Err(e) = self.inject(index, step, plan).await {
                        self.reasons.push(e);
                        return Outcome::Abort("an injection failed".into());
                    }
                    ends.push((injected_at + step.duration.as_millis() as u64, index));
                }
                // Each step is reverted when its own duration ends, not all at the
                // longest one: the report's windows are then the faults' real ones.
                ends.sort_unstable();
                for (end_ms, index) in ends {
                    let left = Duration::from_millis(end_ms.saturating_sub(self.now_ms()));
                    let outcome = self.watch(left, true, None).await;
                    if !matches!(outcome, Outcome::Elapsed) {
                        return outcome;
                    }
                    self.revert(Some(index)).await;
                }
                Outcome::Elapsed
            }
        }
    }
}

/// Carries out the experiment on the fleet. Never returns with a fault of this run
/// still active unless an agent refused the revert (then `rollback_errors` says so).
pub async fn run(experiment: &Experiment, fleet: &Fleet, options: RunOptions) -> RunResult {
    let started = Instant::now();
    let started_unix_ms = unix_ms();
    // A caller without Kubernetes API access (`chaosctl serve`) gets the usual places
    // (KUBECONFIG, ~/.kube/config, the in-cluster account) when the experiment needs it.
    let with_api;
    let mut api_problem = None;
    let fleet = match (experiment.kube_api_need(), fleet.kube_api()) {
        (Some(need), None) => match KubeApi::connect(None).await {
            Ok(kube) => {
                with_api = fleet.clone().with_kube_api(kube);
                &with_api
            }
            Err(e) => {
                api_problem = Some(format!("{need} needs the Kubernetes API: {e}"));
                fleet
            }
        },
        _ => fleet,
    };
    let (sender, receiver) = mpsc::unbounded_channel();
    let (stop_probes, probes_stopped) = watch::channel(false);
    let probes = &experiment.steady_state.probes;
    let samples: Vec<Arc<Mutex<Vec<Sample>>>> = probes
        .iter()
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    let mut run = Run {
        experiment,
        fleet,
        options,
        started,
        samples: samples.clone(),
        receiver,
        monitor: Monitor::new(probes),
        faults: Vec::new(),
        reasons: Vec::new(),
        rollback_errors: Vec::new(),
        cancel_closed: false,
    };
    let mut phases = Phases::default();
    let mut abort = None;

    // Refused by what the file names, before the Kubernetes API is even asked.
    if let Err(problem) = refuse_named_protected(experiment, run.options.policy) {
        run.reasons.push(problem);
        return finish(run, phases, Verdict::Failed, None, None, started_unix_ms).await;
    }
    if let Some(problem) = api_problem {
        run.reasons.push(problem);
        return finish(run, phases, Verdict::Failed, None, None, started_unix_ms).await;
    }
    let plans = match plan(experiment, fleet, run.options.policy).await {
        Ok(plans) => plans,
        Err(e) => {
            run.reasons.push(e);
            return finish(run, phases, Verdict::Failed, None, None, started_unix_ms).await;
        }
    };
    for p in &plans {
        let targets: Vec<&str> = p.targets.iter().map(|t| t.target.as_str()).collect();
        run.say(&format!(
            "plan: {} ({}) → {}",
            p.step,
            p.kind,
            targets.join(", ")
        ));
    }

    let probe_tasks: Vec<_> = probes
        .iter()
        .enumerate()
        .map(|(index, probe)| {
            AbortOnDrop::spawn(probe_loop(
                index,
                probe.clone(),
                started,
                Arc::clone(&samples[index]),
                sender.clone(),
                probes_stopped.clone(),
            ))
        })
        .collect();
    drop(sender);
    // The load runs with the probes, from the baseline to the end of the recovery.
    let (load_phase, load_phase_receiver) = watch::channel(Phase::Before);
    let mut load_problem = None;
    let load_run = experiment.load.as_ref().and_then(|spec| {
        run.say(&format!("load: {}", spec.description()));
        LoadRun::start(spec, started, load_phase_receiver, None)
            .map_err(|e| load_problem = Some(format!("load: {e}")))
            .ok()
    });

    run.say(&format!("baseline for {:?}", experiment.baseline));
    let mut cancelled = matches!(
        run.watch(experiment.baseline, false, None).await,
        Outcome::Cancelled
    );
    phases.baseline_end_ms = run.now_ms();
    let baseline_problems = baseline_violations(&run, phases.baseline_end_ms);
    let mut verdict = None;
    if cancelled {
        run.reasons.push("interrupted during the baseline".into());
        verdict = Some(Verdict::Aborted);
    } else if let Some(problem) = load_problem {
        run.reasons.push(problem);
        verdict = Some(Verdict::Failed);
    } else if !baseline_problems.is_empty() {
        run.reasons.extend(baseline_problems);
        run.reasons
            .push("the steady state did not hold before any fault: nothing injected".into());
        verdict = Some(Verdict::Failed);
    }

    if verdict.is_none() {
        // delete_pod steps leave nothing on the agents to hold a lease for.
        let agents: BTreeSet<usize> = plans
            .iter()
            .filter(|p| p.delete_pods.is_empty())
            .flat_map(|p| p.targets.iter().map(|t| t.chosen.agent))
            .collect();
        // Held by this future: a run that stops in any way, also a panic or a dropped
        // future, stops renewing, and the agents revert at lease expiry.
        let renewer = AbortOnDrop::spawn(renew_loop(
            fleet.clone(),
            agents.into_iter().collect(),
            run.options.run_id.clone(),
            experiment.lease_ttl.as_millis() as u64,
            Arc::clone(&run.options.progress),
        ));
        let _ = load_phase.send(Phase::During);
        phases.first_inject_ms = Some(run.now_ms());
        run.say("method");
        match run.method(&plans).await {
            Outcome::Elapsed | Outcome::Recovered => {}
            Outcome::Abort(reason) => {
                let at = run.now_ms();
                let injection_failed = !run.reasons.is_empty();
                run.say(&format!("ABORT: {reason}: reverting everything"));
                run.revert(None).await;
                let reverted_at = run.now_ms();
                run.say(&format!(
                    "every fault reverted {} ms after the abort",
                    reverted_at - at
                ));
                if injection_failed {
                    verdict = Some(Verdict::Failed);
                } else {
                    run.reasons.push(format!("aborted: {reason}"));
                    verdict = Some(Verdict::Aborted);
                }
                abort = Some(AbortRecord {
                    reason,
                    at_ms: at,
                    reverted_at_ms: Some(reverted_at),
                });
            }
            Outcome::Cancelled => {
                let at = run.now_ms();
                run.say("interrupted: reverting everything");
                run.revert(None).await;
                run.reasons.push("interrupted by the operator".into());
                verdict = Some(Verdict::Aborted);
                cancelled = true;
                abort = Some(AbortRecord {
                    reason: "interrupted".into(),
                    at_ms: at,
                    reverted_at_ms: Some(run.now_ms()),
                });
            }
        }
        run.revert(None).await;
        drop(renewer);
        phases.method_end_ms = Some(run.now_ms());
        let _ = load_phase.send(Phase::After);

        if !cancelled {
            // Recovery is judged on samples taken after the faults are gone: a steady
            // state that held through the method must still hold for `hold` after it.
            let now = run.now_ms();
            run.monitor.healthy_since = run.monitor.healthy_since.map(|s| s.max(now));
            let recovery = experiment.recovery.clone();
            run.say(&format!(
                "recovery: waiting up to {:?} for the steady state to hold for {:?}",
                recovery.timeout, recovery.hold
            ));
            match run
                .watch(recovery.timeout, false, Some(recovery.hold))
                .await
            {
                Outcome::Recovered => run.say("steady state holds again"),
                Outcome::Cancelled => run.say("interrupted during recovery"),
                _ => run.say("recovery timed out"),
            }
        }
    }

    let _ = stop_probes.send(true);
    for task in probe_tasks {
        task.join().await;
    }
    let load = match (load_run, &experiment.load) {
        (Some(load_run), Some(spec)) => {
            let end_ms = run.now_ms();
            let bounds = PhaseBounds {
                faults_from_ms: phases.first_inject_ms.unwrap_or(end_ms),
                recovery_from_ms: phases.method_end_ms.unwrap_or(end_ms),
                end_ms,
            };
            Some(load_run.stop(spec.description(), bounds).await)
        }
        _ => None,
    };
    finish(
        run,
        phases,
        verdict.unwrap_or(Verdict::Passed),
        abort,
        load,
        started_unix_ms,
    )
    .await
}

fn baseline_violations(run: &Run<'_>, end_ms: u64) -> Vec<String> {
    let mut found = Vec::new();
    for (probe, samples) in run.experiment.steady_state.probes.iter().zip(&run.samples) {
        let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
        let stats = phase_stats(samples.iter().filter(|s| s.at_ms < end_ms));
        for v in violations(&stats, &probe.tolerance) {
            found.push(format!("probe {} before the fault: {v}", probe.name));
        }
    }
    found
}

/// Computes statistics and the verdict; `verdict` is Passed unless already decided.
async fn finish(
    mut run: Run<'_>,
    mut phases: Phases,
    verdict: Verdict,
    abort: Option<AbortRecord>,
    load: Option<LoadResult>,
    started_unix_ms: i64,
) -> RunResult {
    // Whatever path got here, nothing of this run stays injected.
    run.revert(None).await;
    phases.end_ms = run.now_ms();
    let experiment = run.experiment;
    let all: Vec<Vec<Sample>> = run
        .samples
        .iter()
        .map(|s| s.lock().map(|s| s.clone()).unwrap_or_default())
        .collect();
    let inject = phases.first_inject_ms.unwrap_or(phases.end_ms);
    let method_end = phases.method_end_ms.unwrap_or(phases.end_ms);
    let mut verdict = verdict;
    let mut probes = Vec::new();
    for (probe, samples) in experiment.steady_state.probes.iter().zip(&all) {
        let before = phase_stats(samples.iter().filter(|s| s.at_ms < inject));
        let during = phase_stats(
            samples
                .iter()
                .filter(|s| s.at_ms >= inject && s.at_ms < method_end),
        );
        let after = phase_stats(samples.iter().filter(|s| s.at_ms >= method_end));
        if verdict == Verdict::Passed && experiment.hypothesis.during == DuringExpectation::Steady {
            for v in violations(&during, &probe.tolerance) {
                run.reasons
                    .push(format!("probe {} during the faults: {v}", probe.name));
                verdict = Verdict::Deviated;
            }
        }
        probes.push(ProbeResult {
            name: probe.name.clone(),
            before,
            during,
            after,
            samples: samples.clone(),
        });
    }
    let timing = match phases.first_inject_ms {
        Some(first) => timing(
            &all,
            first,
            phases.end_ms,
            experiment.recovery.hold.as_millis() as u64,
        ),
        None => Timing::default(),
    };
    if verdict == Verdict::Passed && !timing.recovered {
        run.reasons.push(format!(
            "the steady state did not hold again within the recovery timeout of {:?}",
            experiment.recovery.timeout
        ));
        verdict = Verdict::Deviated;
    }
    let per_fault = per_fault(
        &fault_windows(&experiment.method.faults, &run.faults),
        &outages(&all),
        phases.end_ms,
    );
    // A run that leaves a fault behind (until the agent's deadline or the lease's lapse
    // reverts it) did not return the system as it found it, whatever the probes saw.
    if !run.rollback_errors.is_empty() {
        run.reasons
            .push("some faults could not be reverted: see rollback_errors".into());
        verdict = Verdict::Failed;
    }
    run.say(&format!("verdict: {}", verdict.name()));
    RunResult {
        experiment: experiment.name.clone(),
        run_id: run.options.run_id.clone(),
        started_unix_ms,
        verdict,
        hypothesis: hypothesis_in_words(experiment),
        reasons: run.reasons,
        phases,
        timing,
        per_fault,
        probes,
        faults: run.faults,
        load,
        abort,
        rollback_errors: run.rollback_errors,
    }
}

fn hypothesis_in_words(experiment: &Experiment) -> String {
    let recovery = format!(
        "the steady state holds again within {:?} of the last revert, for {:?}",
        experiment.recovery.timeout, experiment.recovery.hold
    );
    match experiment.hypothesis.during {
        DuringExpectation::Steady => {
            format!("the tolerances hold during the faults, and {recovery}")
        }
        DuringExpectation::Degraded => {
            format!("the system may degrade during the faults; {recovery}")
        }
    }
}

/// One window per step that injected anything: its first injection to its last end.
fn fault_windows(steps: &[FaultStep], faults: &[FaultRecord]) -> Vec<FaultWindow> {
    steps
        .iter()
        .enumerate()
        .filter_map(|(index, step)| {
            let records: Vec<&FaultRecord> = faults
                .iter()
                .filter(|f| f.step_index == index && (f.via_api || !f.fault_id.is_empty()))
                .collect();
            let injected_at_ms = records.iter().map(|f| f.injected_at_ms).min()?;
            // A fault never ended (a failed revert) keeps its window open.
            let ended_at_ms = records
                .iter()
                .map(|f| f.ended_at_ms)
                .try_fold(0, |latest, end| end.map(|e| e.max(latest)));
            Some(FaultWindow {
                step: step.name.clone(),
                injected_at_ms,
                ended_at_ms,
            })
        })
        .collect()
}

/// Observes the probe every interval until told to stop.
async fn probe_loop(
    index: usize,
    probe: Probe,
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    sender: mpsc::UnboundedSender<(usize, Sample)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(probe.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let at_ms = started.elapsed().as_millis() as u64;
        // A stop (end of run, cancel) does not wait for a probe in flight.
        let (latency, outcome) = tokio::select! {
            observed = observe(&probe) => observed,
            _ = stop.changed() => return,
        };
        let latency_ms = latency.as_secs_f64() * 1000.0;
        let success = outcome.is_ok();
        let within_limit = probe
            .tolerance
            .latency_max
            .is_none_or(|limit| latency <= limit);
        let sample = Sample {
            at_ms,
            success,
            healthy: success && within_limit,
            latency_ms,
            error: match outcome {
                Err(e) => e,
                Ok(()) if !within_limit => format!("latency {latency_ms:.0} ms"),
                Ok(()) => String::new(),
            },
        };
        if let Ok(mut all) = samples.lock() {
            all.push(sample.clone());
        }
        let _ = sender.send((index, sample));
    }
}

/// Renews the lease every second until the run drops it.
async fn renew_loop(
    fleet: Fleet,
    agents: Vec<usize>,
    holder: String,
    ttl_ms: u64,
    progress: Progress,
) {
    let mut ticker = tokio::time::interval(LEASE_RENEW_PERIOD);
    loop {
        ticker.tick().await;
        for problem in fleet.renew_lease(&agents, &holder, ttl_ms).await {
            progress(&format!("lease renewal failed: {problem}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_of(yaml_step: &str) -> FaultStep {
        let text = format!(
            "name: x\nmethod:\n  faults:\n    - name: s\n      target: {{ namespace: shop }}\n{yaml_step}"
        );
        crate::engine::experiment::parse(&text)
            .map(|e| e.method.faults[0].clone())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_dropped_task_guard_stops_its_task() {
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = Arc::clone(&ticks);
        let guard = AbortOnDrop::spawn(async move {
            loop {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(guard);
        // Let an abort in flight land, then the count must stay where it is.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after_drop = ticks.load(std::sync::atomic::Ordering::SeqCst);
        assert!(after_drop > 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ticks.load(std::sync::atomic::Ordering::SeqCst), after_drop);
    }

    #[test]
    fn faults_are_described_for_the_plan() {
        let cases = [
            (
                "      kill: { process: httpd, interval: 5s }\n      duration: 20s\n",
                "kill signal KILL process httpd every 5000ms",
            ),
            (
                "      cpu: { load: 90 }\n      duration: 1s\n",
                "cpu load 90%",
            ),
            (
                "      memory: { percent: 80, ramp: 30s }\n      duration: 1s\n",
                "memory 80% of the limit ramp 30000ms",
            ),
            (
                "      network: { delay: 100ms, jitter: 10ms, to: [10.0.0.0/16], ports: [5432] }\n      duration: 1s\n",
                "network delay 100ms jitter 10ms to 10.0.0.0/16 ports 5432",
            ),
            (
                "      network: { rate: 1mbit, burst: 16KiB, queue: 64KiB }
      duration: 1s
",
                "network rate 125000 B/s burst 16384 B queue 65536 B",
            ),
            (
                "      delete_pod: {}\n",
                "delete pod through the Kubernetes API, grace period 0s",
            ),
        ];
        let partition = |direction: &str| {
            let text = format!(
                "name: x\nmethod:\n  faults:\n    - name: s\n      duration: 1s\n      partition: {{ from: {{ pod: a }}, to: {{ pod: b }}{direction} }}\n"
            );
            let step = crate::engine::experiment::parse(&text)
                .unwrap()
                .method
                .faults[0]
                .clone();
            describe_fault(&step)
        };
        assert_eq!(
            partition(""),
            "partition (direction both): on each from and to pod, a blackhole to the other side's addresses"
        );
        assert_eq!(
            partition(", direction: from"),
            "partition (direction from): on each to pod, a blackhole to from's addresses"
        );
        for (yaml, want) in cases {
            assert_eq!(describe_fault(&step_of(yaml)), want);
        }
    }
}
