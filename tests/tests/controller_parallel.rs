//! An experiment in parallel mode end to end: a CPU fault and a memory fault at the same
//! time on one real containerd container (1 CPU, 256 MiB) that serves HTTP (busybox
//! httpd in a TestNetns namespace, probed over the veth), through a real agent (mTLS).
//! The effects are read back from the container's own cgroup files (cpuacct / cpu.stat,
//! memory usage), not from what the agent or the report says.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chaos_proto::api;
use chaos_tests::accounting::{Accounting, CpuLock};
use chaos_tests::agent::{TestAgent, make_certs, state_dir};
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::netns::TestNetns;
use chaosctl::agents::fleet::{Fleet, FleetConfig};
use chaosctl::engine::experiment;
use chaosctl::engine::runner::{self, RunOptions, RunResult};
use chaosctl::engine::verdict::Verdict;

const MIB: u64 = 1 << 20;

/// httpd serving `/index.html` on port 80 of the netns, with 1 CPU and 256 MiB.
fn web_container(netns: &TestNetns) -> Result<TestContainer> {
    let mut spec = ContainerSpec::pod("chaos-test-parallel", "web-0", "web");
    spec.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "mkdir -p /www; echo ok > /www/index.html; httpd -f -p 80 -h /www".into(),
    ];
    spec.netns = Some(netns.path());
    spec.cpus = Some(1.0);
    spec.memory_limit_bytes = Some(256 * MIB);
    let container = TestContainer::start(spec)?;
    let address = format!("{}:80", netns.inner_ip()).parse()?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if chaos_tests::agent::http_get(address, "/index.html").is_ok_and(|(code, _)| code == 200) {
            return Ok(container);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("httpd in {} never answered", netns.name())
}

const CPU_MS: u64 = 6_000;
const MEMORY_MS: u64 = 10_000;

fn experiment_yaml(agent: &TestAgent, tls: &Path, netns: &TestNetns) -> String {
    format!(
        "\
name: chaos-test-parallel
agents:
  static: [\"{agent}\"]
  tls_dir: {tls}
baseline: 2s
steady_state:
  probes:
    - name: web
      interval: 200ms
      timeout: 1s
      http: {{ url: \"http://{web}/index.html\" }}
      tolerance: {{ success_ratio: 0.9, latency_p95: 500ms }}
method:
  mode: parallel
  faults:
    - name: burn-cpu
      target: {{ namespace: chaos-test-parallel, pod: web-0, container: web }}
      duration: {CPU_MS}ms
      cpu: {{ load: 60 }}
    - name: hold-memory
      target: {{ namespace: chaos-test-parallel, pod: web-0, container: web }}
      duration: {MEMORY_MS}ms
      memory: {{ size: 64MiB }}
recovery: {{ timeout: 10s, hold: 1s }}
hypothesis: {{ during: steady }}
",
        agent = agent.grpc,
        tls = tls.display(),
        web = netns.inner_ip(),
    )
}

async fn run(yaml: String) -> Result<RunResult> {
    let experiment = experiment::parse(&yaml)?;
    let config = FleetConfig::resolve(&experiment.agents).await?;
    let fleet = Fleet::connect(&config).await?;
    let (_cancel_sender, cancel) = tokio::sync::watch::channel(false);
    let options = RunOptions {
        run_id: runner::new_run_id(&experiment.name),
        progress: Arc::new(|line: &str| eprintln!("{line}")),
        cancel,
        policy: Default::default(),
    };
    Ok(runner::run(&experiment, &fleet, options).await)
}

/// The kinds of the agent's active faults.
async fn active_kinds(agent: &TestAgent) -> Result<BTreeSet<i32>> {
    Ok(agent
        .client()
        .await?
        .list(api::ListRequest::default())
        .await?
        .into_inner()
        .faults
        .into_iter()
        .filter(|f| f.state == api::FaultState::Active as i32)
        .map(|f| f.kind)
        .collect())
}

/// Polls until the agent's active kinds are exactly `want`, for at most `within`.
async fn wait_kinds(agent: &TestAgent, want: &[api::FaultKind], within: Duration) -> Result<()> {
    let want: BTreeSet<i32> = want.iter().map(|k| *k as i32).collect();
    let started = Instant::now();
    loop {
        let now = active_kinds(agent).await?;
        if now == want {
            return Ok(());
        }
        if started.elapsed() > within {
            bail!("active fault kinds {now:?}, want {want:?} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_and_memory_faults_in_parallel_overlap_and_are_all_reverted() -> Result<()> {
    let _lock = CpuLock::take()?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    let container = web_container(&netns)?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let accounting = Accounting::of(container.pid()?)?;

    let (idle_cpu, idle_memory, idle_pids) = tokio::task::block_in_place(|| {
        Ok::<_, anyhow::Error>((
            accounting.cpu_percent_over(Duration::from_secs(1))?,
            accounting.memory_bytes()?,
            accounting.pids()?,
        ))
    })?;
    eprintln!(
        "idle: cpu {idle_cpu:.1} %, memory {:.1} MiB, pids {idle_pids:?}",
        idle_memory as f64 / MIB as f64
    );

    let runner = tokio::spawn(run(experiment_yaml(&agent, tls.path(), &netns)));

    // Both faults at once: measure the cgroup while they are.
    use api::FaultKind::{Cpu, Memory};
    wait_kinds(&agent, &[Cpu, Memory], Duration::from_secs(20)).await?;
    // The CPU stressor's feedback settles within a couple of seconds; measure after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (both_window, both_memory, both_pids) = tokio::task::block_in_place(|| {
        Ok::<_, anyhow::Error>((
            accounting.cpu_window(Duration::from_secs(3))?,
            accounting.memory_bytes()?,
            accounting.pids()?,
        ))
    })?;
    let both_cpu = both_window.container_percent;
    eprintln!(
        "both faults: cpu {both_cpu:.1} % (machine idle {:.1} %), memory {:.1} MiB, {} processes",
        both_window.machine_idle_percent,
        both_memory as f64 / MIB as f64,
        both_pids.len()
    );

    // The CPU step ends at its own duration while the memory step holds on.
    wait_kinds(&agent, &[Memory], Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (memory_only_cpu, memory_only_memory) = tokio::task::block_in_place(|| {
        Ok::<_, anyhow::Error>((
            accounting.cpu_percent_over(Duration::from_secs(1))?,
            accounting.memory_bytes()?,
        ))
    })?;
    eprintln!(
        "memory fault alone: cpu {memory_only_cpu:.1} %, memory {:.1} MiB",
        memory_only_memory as f64 / MIB as f64
    );
    let still = active_kinds(&agent).await?;

    let result = runner.await??;
    eprintln!("{}", chaosctl::engine::report::table(&result));
    let (after_cpu, after_memory, after_pids) = tokio::task::block_in_place(|| {
        Ok::<_, anyhow::Error>((
            accounting.cpu_percent_over(Duration::from_secs(1))?,
            accounting.memory_bytes()?,
            accounting.pids()?,
        ))
    })?;
    eprintln!(
        "after: cpu {after_cpu:.1} %, memory {:.1} MiB",
        after_memory as f64 / MIB as f64
    );

    // The cgroup showed both effects at once, then each ended.
    // 60 % is asked for; the two shared cores are busy with other work, so the test
    // asks only for an unmistakable load over the idle container's (agent_resources
    // measures precision with the machine to itself), and that only when the machine had
    // CPU to give (a fresh-clone CI beside other work measured 16.7 % with it saturated).
    assert!(
        both_window.reached_or_machine_busy(20.0),
        "cpu with both faults {both_cpu:.1} %, machine idle {:.1} %",
        both_window.machine_idle_percent
    );
    assert!(
        both_memory >= idle_memory + 56 * MIB,
        "memory with both faults {both_memory} vs idle {idle_memory}"
    );
    assert!(
        both_pids.len() > idle_pids.len(),
        "no stressor in the container's cgroup: {both_pids:?}"
    );
    assert_eq!(still, BTreeSet::from([Memory as i32]), "memory ended early");
    assert!(
        memory_only_cpu < 15.0,
        "cpu after the CPU step ended {memory_only_cpu:.1} %"
    );
    assert!(
        memory_only_memory >= idle_memory + 56 * MIB,
        "memory while its step still runs {memory_only_memory}"
    );
    assert!(after_cpu < 10.0, "cpu after the run {after_cpu:.1} %");
    assert!(
        after_memory < idle_memory + 16 * MIB,
        "memory after the run {after_memory} vs idle {idle_memory}"
    );
    assert_eq!(
        after_pids, idle_pids,
        "processes left in the container's cgroup"
    );

    // The report: verdict, overlapping windows of their own lengths, phase statistics.
    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);
    assert_eq!(result.faults.len(), 2, "{:?}", result.faults);
    let window = |kind: &str| -> Result<(u64, u64)> {
        let record = result
            .faults
            .iter()
            .find(|f| f.kind == kind)
            .with_context(|| format!("no {kind} fault in the report"))?;
        assert!(record.error.is_empty(), "{}", record.error);
        assert_eq!(record.target, container.target());
        Ok((
            record.injected_at_ms,
            record.ended_at_ms.context("not ended")?,
        ))
    };
    let (cpu_from, cpu_to) = window("cpu")?;
    let (memory_from, memory_to) = window("memory")?;
    assert!(
        cpu_from.max(memory_from) < cpu_to.min(memory_to),
        "the windows do not overlap: cpu {cpu_from}..{cpu_to}, memory {memory_from}..{memory_to}"
    );
    assert!(
        (CPU_MS..CPU_MS + 1_000).contains(&(cpu_to - cpu_from)),
        "cpu lasted {} ms",
        cpu_to - cpu_from
    );
    assert!(
        (MEMORY_MS..MEMORY_MS + 1_000).contains(&(memory_to - memory_from)),
        "memory lasted {} ms",
        memory_to - memory_from
    );
    let inject = result.phases.first_inject_ms.context("no injection")?;
    let method_end = result.phases.method_end_ms.context("no method end")?;
    assert!(result.phases.baseline_end_ms >= 2_000);
    assert!(method_end >= memory_to, "{:?}", result.phases);
    let web = &result.probes[0];
    eprintln!(
        "web: before {:?}\n     during {:?}\n     after {:?}",
        web.before, web.during, web.after
    );
    assert!(web.before.count >= 8, "{:?}", web.before);
    assert_eq!(web.before.success_ratio, 1.0, "{:?}", web.before);
    // Ten seconds of faults at 200 ms: about 50 samples, nearly all good.
    assert!(web.during.count >= 35, "{:?}", web.during);
    assert!(web.during.success_ratio >= 0.9, "{:?}", web.during);
    assert!(web.after.count >= 4, "{:?}", web.after);
    assert_eq!(web.after.success_ratio, 1.0, "{:?}", web.after);
    assert!(result.timing.recovered);
    assert!(method_end > inject);

    // The agent ended both and has nothing active or journaled.
    let mut client = agent.client().await?;
    for record in &result.faults {
        let fault = client
            .get(api::GetRequest {
                id: record.fault_id.clone(),
            })
            .await?
            .into_inner();
        assert_ne!(fault.state, api::FaultState::Active as i32, "{fault:?}");
        assert_eq!(fault.lease_holder, result.run_id);
    }
    assert!(active_kinds(&agent).await?.is_empty());
    assert_eq!(chaos_tests::agent::journal_len(state.path()), 0);
    Ok(())
}
