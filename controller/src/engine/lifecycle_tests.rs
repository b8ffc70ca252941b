//! The runner's lifecycle against an in-process fake agent (see `fake_agent`): per-fault
//! attribution, abort, rollback of a half-injected step, cancellation and lease renewal,
//! in seconds and without root. The end-to-end versions, with a real agent and real
//! containers, are in tests/tests/controller_run.rs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agents::fleet::{Fleet, FleetConfig};
use crate::engine::experiment;
use crate::engine::fake_agent::{Call, FakeAgent, Script, pod_target};
use crate::engine::runner::{self, RunOptions, RunResult};
use crate::engine::verdict::Verdict;

/// The experiment's YAML with the fake agent and its service filled in.
fn experiment_yaml(agent: &FakeAgent, body: &str) -> String {
    format!(
        "name: lifecycle\nagents: {{ static: [\"{}\"], insecure_plaintext: true }}\n{}",
        agent.address,
        body.replace("SERVICE", &agent.service.to_string())
    )
}

const PROBE: &str = "\
baseline: 1s
steady_state:
  probes:
    - name: service
      interval: 100ms
      timeout: 500ms
      tcp: { address: \"SERVICE\" }
      tolerance: { success_ratio: 0.9 }
      abort: { consecutive_failures: ABORT_AFTER }
";

/// One CPU fault on pod web-0 for `duration`, under the probe, aborting never.
fn one_cpu_fault(duration: &str) -> String {
    PROBE.replace("ABORT_AFTER", "1000")
        + &format!(
            "\
method:
  faults:
    - name: cpu
      target: {{ namespace: shop, pod: web-0 }}
      duration: {duration}
      cpu: {{ load: 50 }}
recovery: {{ timeout: 2s, hold: 300ms }}
hypothesis: {{ during: degraded }}
"
        )
}

async fn run_with_cancel(
    agent: &FakeAgent,
    body: &str,
    cancel: tokio::sync::watch::Receiver<bool>,
) -> RunResult {
    let yaml = experiment_yaml(agent, body);
    let experiment = experiment::parse(&yaml).expect("the test's experiment parses");
    let config = FleetConfig::resolve(&experiment.agents)
        .await
        .expect("static agents resolve");
    let fleet = Fleet::connect(&config)
        .await
        .expect("the fake agent answers");
    let options = RunOptions {
        run_id: runner::new_run_id(&experiment.name),
        progress: Arc::new(|line: &str| eprintln!("{line}")),
        cancel,
        policy: Default::default(),
    };
    runner::run(&experiment, &fleet, options).await
}

async fn run(agent: &FakeAgent, body: &str) -> RunResult {
    let (_cancel, cancel) = tokio::sync::watch::channel(false);
    run_with_cancel(agent, body, cancel).await
}

fn injects(calls: &[Call]) -> Vec<(String, &'static str, Instant)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Inject {
                target, kind, at, ..
            } => Some((target.clone(), *kind, *at)),
            _ => None,
        })
        .collect()
}

fn reverted_ids(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Revert { id } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn ids(result: &RunResult) -> Vec<String> {
    result
        .faults
        .iter()
        .filter(|f| !f.fault_id.is_empty())
        .map(|f| f.fault_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_fault_whose_window_holds_the_outage_is_charged_with_it() {
    let agent = FakeAgent::start(Script {
        targets: vec![pod_target("web-0")],
        kill_outage: Duration::from_millis(800),
        ..Default::default()
    })
    .await
    .expect("fake agent");
    let body = PROBE.replace("ABORT_AFTER", "1000")
        + "\
method:
  faults:
    - name: cpu-first
      target: { namespace: shop, pod: web-0 }
      duration: 1500ms
      cpu: { load: 50 }
    - name: kill-second
      target: { namespace: shop, pod: web-0 }
      duration: 2s
      kill: { process: web }
recovery: { timeout: 10s, hold: 500ms }
hypothesis: { during: degraded }
";
    let result = run(&agent, &body).await;
    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);
    let [cpu, kill] = &result.per_fault[..] else {
        panic!("two faults, got {:?}", result.per_fault);
    };
    assert_eq!(
        (cpu.step.as_str(), cpu.outages),
        ("cpu-first", 0),
        "{cpu:?}"
    );
    assert!(cpu.time_to_recover_ms.is_none(), "{cpu:?}");
    assert_eq!(
        (kill.step.as_str(), kill.outages),
        ("kill-second", 1),
        "{kill:?}"
    );
    // The port is closed for 800 ms; sampling every 100 ms sees 500 to 1500 ms of it
    // even on a busy machine.
    let outage = kill.outage_ms.expect("the kill's outage has a length");
    assert!(
        (500..=1500).contains(&outage),
        "outage {outage} ms: {kill:?}"
    );
    let start = kill.outage_start_ms.expect("outage start");
    assert!(
        start < 500,
        "outage began {start} ms after the kill: {kill:?}"
    );
    let recover = kill.time_to_recover_ms.expect("recovered");
    assert!(
        recover >= outage && recover <= start + outage + 300,
        "{kill:?}"
    );
    // The run-level figure counts from the first injection, the CPU fault 1.5 s earlier.
    let run_level = result
        .timing
        .time_to_recover_ms
        .expect("run-level recovery");
    assert!(
        run_level >= recover + 1200,
        "run {run_level} ms vs fault {recover} ms"
    );
    assert!(
        agent.active_faults().is_empty(),
        "{:?}",
        agent.active_faults()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_inject_rolls_back_the_targets_already_injected() {
    let agent = FakeAgent::start(Script {
        targets: vec![pod_target("web-0"), pod_target("web-1")],
        refuse_inject: vec!["container:web-1-id".into()],
        ..Default::default()
    })
    .await
    .expect("fake agent");
    let body = PROBE.replace("ABORT_AFTER", "1000")
        + "\
method:
  faults:
    - name: cpu-both
      target: { namespace: shop, pod: \"web-*\", mode: all }
      duration: 10s
      cpu: { load: 50 }
recovery: { timeout: 5s, hold: 300ms }
hypothesis: { during: degraded }
";
    let started = Instant::now();
    let result = run(&agent, &body).await;
    assert_eq!(result.verdict, Verdict::Failed, "{:?}", result.reasons);
    assert!(
        result
            .reasons
            .iter()
            .any(|r| r.contains("scripted refusal of container:web-1-id")),
        "{:?}",
        result.reasons
    );
    let calls = agent.calls();
    let tried: Vec<String> = injects(&calls).into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(tried.len(), 2, "{tried:?}");
    // The one that took is reverted at once, not held for its 10 s.
    assert_eq!(reverted_ids(&calls), ids(&result), "{calls:?}");
    assert!(
        agent.active_faults().is_empty(),
        "{:?}",
        agent.active_faults()
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        result.rollback_errors.is_empty(),
        "{:?}",
        result.rollback_errors
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abort_condition_reverts_every_fault_at_once() {
    let agent = FakeAgent::start(Script {
        targets: vec![pod_target("web-0")],
        kill_outage: Duration::from_secs(30),
        ..Default::default()
    })
    .await
    .expect("fake agent");
    let body = PROBE.replace("ABORT_AFTER", "3")
        + "\
method:
  mode: parallel
  faults:
    - name: cpu
      target: { namespace: shop, pod: web-0 }
      duration: 20s
      cpu: { load: 50 }
    - name: kill
      target: { namespace: shop, pod: web-0 }
      duration: 20s
      kill: { process: web }
recovery: { timeout: 2s, hold: 300ms }
hypothesis: { during: degraded }
";
    let result = run(&agent, &body).await;
    assert_eq!(result.verdict, Verdict::Aborted, "{:?}", result.reasons);
    let abort = result.abort.as_ref().expect("an abort record");
    assert!(
        abort.reason.contains("unhealthy samples in a row"),
        "{abort:?}"
    );
    let reverted = abort.reverted_at_ms.expect("reverted") - abort.at_ms;
    assert!(reverted < 1000, "reverted {reverted} ms after the abort");
    let calls = agent.calls();
    let mut reverted_ids = reverted_ids(&calls);
    reverted_ids.sort();
    let mut injected = ids(&result);
    injected.sort();
    assert_eq!(injected.len(), 2);
    assert_eq!(reverted_ids, injected);
    assert!(agent.active_faults().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_reverts_everything_and_aborts() {
    let agent = FakeAgent::start(Script {
        targets: vec![pod_target("web-0")],
        ..Default::default()
    })
    .await
    .expect("fake agent");
    let body = one_cpu_fault("30s");
    let (cancel_sender, cancel) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let _ = cancel_sender.send(true);
        // Held until the run ends: a dropped sender is not a cancellation.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let result = run_with_cancel(&agent, &body, cancel).await;
    canceller.abort();
    assert_eq!(result.verdict, Verdict::Aborted, "{:?}", result.reasons);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reverted_ids(&agent.calls()), ids(&result));
    assert!(agent.active_faults().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lease_is_renewed_every_second_while_faults_hold_and_not_after() {
    let agent = FakeAgent::start(Script {
        targets: vec![pod_target("web-0")],
        ..Default::default()
    })
    .await
    .expect("fake agent");
    let body = one_cpu_fault("4500ms") + "lease_ttl: 4s\n";
    let result = run(&agent, &body).await;
    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);
    let calls = agent.calls();
    let leases: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Inject { lease, .. } => lease.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(leases.len(), 1, "{calls:?}");
    assert_eq!(leases[0].holder, result.run_id);
    assert_eq!(leases[0].ttl_ms, 4000);
    let renewals: Vec<Instant> = calls
        .iter()
        .filter_map(|c| match c {
            Call::RenewLease { holder, ttl_ms, at } => {
                assert_eq!((holder.as_str(), *ttl_ms), (result.run_id.as_str(), 4000));
                Some(*at)
            }
            _ => None,
        })
        .collect();
    // 4.5 s under a lease renewed every second: 3 to 5 renewals, none 2 s apart (the
    // lease of 4 s would then be half spent).
    assert!(
        (3..=5).contains(&renewals.len()),
        "{} renewals",
        renewals.len()
    );
    for pair in renewals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap < Duration::from_secs(2), "renewals {gap:?} apart");
    }
    let count = renewals.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = agent
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::RenewLease { .. }))
        .count();
    assert_eq!(after, count, "renewed after the run ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revert_the_agent_refuses_is_a_rollback_error_naming_agent_and_fault() {
    let agent = FakeAgent::start(Script {
        targets: vec![pod_target("web-0")],
        refuse_revert: vec!["container:web-0-id".into()],
        ..Default::default()
    })
    .await
    .expect("fake agent");
    let body = one_cpu_fault("1s");
    let result = run(&agent, &body).await;
    assert_eq!(
        result.rollback_errors.len(),
        1,
        "{:?}",
        result.rollback_errors
    );
    let error = &result.rollback_errors[0];
    assert!(error.contains(&agent.address), "{error}");
    assert!(error.contains("scripted revert failure"), "{error}");
    // The probes stayed healthy, but a fault was left on the node.
    assert_eq!(result.verdict, Verdict::Failed, "{:?}", result.reasons);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fill_the_workload_already_exceeded_is_flagged_as_no_effect() {
    let agent = FakeAgent::start(Script {
        targets: vec![pod_target("web-0")],
        cpu_status: Some(chaos_proto::api::CpuStatus {
            requested_percent: 50.0,
            achieved_percent: 82.0,
            workers: 1,
            cgroup_percent: 82.0,
            stressor_percent: 1.0,
            limit_cores: 1.0,
            stressors_running: 1,
        }),
        ..Default::default()
    })
    .await
    .expect("fake agent");
    let body = one_cpu_fault("1s");
    let result = run(&agent, &body).await;
    let fault = &result.faults[0];
    let reason = fault.no_effect.as_deref().expect("flagged as no effect");
    assert!(reason.contains("already used 81 %"), "{reason}");
    assert!(fault.achieved.contains("82"), "{}", fault.achieved);
    let got = agent
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Get))
        .count();
    assert_eq!(got, 1, "read back once, before the revert");
}
