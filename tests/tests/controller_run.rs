//! Experiments end to end: a real agent on loopback (mTLS), real containerd containers,
//! and a real HTTP service as the system under test (busybox httpd in a container that
//! has a TestNetns network namespace; the probe reaches it over the veth).

use chaos_tests::agent::state_dir;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chaos_proto::api;
use chaos_tests::agent::{TestAgent, binary, make_certs};
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::netns::TestNetns;
use chaosctl::agents::fleet::{Fleet, FleetConfig};
use chaosctl::engine::experiment;
use chaosctl::engine::runner::{self, RunOptions, RunResult};
use chaosctl::engine::verdict::Verdict;

/// An httpd serving `/index.html` on port 80 of the netns. With `restart`, the shell
/// starts it again a second after it dies, as a supervisor would.
fn web_container(netns: &TestNetns, pod: &str, restart: bool) -> Result<TestContainer> {
    web_container_with(netns, pod, restart, None)
}

/// The same, with a CFS quota of `cpus`.
fn web_container_with(
    netns: &TestNetns,
    pod: &str,
    restart: bool,
    cpus: Option<f64>,
) -> Result<TestContainer> {
    let serve = "httpd -f -p 80 -h /www";
    let script = if restart {
        format!("mkdir -p /www; echo ok > /www/index.html; while :; do {serve}; sleep 1; done")
    } else {
        format!("mkdir -p /www; echo ok > /www/index.html; {serve}; sleep 3600")
    };
    let mut spec = ContainerSpec::pod("shop", pod, "web");
    spec.command = vec!["/bin/sh".into(), "-c".into(), script];
    spec.netns = Some(netns.path());
    spec.cpus = cpus;
    let container = TestContainer::start(spec)?;
    wait_http(netns, Duration::from_secs(20))?;
    Ok(container)
}

fn wait_http(netns: &TestNetns, within: Duration) -> Result<()> {
    let address = format!("{}:80", netns.inner_ip()).parse()?;
    let started = Instant::now();
    while started.elapsed() < within {
        if chaos_tests::agent::http_get(address, "/index.html").is_ok_and(|(code, _)| code == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("httpd in {} never answered", netns.name())
}

/// The experiment's YAML with the agent and the web address filled in.
fn experiment_yaml(agent: &TestAgent, tls: &Path, netns: &TestNetns, body: &str) -> String {
    format!(
        "agents:\n  static: [\"{}\"]\n  tls_dir: {}\n{}",
        agent.grpc,
        tls.display(),
        body.replace("WEB", &netns.inner_ip().to_string())
    )
}

async fn run(yaml: &str) -> Result<RunResult> {
    let experiment = experiment::parse(yaml)?;
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

const KILL_WEB: &str = "\
name: chaos-test-kill-web
baseline: 2s
steady_state:
  probes:
    - name: web
      interval: 200ms
      timeout: 1s
      http: { url: \"http://WEB/index.html\" }
      tolerance: { success_ratio: 0.95, latency_p99: 500ms }
method:
  faults:
    - name: kill-httpd
      target: { namespace: shop, pod: \"POD\", container: web, mode: one }
      duration: 1s
      kill: { process: httpd }
recovery: { timeout: 20s, hold: 1s }
hypothesis: { during: HYPOTHESIS }
";

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_with_a_supervisor_recovers_and_passes() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    let container = web_container(&netns, "web-0", true)?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let yaml = experiment_yaml(
        &agent,
        tls.path(),
        &netns,
        &KILL_WEB
            .replace("HYPOTHESIS", "degraded")
            .replace("POD", "web-0*"),
    );
    let result = run(&yaml).await?;
    eprintln!("{}", chaosctl::engine::report::table(&result));

    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);
    let web = &result.probes[0];
    assert!(web.before.count >= 5, "{:?}", web.before);
    assert_eq!(web.before.success_ratio, 1.0);
    assert!(web.before.p99_ms.is_some());
    assert!(web.during.count >= 2, "{:?}", web.during);
    assert!(
        web.during.success_ratio < 1.0,
        "the kill was not seen: {:?}",
        web.during
    );
    assert!(
        web.after.count >= 3 && web.after.success_ratio > 0.0,
        "{:?}",
        web.after
    );
    let detect = result
        .timing
        .time_to_detect_ms
        .context("no time to detect")?;
    let recover = result
        .timing
        .time_to_recover_ms
        .context("no time to recover")?;
    // httpd is back a second after the kill (the shell sleeps 1 s).
    assert!(detect < 1_000, "detected after {detect} ms");
    assert!(
        (800..10_000).contains(&recover),
        "recovered after {recover} ms"
    );
    assert!(result.timing.recovered);

    // The agent did kill the container's httpd, and the fault is done.
    assert_eq!(result.faults.len(), 1);
    assert_eq!(result.faults[0].target, container.target());
    let mut client = agent.client().await?;
    let fault = client
        .get(api::GetRequest {
            id: result.faults[0].fault_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(fault.state, api::FaultState::Completed as i32);
    assert_eq!(fault.lease_holder, result.run_id);
    let html = chaosctl::engine::report::html(&result);
    assert!(html.contains("<svg") && html.contains("kill-httpd") && html.contains("<polyline"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hypothesis_that_the_web_stays_up_through_a_kill_deviates() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    let _container = web_container(&netns, "web-1", true)?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let yaml = experiment_yaml(
        &agent,
        tls.path(),
        &netns,
        &KILL_WEB
            .replace("HYPOTHESIS", "steady")
            .replace("POD", "web-1"),
    );
    let result = run(&yaml).await?;
    eprintln!("{}", chaosctl::engine::report::table(&result));
    assert_eq!(result.verdict, Verdict::Deviated, "{:?}", result.reasons);
    assert!(
        result
            .reasons
            .iter()
            .any(|r| r.contains("during the faults") && r.contains("success ratio")),
        "{:?}",
        result.reasons
    );
    // Deviated, yet it came back: recovery is measured all the same.
    assert!(result.timing.time_to_recover_ms.is_some());
    Ok(())
}

/// A CPU fault that harms nothing, then a kill: the run's time to recover counts from the
/// CPU fault's injection, the kill's own from its own. Outage and recovery go to the kill.
const CPU_THEN_KILL: &str = "\
name: chaos-test-cpu-then-kill
baseline: 2s
steady_state:
  probes:
    - name: web
      interval: 100ms
      timeout: 1s
      http: { url: \"http://WEB/index.html\" }
      tolerance: { success_ratio: 0.5 }
method:
  mode: sequential
  pause: 1s
  faults:
    - name: cpu-first
      target: { namespace: shop, pod: \"POD\", container: web, mode: one }
      duration: 3s
      cpu: { load: 40 }
    - name: kill-httpd
      target: { namespace: shop, pod: \"POD\", container: web, mode: one }
      duration: 1s
      kill: { process: httpd }
recovery: { timeout: 20s, hold: 1s }
hypothesis: { during: degraded }
";

#[tokio::test(flavor = "multi_thread")]
async fn each_fault_has_its_own_outage_and_recovery_when_only_the_second_causes_one() -> Result<()>
{
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    let _container = web_container(&netns, "web-3", true)?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let yaml = CPU_THEN_KILL.replace("POD", "web-3");
    let result = run(&experiment_yaml(&agent, tls.path(), &netns, &yaml)).await?;
    let table = chaosctl::engine::report::table(&result);
    eprintln!("{table}");
    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);
    let [cpu, kill] = result.per_fault.as_slice() else {
        bail!("not one entry per fault: {:?}", result.per_fault);
    };
    assert_eq!(
        (cpu.step.as_str(), kill.step.as_str()),
        ("cpu-first", "kill-httpd")
    );
    assert_eq!(cpu.outages, 0, "the CPU fault caused no outage: {cpu:?}");
    assert_eq!(
        (cpu.outage_start_ms, cpu.outage_ms, cpu.time_to_recover_ms),
        (None, None, None)
    );
    assert!(kill.outages >= 1, "{kill:?}");
    // The kill's window is 1 s; httpd fails at once and is back a second after it dies
    // (the shell sleeps 1 s), within the probe's 1 s timeout either side.
    let start = kill.outage_start_ms.context("no outage start")?;
    let length = kill.outage_ms.context("no outage length")?;
    let recover = kill.time_to_recover_ms.context("no recovery")?;
    assert!(start < 2_000, "outage {start} ms after the kill: {kill:?}");
    assert!((500..8_000).contains(&length), "{kill:?}");
    assert!(recover >= start + length && recover < 10_000, "{kill:?}");
    // The run-level figure counts from the CPU fault: at least its 3 s and the 1 s pause
    // longer than the kill's own.
    let run_recover = result
        .timing
        .time_to_recover_ms
        .context("no run-level recovery")?;
    let first_injection = result.phases.first_inject_ms.context("no injection")?;
    let kill_injected = kill.injected_at_ms - first_injection;
    assert!(kill_injected >= 4_000, "{:?}", result.per_fault);
    assert_eq!(run_recover, kill_injected + recover, "{:?}", result.timing);
    assert!(table.contains("  cpu-first    no outage"), "{table}");
    assert!(
        table.contains("  kill-httpd   outage at +") && table.contains("recovered at +"),
        "{table}"
    );
    let html = chaosctl::engine::report::html(&result);
    assert!(
        html.contains("fault kill-httpd's injection</td><td>"),
        "{html}"
    );
    Ok(())
}

/// Renders `html` in headless Chromium (Debian's `chromium`) at `width` x `height` and
/// returns the screenshot's RGB pixels by row.
fn screenshot(
    dir: &Path,
    name: &str,
    html: &str,
    width: u32,
    height: u32,
) -> Result<Vec<Vec<[u8; 3]>>> {
    let page = dir.join(format!("{name}.html"));
    let picture = dir.join(format!("{name}.png"));
    std::fs::write(&page, html)?;
    let output = Command::new("chromium")
        .args([
            "--headless",
            // Root in a test: Chromium's sandbox refuses to run as root.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            &format!("--window-size={width},{height}"),
            &format!("--screenshot={}", picture.display()),
        ])
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .context("running chromium (apt-get install chromium; scripts/test installs it)")?;
    if !output.status.success() || !picture.exists() {
        bail!(
            "chromium: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if let Some(keep) = std::env::var_os("CHAOS_REPORT_SCREENSHOT_DIR") {
        std::fs::copy(&picture, Path::new(&keep).join(format!("{name}.png")))?;
    }
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&picture)?));
    let mut reader = decoder.read_info()?;
    let mut buffer = vec![0; reader.output_buffer_size().context("no PNG buffer size")?];
    let info = reader.next_frame(&mut buffer)?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => bail!("screenshot in {other:?}"),
    };
    ensure_eq(
        info.bit_depth as u8,
        png::BitDepth::Eight as u8,
        "bit depth",
    )?;
    Ok(buffer[..info.buffer_size()]
        .chunks(info.line_size)
        .map(|row| row.chunks(channels).map(|p| [p[0], p[1], p[2]]).collect())
        .collect())
}

fn ensure_eq(found: u8, want: u8, what: &str) -> Result<()> {
    if found != want {
        bail!("{what}: {found}, not {want}");
    }
    Ok(())
}

/// `#rrggbb` painted with `opacity` over white, as the browser blends it.
fn over_white(hex: &str, opacity: f64) -> [u8; 3] {
    let channel = |i: usize| {
        let value = u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap_or(0) as f64;
        (255.0 - opacity * (255.0 - value)).round() as u8
    };
    [channel(0), channel(1), channel(2)]
}

fn near(pixel: [u8; 3], colour: [u8; 3]) -> bool {
    pixel
        .iter()
        .zip(colour)
        .all(|(a, b)| (i16::from(*a) - i16::from(b)).abs() <= 3)
}

fn count(pixels: &[Vec<[u8; 3]>], colour: [u8; 3]) -> usize {
    pixels
        .iter()
        .flatten()
        .filter(|p| near(**p, colour))
        .count()
}

/// The HTML report as Chromium renders it: the summary card's verdict badge, and in the
/// probe's chart the two faults' windows (two separate shaded stretches), the latency line,
/// the kill's failed samples and the axes' text. The chart is also rendered alone, so the
/// legend's swatches (same colours) do not count for it.
#[tokio::test(flavor = "multi_thread")]
async fn the_html_report_renders_in_headless_chromium_with_its_chart_marked() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    let _container = web_container(&netns, "web-4", true)?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    // Under a light HTTP load, so that the page has its load table and throughput chart.
    let yaml = CPU_THEN_KILL.replace("POD", "web-4").replacen(
        "method:",
        "load: { http: { url: \"http://WEB/index.html\", rate: 20 } }\nmethod:",
        1,
    );
    let result = run(&experiment_yaml(&agent, tls.path(), &netns, &yaml)).await?;
    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);
    assert!(result.probes[0].samples.iter().any(|s| !s.success));
    let html = chaosctl::engine::report::html(&result);
    for text in [
        "<table class=\"load\">",
        "<th>THROUGHPUT</th>",
        "<h2>load: throughput</h2>",
        "PASSED",
        "Hypothesis:",
        "the system may degrade during the faults",
        "fault kill-httpd's injection",
        "<table class=\"statistics\">",
        "time since the start of the run (s)",
        "latency (ms)",
        ">baseline</text>",
        ">faults</text>",
        ">recovery</text>",
        ">cpu-first</text>",
        ">kill-httpd</text>",
    ] {
        assert!(html.contains(text), "the report lacks {text:?}");
    }
    assert!(
        !html.contains("http://") || !html.contains("<script"),
        "self-contained"
    );
    assert!(
        !html.contains("<script") && !html.contains(" src="),
        "self-contained"
    );

    let dir = tempfile::tempdir()?;
    let page = screenshot(dir.path(), "report", &html, 1100, 2000)?;
    let badge = count(&page, over_white("#1e8449", 1.0));
    assert!(badge > 300, "verdict badge: {badge} green pixels");
    let throughput = count(&page, over_white("#117a65", 1.0));
    assert!(
        throughput > 100,
        "the load's throughput line: {throughput} pixels"
    );

    let start = html.find("<svg").context("no chart")?;
    let end = html[start..].find("</svg>").context("chart not closed")? + start + 6;
    let chart_only = format!(
        "<!DOCTYPE html><html><body style=\"margin:0\">{}</body></html>",
        &html[start..end]
    );
    let chart = screenshot(dir.path(), "chart", &chart_only, 1000, 360)?;
    let window = over_white("#f5b041", 0.35);
    let shaded = count(&chart, window);
    let line = count(&chart, over_white("#2471a3", 1.0));
    let failed = count(&chart, over_white("#c0392b", 1.0));
    let text = chart
        .iter()
        .flatten()
        .filter(|p| p.iter().all(|c| *c < 90))
        .count();
    eprintln!("chart: {shaded} shaded, {line} line, {failed} failed, {text} dark pixels");
    assert!(shaded > 5_000, "fault windows: {shaded} pixels");
    assert!(line > 100, "latency line: {line} pixels");
    assert!(failed > 20, "failed samples: {failed} pixels");
    assert!(text > 400, "axes, ticks and labels: {text} dark pixels");
    // Two windows: the columns shaded halfway down the plot form two separate stretches
    // (a gap of a few columns is the latency line crossing a window, not a new one).
    let middle = &chart[chart.len() / 2];
    let shaded_columns: Vec<usize> = (0..middle.len())
        .filter(|&x| near(middle[x], window))
        .collect();
    let runs = shaded_columns
        .windows(2)
        .filter(|pair| pair[1] - pair[0] > 8)
        .count()
        + usize::from(!shaded_columns.is_empty());
    assert_eq!(runs, 2, "shaded stretches across the chart's middle row");
    Ok(())
}

/// A CPU fault on a web server limited to half a CPU, under load: LOAD is the `load`
/// section, POD the pod.
const LOADED_CPU_FAULT: &str = "\
name: chaos-test-load-under-cpu
baseline: 3s
steady_state:
  probes:
    - name: web
      interval: 250ms
      timeout: 2s
      http: { url: \"http://WEB/index.html\" }
      tolerance: { success_ratio: 0.5 }
load: LOAD
method:
  faults:
    - name: cpu-hog
      target: { namespace: shop, pod: \"POD\", container: web, mode: one }
      duration: 5s
      cpu: { load: 95, mode: MODE }
recovery: { timeout: 20s, hold: 3s }
hypothesis: { during: degraded }
";

/// Runs `LOADED_CPU_FAULT` with `load` and the CPU `mode` against a fresh httpd limited
/// to half a CPU in pod `pod`; the run must pass. Returns the result and its text table.
async fn run_loaded_cpu_fault(pod: &str, load: &str, mode: &str) -> Result<(RunResult, String)> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    let _container = web_container_with(&netns, pod, false, Some(0.5))?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let yaml = LOADED_CPU_FAULT
        .replace("LOAD", load)
        .replace("MODE", mode)
        .replace("POD", pod);
    let result = run(&experiment_yaml(&agent, tls.path(), &netns, &yaml)).await?;
    let table = chaosctl::engine::report::table(&result);
    eprintln!("{table}");
    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);
    Ok((result, table))
}

/// The built-in HTTP load over four connections carries the run: the server's throughput
/// falls while a CPU starve takes 95 % of its half CPU, and comes back after the revert.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_load_shows_the_throughput_drop_during_a_cpu_fault_and_its_return() -> Result<()> {
    let (result, table) = run_loaded_cpu_fault(
        "web-5",
        "{ http: { url: \"http://WEB/index.html\", connections: 4 } }",
        "starve",
    )
    .await?;
    let load = result.load.as_ref().context("no load figures")?;
    let throughput = |i: usize| load.phases[i].throughput_per_s.unwrap_or(0.0);
    let (before, during, after) = (throughput(0), throughput(1), throughput(2));
    for phase in &load.phases {
        let requests = phase.requests.as_ref().context("no request figures")?;
        assert!(requests.count > 0, "{phase:?}");
        assert!(requests.p99_ms.is_some(), "{phase:?}");
    }
    assert!(before > 20.0, "the baseline carried {before:.1} requests/s");
    assert!(
        during < 0.6 * before,
        "throughput during the CPU fault {during:.1}/s, before {before:.1}/s"
    );
    assert!(
        after > 0.6 * before,
        "throughput after the revert {after:.1}/s, before {before:.1}/s"
    );
    assert!(!load.throughput_by_second.is_empty());
    assert!(table.contains("load: http GET"), "{table}");
    let html = chaosctl::engine::report::html(&result);
    assert!(
        html.contains("answered requests per second"),
        "no throughput chart"
    );
    Ok(())
}

/// A real benchmark (ApacheBench against the server) as an exec load, once per phase:
/// its requests per second and mean time per request are read from its output for each
/// of the three phases.
#[tokio::test(flavor = "multi_thread")]
async fn an_exec_load_runs_a_benchmark_per_phase_and_parses_its_figures() -> Result<()> {
    let ab = "{ exec: { command: [ab, -q, -t, \"2\", -n, \"1000000\", -c, \"4\", \"http://WEB/index.html\"], \
              figures: { requests_per_s: \"Requests per second: +([0-9.]+)\", \
              ms_per_request: \"Time per request: +([0-9.]+) \\\\[ms\\\\] \\\\(mean\\\\)\" } } }";
    let (result, table) = run_loaded_cpu_fault("web-6", ab, "fill").await?;
    let load = result.load.as_ref().context("no load figures")?;
    assert_eq!(load.exec_runs.len(), 3, "{:?}", load.exec_runs);
    for (phase, run) in load.phases.iter().zip(&load.exec_runs) {
        assert_eq!(phase.phase, run.phase, "{:?}", load.exec_runs);
        assert_eq!(
            (phase.runs, phase.failed_runs),
            (Some(1), Some(0)),
            "{phase:?}"
        );
        for figure in ["requests_per_s", "ms_per_request"] {
            let value = phase.figures.get(figure).copied();
            assert!(value.is_some_and(|v| v > 0.0), "{figure} in {phase:?}");
        }
    }
    assert!(
        table.contains("requests_per_s") && table.contains("runs: before 1"),
        "{table}"
    );
    Ok(())
}

/// What each fault did, beside what it asked: a CPU fill of 50 % on a container whose own
/// busy loop already takes all of its half CPU adds nothing and is flagged so; a memory
/// fill next to it holds what it asked and is not.
#[tokio::test(flavor = "multi_thread")]
async fn a_fault_that_took_no_effect_is_flagged_beside_what_it_asked() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    let mut spec = ContainerSpec::pod("shop", "busy-0", "web");
    spec.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "mkdir -p /www; echo ok > /www/index.html; (while :; do :; done) & httpd -f -p 80 -h /www"
            .into(),
    ];
    spec.netns = Some(netns.path());
    spec.cpus = Some(0.5);
    let _container = TestContainer::start(spec)?;
    wait_http(&netns, Duration::from_secs(20))?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let yaml = "\
name: chaos-test-no-effect
baseline: 1s
steady_state:
  probes:
    - name: web
      interval: 250ms
      timeout: 2s
      http: { url: \"http://WEB/index.html\" }
      tolerance: { success_ratio: 0.5 }
method:
  mode: parallel
  faults:
    - name: fill-busy
      target: { namespace: shop, pod: busy-0, container: web, mode: one }
      duration: 3s
      cpu: { load: 50 }
    - name: hold-memory
      target: { namespace: shop, pod: busy-0, container: web, mode: one }
      duration: 3s
      memory: { size: 16MiB }
recovery: { timeout: 10s, hold: 1s }
hypothesis: { during: degraded }
";
    let result = run(&experiment_yaml(&agent, tls.path(), &netns, yaml)).await?;
    let table = chaosctl::engine::report::table(&result);
    eprintln!("{table}");
    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);
    let fault = |step: &str| {
        result
            .faults
            .iter()
            .find(|f| f.step == step)
            .with_context(|| format!("no fault {step}"))
    };
    let fill = fault("fill-busy")?;
    assert_eq!(fill.asked, "cpu load 50%");
    assert!(fill.achieved.contains("asked 50 %"), "{fill:?}");
    let why = fill
        .no_effect
        .as_deref()
        .context("the fill was not flagged")?;
    assert!(
        why.contains("already used") && why.contains("added nothing"),
        "{why}"
    );
    let memory = fault("hold-memory")?;
    assert!(
        memory.achieved.starts_with("held ") && memory.achieved.contains(" of 16 MiB"),
        "{memory:?}"
    );
    assert_eq!(memory.no_effect, None, "{memory:?}");
    assert!(
        table.contains("NO EFFECT: the container already used"),
        "{table}"
    );
    let html = chaosctl::engine::report::html(&result);
    assert!(html.contains("Faults that took no effect:") && html.contains("fill-busy on"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abort_condition_reverts_every_fault_within_a_second() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    // No supervisor: once httpd is killed the probe fails until the end.
    let _container = web_container(&netns, "web-2", false)?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let body = "\
name: chaos-test-abort
baseline: 1s
steady_state:
  probes:
    - name: web
      interval: 100ms
      timeout: 500ms
      http: { url: \"http://WEB/index.html\" }
      abort: { consecutive_failures: 2 }
method:
  faults:
    - name: keep-killing-httpd
      target: { targets: [\"pod:shop/web-2/web\"] }
      duration: 60s
      kill: { process: httpd, interval: 500ms }
recovery: { timeout: 2s, hold: 1s }
";
    let started = Instant::now();
    let result = run(&experiment_yaml(&agent, tls.path(), &netns, body)).await?;
    eprintln!("{}", chaosctl::engine::report::table(&result));
    assert_eq!(result.verdict, Verdict::Aborted, "{:?}", result.reasons);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the 60 s fault ran on"
    );
    let abort = result.abort.as_ref().context("no abort record")?;
    let reverted_at = abort.reverted_at_ms.context("not reverted")?;
    assert!(
        reverted_at - abort.at_ms < 1_000,
        "reverted {} ms after the abort",
        reverted_at - abort.at_ms
    );
    // The agent's own record agrees: reverted on request, within 1 s of the abort.
    let mut client = agent.client().await?;
    let fault = client
        .get(api::GetRequest {
            id: result.faults[0].fault_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(fault.state, api::FaultState::Reverted as i32);
    let abort_unix_ms = result.started_unix_ms + abort.at_ms as i64;
    assert!(
        fault.ended_unix_ms - abort_unix_ms < 1_000,
        "the agent ended the fault {} ms after the abort",
        fault.ended_unix_ms - abort_unix_ms
    );
    assert!(
        client
            .list(api::ListRequest::default())
            .await?
            .into_inner()
            .faults
            .is_empty()
    );
    Ok(())
}

/// A container whose shell restarts `sleep` whenever it dies.
fn looping_container(pod: &str) -> Result<TestContainer> {
    let mut spec = ContainerSpec::pod("shop", pod, "app");
    spec.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "while :; do sleep 3600; done".into(),
    ];
    TestContainer::start(spec)
}

/// Kills the chaosctl child on drop, so a failing test leaves no process behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_chaosctl_leaves_the_agent_to_revert_at_lease_lapse() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = looping_container("lease-0")?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let work = state_dir()?;
    let file = work.path().join("lease.yaml");
    std::fs::write(
        &file,
        format!(
            "name: chaos-test-lease\nagents:\n  static: [\"{}\"]\n  tls_dir: {}\n\
             lease_ttl: 3s\nmethod:\n  faults:\n    - name: keep-killing\n      \
             target: {{ targets: [\"{}\"] }}\n      duration: 120s\n      \
             kill: {{ process: sleep, interval: 500ms }}\n",
            agent.grpc,
            tls.path().display(),
            container.target()
        ),
    )?;
    let child = Command::new(binary("chaosctl")?)
        .arg("run")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut child = ChildGuard(child);
    let mut client = agent.client().await?;

    // Wait for the injection, then outlive the ttl: renewals keep the fault alive.
    let mut fault = None;
    for _ in 0..200 {
        let active = client
            .list(api::ListRequest::default())
            .await?
            .into_inner()
            .faults;
        if let Some(f) = active.into_iter().next() {
            fault = Some(f);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fault = fault.context("chaosctl injected nothing within 10 s")?;
    assert!(fault.lease_holder.starts_with("chaosctl-chaos-test-lease-"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let alive = client
        .get(api::GetRequest {
            id: fault.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        alive.state,
        api::FaultState::Active as i32,
        "the lease was not renewed: {}",
        alive.message
    );

    child.0.kill()?;
    let killed = Instant::now();
    child.0.wait()?;
    loop {
        let now = client
            .get(api::GetRequest {
                id: fault.id.clone(),
            })
            .await?
            .into_inner();
        if now.state == api::FaultState::LeaseExpired as i32 {
            break;
        }
        if killed.elapsed() > Duration::from_secs(4) {
            bail!(
                "still {:?} {:?} after SIGKILL (ttl 3 s)",
                now.state,
                killed.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    eprintln!("the agent reverted {took:?} after chaosctl was killed (ttl 3 s)");
    assert!(took <= Duration::from_secs(4), "{took:?}");
    Ok(())
}

/// A run's task that ends without reaching its end (a panic, an abort: tokio drops the
/// run's future either way) stops renewing its lease, so the agent reverts at lease lapse
/// instead of keeping the fault for its full duration.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_task_that_dies_midway_stops_renewing_its_lease() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = looping_container("stop-0")?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let yaml = format!(
        "name: chaos-test-dies\nagents:\n  static: [\"{}\"]\n  tls_dir: {}\n\
         lease_ttl: 3s\nmethod:\n  faults:\n    - name: keep-killing\n      \
         target: {{ targets: [\"{}\"] }}\n      duration: 120s\n      \
         kill: {{ process: sleep, interval: 500ms }}\n",
        agent.grpc,
        tls.path().display(),
        container.target()
    );
    let task = tokio::spawn(async move { run(&yaml).await });
    let mut client = agent.client().await?;

    let mut fault = None;
    for _ in 0..200 {
        let active = client
            .list(api::ListRequest::default())
            .await?
            .into_inner()
            .faults;
        if let Some(f) = active.into_iter().next() {
            fault = Some(f);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fault = fault.context("the run injected nothing within 10 s")?;
    assert!(fault.lease_holder.starts_with("chaosctl-chaos-test-dies-"));
    // Past the ttl, the renewals keep it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let alive = client
        .get(api::GetRequest {
            id: fault.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        alive.state,
        api::FaultState::Active as i32,
        "the lease was not renewed: {}",
        alive.message
    );

    task.abort();
    let died = Instant::now();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    loop {
        let now = client
            .get(api::GetRequest {
                id: fault.id.clone(),
            })
            .await?
            .into_inner();
        if now.state == api::FaultState::LeaseExpired as i32 {
            break;
        }
        // ttl 3 s after the last renewal (at most 1 s before the abort), plus the margin
        // of a loaded machine.
        if died.elapsed() > Duration::from_secs(8) {
            bail!(
                "still {:?} {:?} after the run's task died (ttl 3 s): its lease is still renewed",
                now.state,
                died.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the agent reverted {:?} after the run's task died (ttl 3 s)",
        died.elapsed()
    );
    Ok(())
}

#[test]
fn an_unknown_field_is_refused_with_its_line() -> Result<()> {
    let work = state_dir()?;
    let file = work.path().join("bad.yaml");
    std::fs::write(
        &file,
        "name: chaos-test-bad\nbaseline: 1s\nmethod:\n  faults:\n    - name: k\n      \
         target: { targets: [\"pid:1\"] }\n      kill: {}\n      durration: 5s\n",
    )?;
    let output = Command::new(binary("chaosctl")?)
        .arg("run")
        .arg(&file)
        .arg("--dry-run")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown field `durration`") && stderr.contains("line 8"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn every_shipped_experiment_parses() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            experiment::load(&path).with_context(|| format!("{}", path.display()))?;
            seen += 1;
        }
    }
    assert!(seen >= 6, "only {seen} experiments in {}", dir.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_selection_and_injects_nothing() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = looping_container("dry-0")?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let work = state_dir()?;
    let file = work.path().join("dry.yaml");
    std::fs::write(
        &file,
        format!(
            "name: chaos-test-dry\nagents:\n  static: [\"{}\"]\n  tls_dir: {}\n\
             method:\n  faults:\n    - name: kill-app\n      \
             target: {{ namespace: shop, pod: \"dry-*\", mode: all }}\n      kill: {{}}\n",
            agent.grpc,
            tls.path().display(),
        ),
    )?;
    let output = Command::new(binary("chaosctl")?)
        .args(["-o", "json", "run"])
        .arg(&file)
        .arg("--dry-run")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let plan: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(plan["plan"][0]["targets"][0]["target"], container.target());
    assert_eq!(plan["plan"][0]["targets"][0]["pod"], "shop/dry-0/app");
    let mut client = agent.client().await?;
    let all = client
        .list(api::ListRequest {
            include_ended: true,
        })
        .await?
        .into_inner()
        .faults;
    assert!(all.is_empty(), "a dry run injected {all:?}");
    Ok(())
}

/// `text` with `from` replaced by `to` once, failing when `from` is not there: the shipped
/// experiment must still say what this test assumes it says.
fn replace_once(text: &str, from: &str, to: &str) -> Result<String> {
    if text.matches(from).count() != 1 {
        bail!("the shipped experiment no longer holds `{from}` exactly once");
    }
    Ok(text.replacen(from, to, 1))
}

/// The seeds' experiment as shipped (experiments/kill-postgres-primary.yaml), with only
/// what is the cluster's replaced: this machine's agent, the server's address instead of
/// the Services, a pod name instead of CloudNativePG's role label (no Kubernetes API here),
/// no Flask probe, shorter phases and pgbench runs, and the kill aimed at the postgres
/// processes (in the cluster, the pod's restart and the failover do what this
/// container's supervising shell does here).
fn postgres_experiment(agent: &TestAgent, tls: &Path, url: &str) -> Result<String> {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/kill-postgres-primary.yaml"),
    )?;
    let agents = format!(
        "agents:\n  static: [\"{}\"]\n  tls_dir: {}\n",
        agent.grpc,
        tls.display()
    );
    let flask = "    - name: flask-health\n      interval: 1s\n      http: { url: \"http://flask.shop.svc.cluster.local:8080/health\" }\n      tolerance: { success_ratio: 0.99, latency_p99: 2s }\n";
    let mut yaml = shipped;
    for (from, to) in [
        (
            "agents:\n  dns: { name: chaos-agent.chaos-control.svc.cluster.local }\n  tls_dir: /etc/chaos-control/tls\n",
            agents.as_str(),
        ),
        ("baseline: 60s", "baseline: 8s"),
        ("postgresql://probe@postgres-rw.db.svc:5432/app", url),
        (flask, ""),
        ("-T, \"10\"", "-T, \"2\""),
        ("postgresql://bench@postgres-rw.db.svc:5432/app", url),
        (
            "labels: { cnpg.io/instanceRole: primary }",
            "pod: postgres-0",
        ),
        ("duration: 30s", "duration: 6s"),
        (
            "kill: { signal: KILL }",
            "kill: { signal: KILL, process: postgres }",
        ),
        (
            "recovery: { timeout: 180s, hold: 20s }",
            "recovery: { timeout: 60s, hold: 6s }",
        ),
    ] {
        yaml = replace_once(&yaml, from, to)?;
    }
    Ok(yaml)
}

/// The seeds' story: pgbench before, during and after the PostgreSQL server is killed, in
/// the table they made by hand, and the time the database took to answer SQL again.
#[tokio::test(flavor = "multi_thread")]
async fn killing_postgres_under_pgbench_gives_the_before_during_after_table() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    let postgres = chaos_tests::postgres::PostgresContainer::start(&netns, "postgres-0")?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let yaml = postgres_experiment(&agent, tls.path(), &postgres.url())?;
    let result = run(&yaml).await?;
    eprintln!("{}", chaosctl::engine::report::table(&result));
    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);

    let load = result.load.as_ref().context("no load figures")?;
    let [before, during, after] = &load.phases[..] else {
        bail!("three phases, got {:?}", load.phases);
    };
    let figure = |phase: &chaosctl::engine::load::LoadPhase, name: &str| {
        phase.figures.get(name).copied().unwrap_or(0.0)
    };
    for (phase, name) in [(before, "before"), (after, "after")] {
        assert!(phase.runs >= Some(1), "{name}: {phase:?}");
        assert!(figure(phase, "tps") > 0.0, "{name}: {phase:?}");
        assert!(figure(phase, "transactions") > 0.0, "{name}: {phase:?}");
        assert!(figure(phase, "latency_ms") > 0.0, "{name}: {phase:?}");
    }
    assert_eq!(before.failed_runs, Some(0), "{before:?}");
    // The pgbench run the kill cut short exits non-zero.
    assert!(during.failed_runs >= Some(1), "{during:?}");

    let kill = result.per_fault.first().context("no per-fault figures")?;
    eprintln!("kill: {kill:?}");
    assert_eq!(kill.outages, 1, "{kill:?}");
    let recovered = kill
        .time_to_recover_ms
        .context("never answered SQL again")?;
    assert!(recovered < 60_000, "{kill:?}");
    let signalled = &result.faults[0].achieved;
    assert!(signalled.contains("signalled"), "{signalled}");
    drop(postgres);
    Ok(())
}
