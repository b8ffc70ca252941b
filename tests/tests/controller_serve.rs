//! `chaosctl serve` end to end: the real chaosctl binary runs a scheduled experiment
//! against a real agent (mTLS) and a containerd container, and a real Prometheus
//! (Debian's binary, on loopback, scraping every second) stores its metrics; the test
//! asks Prometheus' HTTP API for them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chaos_tests::agent::{TestAgent, binary, free_port, http_get, make_certs};
use chaos_tests::containerd::{ContainerSpec, TestContainer};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A child process that is killed and reaped on drop, also when the test fails.
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    /// SIGTERM, then wait up to `within` for a clean exit.
    fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not exit within {within:?} of SIGTERM", self.name)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(name: &'static str, program: &Path, args: &[String], log: &Path) -> Result<ChildGuard> {
    let log_file = std::fs::File::create(log)?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(ChildGuard { name, child })
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Polls `check` every 250 ms until it returns Some, for at most `within`.
fn wait_for<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(value) = check() {
            return Some(value);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// The `data.result` of an instant query.
fn query(prometheus: SocketAddr, promql: &str) -> Result<Vec<serde_json::Value>> {
    let (code, body) = http_get(prometheus, &format!("/api/v1/query?query={promql}"))?;
    if code != 200 {
        bail!("query {promql}: HTTP {code}: {body}");
    }
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    Ok(answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

#[test]
fn prometheus_scrapes_the_verdict_of_a_scheduled_experiment() -> Result<()> {
    if !Path::new(PROMETHEUS).is_file() {
        bail!("{PROMETHEUS} is missing: install Debian's `prometheus` package");
    }
    let chaosctl = binary("chaosctl")?;
    let tls = make_certs()?;
    let state = tempfile::Builder::new()
        .prefix("chaos-test-state-")
        .tempdir()?;
    let work = tempfile::Builder::new()
        .prefix("chaos-test-serve-")
        .tempdir()?;
    let container = TestContainer::start(ContainerSpec::pod("chaos-test-serve", "web-0", "web"))?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;

    let prometheus_address: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let metrics_address: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;

    // The probe watches Prometheus' own health endpoint: a real HTTP service on loopback.
    let experiment = format!(
        "\
name: chaos-test-serve-kill
baseline: 1s
steady_state:
  probes:
    - name: prometheus
      interval: 200ms
      timeout: 1s
      http: {{ url: \"http://{prometheus_address}/-/healthy\" }}
method:
  faults:
    - name: kill-web
      target: {{ namespace: chaos-test-serve, pod: web-0, container: web, mode: one }}
      duration: 1s
      kill: {{}}
recovery: {{ timeout: 10s, hold: 1s }}
"
    );
    write(work.path(), "kill.yaml", &experiment)?;
    let config = write(
        work.path(),
        "controller.yaml",
        &format!(
            "\
metrics_listen: {metrics_address}
agent_check_interval: 1s
agents:
  static: [\"{}\"]
  tls_dir: {}
experiments:
  - file: kill.yaml
    schedule: 1h
",
            agent.grpc,
            tls.path().display()
        ),
    )?;
    let prometheus_config = write(
        work.path(),
        "prometheus.yml",
        &format!(
            "\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: chaosctl
    static_configs:
      - targets: [\"{metrics_address}\"]
"
        ),
    )?;

    let mut prometheus = spawn(
        "prometheus",
        Path::new(PROMETHEUS),
        &[
            format!("--config.file={}", prometheus_config.display()),
            format!("--storage.tsdb.path={}", work.path().join("tsdb").display()),
            format!("--web.listen-address={prometheus_address}"),
        ],
        &work.path().join("prometheus.log"),
    )?;
    let prometheus_ready = wait_for(Duration::from_secs(30), || {
        http_get(prometheus_address, "/-/ready")
            .ok()
            .filter(|(code, _)| *code == 200)
    });
    if prometheus_ready.is_none() {
        bail!(
            "Prometheus never became ready: {}",
            std::fs::read_to_string(work.path().join("prometheus.log"))?
        );
    }

    let serve_log = work.path().join("serve.log");
    let mut serve = spawn(
        "chaosctl serve",
        &chaosctl,
        &["serve".into(), format!("--config={}", config.display())],
        &serve_log,
    )?;
    let healthy = wait_for(Duration::from_secs(10), || {
        http_get(metrics_address, "/healthz")
            .ok()
            .filter(|(code, _)| *code == 200)
    });
    if healthy.is_none() {
        bail!(
            "chaosctl serve never answered /healthz: {}",
            std::fs::read_to_string(&serve_log)?
        );
    }

    // The run takes about baseline + 1 s fault + recovery hold; then one scrape.
    let verdicts = wait_for(Duration::from_secs(60), || {
        query(prometheus_address, "chaosctl_experiments_total")
            .ok()
            .filter(|r| !r.is_empty())
    });
    let log = std::fs::read_to_string(&serve_log)?;
    let verdicts =
        verdicts.with_context(|| format!("Prometheus never saw a verdict; serve log:\n{log}"))?;
    eprintln!("{log}");
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    let series = &verdicts[0];
    assert_eq!(series["metric"]["experiment"], "chaos-test-serve-kill");
    assert_eq!(series["metric"]["verdict"], "passed", "{log}");
    assert_eq!(series["value"][1], "1");

    let up = query(prometheus_address, "chaosctl_agent_up")?;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["metric"]["agent"], agent.grpc.to_string());
    assert_eq!(up[0]["value"][1], "1");

    let probe_samples = query(
        prometheus_address,
        "chaosctl_probe_latency_seconds_count%7Bprobe%3D%22prometheus%22%7D",
    )?;
    assert_eq!(probe_samples.len(), 1, "{probe_samples:?}");
    let count: f64 = probe_samples[0]["value"][1]
        .as_str()
        .context("no sample count")?
        .parse()?;
    assert!(count >= 5.0, "only {count} probe samples");

    // The kill hit the container: its init is gone.
    container.wait_status("STOPPED", Duration::from_secs(10))?;

    let status = serve.terminate(Duration::from_secs(10))?;
    assert!(status.success(), "chaosctl serve exited with {status}");
    prometheus.terminate(Duration::from_secs(10))?;
    drop(agent);
    Ok(())
}
