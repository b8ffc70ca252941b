//! `chaosctl serve` end to end: the real chaosctl binary runs scheduled experiments and
//! experiments submitted through its Controller gRPC API (mTLS) against a real agent
//! (mTLS) and containerd containers, and a real Prometheus (Debian's binary, on
//! loopback, scraping every second) stores its metrics; the tests ask Prometheus' HTTP
//! API for them with PromQL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chaos_proto::api;
use chaos_proto::api::controller_client::ControllerClient;
use chaos_tests::agent::{TestAgent, binary, free_port, http_get, make_certs, state_dir};
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::tls::{CONTROLLER_TLS_FILES, SecretVolume, eventually};
use chaosctl::agents::client::AgentAddress;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

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

/// A directory for one test's configuration, experiments and logs.
fn work_dir() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("chaos-test-serve-")
        .tempdir()?)
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

/// A free loopback address.
fn loopback() -> Result<SocketAddr> {
    Ok(format!("127.0.0.1:{}", free_port()?).parse()?)
}

/// Debian's Prometheus on loopback, scraping `target` every second.
fn start_prometheus(work: &Path, target: SocketAddr) -> Result<(ChildGuard, SocketAddr)> {
    if !Path::new(PROMETHEUS).is_file() {
        bail!("{PROMETHEUS} is missing: install Debian's `prometheus` package");
    }
    let address = loopback()?;
    let config = write(
        work,
        "prometheus.yml",
        &format!(
            "\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: chaosctl
    static_configs:
      - targets: [\"{target}\"]
"
        ),
    )?;
    let prometheus = spawn(
        "prometheus",
        Path::new(PROMETHEUS),
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", work.join("tsdb").display()),
            format!("--web.listen-address={address}"),
        ],
        &work.join("prometheus.log"),
    )?;
    let ready = wait_for(Duration::from_secs(30), || {
        http_get(address, "/-/ready")
            .ok()
            .filter(|(code, _)| *code == 200)
    });
    if ready.is_none() {
        bail!(
            "Prometheus never became ready: {}",
            std::fs::read_to_string(work.join("prometheus.log"))?
        );
    }
    Ok((prometheus, address))
}

/// `chaosctl serve` with the API on `api` (mTLS with the certificates of `tls`),
/// waiting until /healthz answers.
fn start_serve(
    work: &Path,
    config: &Path,
    metrics: SocketAddr,
    api: SocketAddr,
    tls: &Path,
    extra: &[&str],
) -> Result<ChildGuard> {
    let log = work.join("serve.log");
    let mut args = vec![
        "serve".to_string(),
        format!("--config={}", config.display()),
        format!("--api-listen={api}"),
        format!("--tls-dir={}", tls.display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let serve = spawn("chaosctl serve", &binary("chaosctl")?, &args, &log)?;
    let healthy = wait_for(Duration::from_secs(10), || {
        http_get(metrics, "/healthz")
            .ok()
            .filter(|(code, _)| *code == 200)
    });
    if healthy.is_none() {
        bail!(
            "chaosctl serve never answered /healthz: {}",
            std::fs::read_to_string(&log)?
        );
    }
    Ok(serve)
}

fn serve_config(
    work: &Path,
    metrics: SocketAddr,
    agent: &TestAgent,
    tls: &Path,
) -> Result<PathBuf> {
    write(
        work,
        "controller.yaml",
        &format!(
            "metrics_listen: {metrics}\nagent_check_interval: 1s\nagents:\n  static: [\"{}\"]\n  tls_dir: {}\n\
             probe_destinations: [\"127.0.0.1\"]\n",
            agent.grpc,
            tls.display()
        ),
    )
}

/// The API's client with the client certificate of `tls`, as `chaosctl submit` connects.
async fn controller(api: SocketAddr, tls: &Path) -> Result<ControllerClient<Channel>> {
    Ok(chaosctl::serve::service::connect(&AgentAddress {
        address: api.to_string(),
        tls_dir: Some(tls.to_path_buf()),
        plaintext: false,
    })
    .await?)
}

/// Polls GetRun until the run has finished, for at most `within`.
async fn wait_finished(
    client: &mut ControllerClient<Channel>,
    run_id: &str,
    within: Duration,
) -> Result<api::Run> {
    let started = Instant::now();
    loop {
        let run = client
            .get_run(api::GetRunRequest {
                run_id: run_id.to_string(),
                progress_offset: 0,
            })
            .await?
            .into_inner();
        if run.state == api::RunState::Finished as i32 {
            return Ok(run);
        }
        if started.elapsed() > within {
            bail!(
                "run {run_id} still running after {within:?}: {:?}",
                run.progress
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn prometheus_scrapes_the_verdict_of_a_scheduled_experiment() -> Result<()> {
    let tls = make_certs()?;
    let state = state_dir()?;
    let work = work_dir()?;
    let container = TestContainer::start(ContainerSpec::pod("chaos-test-serve", "web-0", "web"))?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let metrics_address = loopback()?;
    let (mut prometheus, prometheus_address) = start_prometheus(work.path(), metrics_address)?;

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
    let config = serve_config(work.path(), metrics_address, &agent, tls.path())?;
    let mut config_text = std::fs::read_to_string(&config)?;
    config_text.push_str("experiments:\n  - file: kill.yaml\n    schedule: 1h\n");
    std::fs::write(&config, config_text)?;
    let serve_log = work.path().join("serve.log");
    let mut serve = start_serve(
        work.path(),
        &config,
        metrics_address,
        loopback()?,
        tls.path(),
        &[],
    )?;

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

/// `?query=` with the PromQL percent-encoded (enough for selectors and function calls).
fn encode_query(promql: &str) -> String {
    promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_submitted_over_mtls_is_judged_and_prometheus_sees_it() -> Result<()> {
    let tls = make_certs()?;
    let state = state_dir()?;
    let work = work_dir()?;
    let mut spec = ContainerSpec::pod("chaos-test-submit", "db-0", "db");
    spec.memory_limit_bytes = Some(256 << 20);
    let _container = TestContainer::start(spec)?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let (metrics_address, api_address) = (loopback()?, loopback()?);
    let (mut prometheus, prometheus_address) = start_prometheus(work.path(), metrics_address)?;
    let config = serve_config(work.path(), metrics_address, &agent, tls.path())?;
    let mut serve = start_serve(
        work.path(),
        &config,
        metrics_address,
        api_address,
        tls.path(),
        &[],
    )?;

    // No agents in the file: the controller's configuration supplies them.
    let experiment = format!(
        "\
name: chaos-test-serve-submitted
baseline: 1s
steady_state:
  probes:
    - name: prometheus
      interval: 200ms
      timeout: 1s
      http: {{ url: \"http://{prometheus_address}/-/healthy\" }}
method:
  faults:
    - name: hold-memory
      target: {{ namespace: chaos-test-submit, pod: db-0, container: db }}
      duration: 2s
      memory: {{ size: 32MiB }}
recovery: {{ timeout: 10s, hold: 1s }}
"
    );
    let mut client = controller(api_address, tls.path()).await?;
    let run_id = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: experiment,
        })
        .await?
        .into_inner()
        .run_id;
    // While the fault holds, the controller's agent check (every 1 s) counts it.
    let scrape_during_fault = wait_for(Duration::from_secs(5), || {
        http_get(metrics_address, "/metrics")
            .ok()
            .map(|(_, text)| text)
            .filter(|text| text.contains("chaosctl_active_faults{kind=\"memory\""))
    })
    .context("the controller never counted the active memory fault")?;
    assert!(
        run_id.starts_with("chaosctl-chaos-test-serve-submitted-"),
        "{run_id}"
    );
    let run = wait_finished(&mut client, &run_id, Duration::from_secs(60)).await?;
    let log = std::fs::read_to_string(work.path().join("serve.log"))?;
    assert_eq!(run.verdict, "passed", "{:?}\n{log}", run.reasons);
    assert_eq!(run.source, api::RunSource::Api as i32);
    assert!(
        run.finished_unix_ms >= run.started_unix_ms + 3_000,
        "{run:?}"
    );
    assert!(
        run.progress
            .iter()
            .any(|l| l.contains("injected hold-memory")),
        "{:?}",
        run.progress
    );
    assert!(
        run.report_table.contains("hold-memory"),
        "{}",
        run.report_table
    );
    let report: serde_json::Value = serde_json::from_str(&run.report_json)?;
    assert_eq!(report["run_id"], run_id.as_str());
    assert_eq!(report["faults"][0]["kind"], "memory");
    let fault_id = report["faults"][0]["fault_id"]
        .as_str()
        .context("no fault id in the report")?
        .to_string();
    // The agent injected it under the run's lease, and it is over.
    let fault = agent
        .client()
        .await?
        .get(api::GetRequest { id: fault_id })
        .await?
        .into_inner();
    assert_eq!(fault.lease_holder, run_id);
    assert_ne!(fault.state, api::FaultState::Active as i32);

    let listed = client
        .list_runs(api::ListRunsRequest {})
        .await?
        .into_inner()
        .runs;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].run_id, run_id);
    assert!(
        listed[0].report_json.is_empty(),
        "ListRuns carries no reports"
    );

    // Prometheus sees the verdict and the probe's samples of this experiment.
    let promql =
        "sum by (verdict) (chaosctl_experiments_total{experiment=\"chaos-test-serve-submitted\"})";
    let verdicts = wait_for(Duration::from_secs(15), || {
        query(prometheus_address, &encode_query(promql))
            .ok()
            .filter(|r| !r.is_empty())
    })
    .with_context(|| format!("Prometheus never answered {promql}"))?;
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    assert_eq!(verdicts[0]["metric"]["verdict"], "passed");
    assert_eq!(verdicts[0]["value"][1], "1");
    let samples = query(
        prometheus_address,
        &encode_query(
            "chaosctl_probe_latency_seconds_count{experiment=\"chaos-test-serve-submitted\"}",
        ),
    )?;
    assert_eq!(samples.len(), 1, "{samples:?}");
    let count: f64 = samples[0]["value"][1]
        .as_str()
        .context("no sample count")?
        .parse()?;
    assert!(count >= 10.0, "only {count} probe samples");

    // scripts/test checks the dashboard's and alerts' metric names against these scrapes
    // of a controller holding a fault and then having judged the run (an idle one
    // exports no experiment series).
    if let Some(out) = std::env::var_os("CHAOS_CONTROLLER_SCRAPE_OUT") {
        let (status, text) = http_get(metrics_address, "/metrics")?;
        assert_eq!(status, 200, "{text}");
        std::fs::write(&out, format!("{scrape_during_fault}{text}"))
            .with_context(|| format!("writing the scrape to {}", PathBuf::from(&out).display()))?;
    }

    // The command line sees the same run.
    let output = Command::new(binary("chaosctl")?)
        .args([
            "-o",
            "json",
            "runs",
            "--controller",
            &api_address.to_string(),
        ])
        .arg("--tls-dir")
        .arg(tls.path())
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let runs: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    assert_eq!(runs[0]["verdict"], "passed");
    assert_eq!(runs[0]["source"], "api");

    let status = serve.terminate(Duration::from_secs(10))?;
    assert!(status.success(), "chaosctl serve exited with {status}");
    prometheus.terminate(Duration::from_secs(10))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_unknown_runs_and_clients_without_a_certificate_are_refused() -> Result<()> {
    let (tls, other) = (make_certs()?, make_certs()?);
    let state = state_dir()?;
    let work = work_dir()?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let (metrics_address, api_address) = (loopback()?, loopback()?);
    let config = serve_config(work.path(), metrics_address, &agent, tls.path())?;
    let mut serve = start_serve(
        work.path(),
        &config,
        metrics_address,
        api_address,
        tls.path(),
        &[],
    )?;
    let mut client = controller(api_address, tls.path()).await?;

    // The control case: the right certificate is served.
    client.list_runs(api::ListRunsRequest {}).await?;

    // Reflection lists the Controller service only, so grpcurl works without protos.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let channel = chaosctl::agents::client::endpoint_for(
        &AgentAddress {
            address: api_address.to_string(),
            tls_dir: Some(tls.path().to_path_buf()),
            plaintext: false,
        },
        chaosctl::agents::certs::CONTROLLER_SERVER_NAME,
    )?
    .connect()
    .await?;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let listed = match answers.message().await?.and_then(|r| r.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => bail!("unexpected reflection answer: {other:?}"),
    };
    assert!(
        listed.contains(&"chaoscontrol.v1.Controller".to_string()),
        "{listed:?}"
    );
    assert!(
        !listed.contains(&"chaoscontrol.v1.Agent".to_string()),
        "{listed:?}"
    );

    // A misspelt key on line 7.
    let bad = "name: chaos-test-bad\nmethod:\n  faults:\n    - name: k\n      \
               target: { targets: [\"pid:1\"] }\n      kill: {}\n      durration: 5s\n";
    let status = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: bad.to_string(),
        })
        .await
        .expect_err("a misspelt key was accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(
        status.message().contains("durration") && status.message().contains("line 7"),
        "{}",
        status.message()
    );
    // Through the command line, with the code and the line on stderr.
    let file = write(work.path(), "bad.yaml", bad)?;
    let output = Command::new(binary("chaosctl")?)
        .args(["submit", "--wait", "--controller", &api_address.to_string()])
        .arg(&file)
        .arg("--tls-dir")
        .arg(tls.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("line 7"),
        "{stderr}"
    );
    // Exec probes would run commands on the controller: refused unless allowed.
    let exec = "name: chaos-test-exec\nsteady_state:\n  probes:\n    - name: sh\n      \
                exec: { command: [\"true\"] }\nmethod:\n  faults:\n    - name: k\n      \
                target: { targets: [\"pid:1\"] }\n      kill: {}\n";
    let status = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: exec.to_string(),
        })
        .await
        .expect_err("an exec probe was accepted");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    // Nothing was started by the refusals.
    let runs = client
        .list_runs(api::ListRunsRequest {})
        .await?
        .into_inner()
        .runs;
    assert!(runs.is_empty(), "{runs:?}");

    // A valid file whose selector matches nothing: `submit --wait` follows the run to its
    // verdict, prints the report and exits like `chaosctl run` (1 = failed).
    let nothing = write(
        work.path(),
        "nothing.yaml",
        "name: chaos-test-nothing\nmethod:\n  faults:\n    - name: k\n      \
         target: { namespace: chaos-test-no-such-namespace }\n      kill: {}\n",
    )?;
    let output = Command::new(binary("chaosctl")?)
        .args(["submit", "--wait", "--controller", &api_address.to_string()])
        .arg(&nothing)
        .arg("--tls-dir")
        .arg(tls.path())
        .output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stderr.contains("submitted"), "{stderr}");
    let runs = client
        .list_runs(api::ListRunsRequest {})
        .await?
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].verdict, "failed");

    for call in ["get", "cancel"] {
        let status = match call {
            "get" => client
                .get_run(api::GetRunRequest {
                    run_id: "chaosctl-nope-12345678".into(),
                    progress_offset: 0,
                })
                .await
                .map(drop),
            _ => client
                .cancel_run(api::CancelRunRequest {
                    run_id: "chaosctl-nope-12345678".into(),
                })
                .await
                .map(drop),
        }
        .expect_err("an unknown run was found");
        assert_eq!(status.code(), tonic::Code::NotFound, "{call}: {status}");
        assert!(status.message().contains("run_id"), "{status}");
    }

    // Without a client certificate, with one from another CA, and in plain text: refused.
    let ca = std::fs::read(tls.path().join("ca.pem"))?;
    let no_cert = Endpoint::from_shared(format!("https://{api_address}"))?.tls_config(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .domain_name(chaosctl::agents::certs::CONTROLLER_SERVER_NAME),
    )?;
    let plaintext = Endpoint::from_shared(format!("http://{api_address}"))?;
    for (what, endpoint) in [("no certificate", no_cert), ("plain text", plaintext)] {
        let refused = match endpoint
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
        {
            Err(_) => true,
            Ok(channel) => ControllerClient::new(channel)
                .list_runs(api::ListRunsRequest {})
                .await
                .is_err(),
        };
        assert!(refused, "a client with {what} was served");
    }
    let foreign = chaosctl::serve::service::connect(&AgentAddress {
        address: api_address.to_string(),
        tls_dir: Some(other.path().to_path_buf()),
        plaintext: false,
    })
    .await;
    let foreign_refused = match foreign {
        Err(_) => true,
        Ok(mut client) => client.list_runs(api::ListRunsRequest {}).await.is_err(),
    };
    assert!(foreign_refused, "a certificate from another CA was served");

    let status = serve.terminate(Duration::from_secs(10))?;
    assert!(status.success(), "chaosctl serve exited with {status}");
    Ok(())
}

#[test]
fn serve_refuses_to_start_the_api_without_certificates_unless_told() -> Result<()> {
    let work = work_dir()?;
    let config = write(
        work.path(),
        "controller.yaml",
        &format!("metrics_listen: {}\n", loopback()?),
    )?;
    let output = Command::new(binary("chaosctl")?)
        .args(["serve", "--api-listen", &loopback()?.to_string()])
        .arg(format!("--config={}", config.display()))
        .env_remove("CHAOS_TLS_DIR")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--tls-dir") && stderr.contains("controller.pem"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_mid_fault_reverts_every_fault_within_a_second() -> Result<()> {
    let tls = make_certs()?;
    let state = state_dir()?;
    let work = work_dir()?;
    let mut spec = ContainerSpec::pod("chaos-test-cancel", "app-0", "app");
    spec.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "while :; do sleep 3600; done".into(),
    ];
    spec.memory_limit_bytes = Some(256 << 20);
    let container = TestContainer::start(spec)?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let (metrics_address, api_address) = (loopback()?, loopback()?);
    let config = serve_config(work.path(), metrics_address, &agent, tls.path())?;
    let mut serve = start_serve(
        work.path(),
        &config,
        metrics_address,
        api_address,
        tls.path(),
        &["--max-concurrent-runs=1"],
    )?;
    let experiment = format!(
        "\
name: chaos-test-serve-cancel
method:
  mode: parallel
  faults:
    - name: hold-memory
      target: {{ targets: [\"{target}\"] }}
      duration: 60s
      memory: {{ size: 32MiB }}
    - name: keep-killing
      target: {{ targets: [\"{target}\"] }}
      duration: 60s
      kill: {{ process: sleep, interval: 500ms }}
",
        target = container.target()
    );
    let mut client = controller(api_address, tls.path()).await?;
    let run_id = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: experiment.clone(),
        })
        .await?
        .into_inner()
        .run_id;

    // Both faults active on the agent under the run's lease.
    let mut agent_client = agent.client().await?;
    let mut faults = Vec::new();
    let started = Instant::now();
    while faults.len() < 2 {
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "the run injected {} of 2 faults in 20 s:\n{}",
                faults.len(),
                std::fs::read_to_string(work.path().join("serve.log"))?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        faults = agent_client
            .list(api::ListRequest::default())
            .await?
            .into_inner()
            .faults
            .into_iter()
            .filter(|f| f.lease_holder == run_id && f.state == api::FaultState::Active as i32)
            .collect();
    }

    // The limit is one run at a time: a second submission is refused, not queued.
    let status = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: experiment.clone(),
        })
        .await
        .expect_err("a run beyond --max-concurrent-runs was accepted");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");

    let cancel_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let cancel_started = Instant::now();
    let run = client
        .cancel_run(api::CancelRunRequest {
            run_id: run_id.clone(),
        })
        .await?
        .into_inner();
    let cancel_took = cancel_started.elapsed();
    eprintln!("CancelRun answered after {cancel_took:?}");
    assert_eq!(run.state, api::RunState::Finished as i32, "{run:?}");
    assert_eq!(run.verdict, "aborted", "{:?}", run.reasons);

    // The agent's own records: both reverted on request, within 1 s of the cancel.
    for fault in &faults {
        let now = agent_client
            .get(api::GetRequest {
                id: fault.id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(
            now.state,
            api::FaultState::Reverted as i32,
            "{}: {}",
            now.id,
            now.message
        );
        let after = now.ended_unix_ms - cancel_unix_ms;
        eprintln!("fault {} reverted {after} ms after CancelRun", now.id);
        assert!(
            after < 1_000,
            "fault {} reverted {after} ms after the cancel",
            now.id
        );
    }
    let active = agent_client
        .list(api::ListRequest::default())
        .await?
        .into_inner()
        .faults;
    assert!(active.is_empty(), "{active:?}");
    let report: serde_json::Value = serde_json::from_str(&run.report_json)?;
    assert_eq!(report["verdict"], "aborted");
    assert_eq!(report["abort"]["reason"], "interrupted");
    // A finished run cannot be cancelled again.
    let status = client
        .cancel_run(api::CancelRunRequest { run_id })
        .await
        .expect_err("a finished run was cancelled");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");

    // SIGTERM to serve while a run holds faults: it reverts them before it exits.
    let run_id = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: experiment.clone(),
        })
        .await?
        .into_inner()
        .run_id;
    let started = Instant::now();
    loop {
        let held = agent_client
            .list(api::ListRequest::default())
            .await?
            .into_inner()
            .faults
            .iter()
            .filter(|f| f.lease_holder == run_id)
            .count();
        if held == 2 {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("the second run injected {held} of 2 faults in 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = serve.terminate(Duration::from_secs(10))?;
    assert!(status.success(), "chaosctl serve exited with {status}");
    let left = agent_client
        .list(api::ListRequest::default())
        .await?
        .into_inner()
        .faults;
    assert!(left.is_empty(), "serve exited leaving {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_serves_a_rotated_certificate_without_a_restart() -> Result<()> {
    let (old, new) = (make_certs()?, make_certs()?);
    let state = state_dir()?;
    let work = work_dir()?;
    let agent = TestAgent::start_tls(old.path(), state.path())?;
    let mut volume = SecretVolume::new(old.path(), &CONTROLLER_TLS_FILES)?;
    let (metrics_address, api_address) = (loopback()?, loopback()?);
    let config = serve_config(work.path(), metrics_address, &agent, old.path())?;
    let api_tls = format!("--api-tls-dir={}", volume.root.path().display());
    let _serve = start_serve(
        work.path(),
        &config,
        metrics_address,
        api_address,
        old.path(),
        &[&api_tls, "--tls-reload-secs=1"],
    )?;
    let served = |client_tls: PathBuf| async move {
        match controller(api_address, &client_tls).await {
            Ok(mut client) => client.list_runs(api::ListRunsRequest {}).await.is_ok(),
            Err(_) => false,
        }
    };

    // The control case, and the next set not yet accepted.
    assert!(served(old.path().to_path_buf()).await, "the first set");
    assert!(
        !served(new.path().to_path_buf()).await,
        "the next set, early"
    );

    volume.update(new.path(), None)?;
    eventually("a client of the new CA is served", || {
        served(new.path().to_path_buf())
    })
    .await?;
    assert!(
        !served(old.path().to_path_buf()).await,
        "a client of the old CA was served after the rotation"
    );
    let (_, metrics) = http_get(metrics_address, "/metrics")?;
    assert!(
        metrics.contains("chaosctl_tls_reloads_total{outcome=\"replaced\"} 1"),
        "{metrics}"
    );
    Ok(())
}

/// Submitted probes are checked before anything runs: a URL that could split the request
/// is InvalidArgument naming the field; a destination or a file the controller does not
/// list is PermissionDenied naming the field, the probe and the destination.
#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_probes_that_split_requests_or_leave_its_destinations() -> Result<()> {
    let tls = make_certs()?;
    let work = work_dir()?;
    let (metrics_address, api_address) = (loopback()?, loopback()?);
    // Nothing listens at the agent's address: an accepted run fails to reach it.
    let config = write(
        work.path(),
        "controller.yaml",
        &format!(
            "metrics_listen: {metrics_address}\nagents:\n  static: [\"{}\"]\n  tls_dir: {}\n\
             probe_destinations: [\"127.0.0.1\"]\nprobe_files: [/run/chaos-test-token]\n",
            loopback()?,
            tls.path().display()
        ),
    )?;
    let mut serve = start_serve(
        work.path(),
        &config,
        metrics_address,
        api_address,
        tls.path(),
        &[],
    )?;
    let mut client = controller(api_address, tls.path()).await?;
    let experiment = |probe: &str| {
        format!(
            "name: chaos-test-probe-policy\nsteady_state:\n  probes:\n    - name: web\n      \
             {probe}\nmethod:\n  faults:\n    - name: k\n      \
             target: {{ targets: [\"pid:1\"] }}\n      kill: {{}}\n"
        )
    };
    // Only loopback addresses, and none of them is ever connected to.
    let cases = [
        (
            "http: { url: \"http://127.0.0.1:9/\\r\\nX-Injected: 1\" }",
            tonic::Code::InvalidArgument,
            "steady_state.probes[0].http.url: contains a carriage return (CR) at byte 19",
        ),
        (
            "http: { url: \"http://127.0.0.1:9/a\\nb\" }",
            tonic::Code::InvalidArgument,
            "steady_state.probes[0].http.url: contains a line feed (LF) at byte 20",
        ),
        (
            "http: { url: \"http://127.0.0.2:9/health\" }",
            tonic::Code::PermissionDenied,
            "steady_state.probes[0].http.url: probe `web` connects to 127.0.0.2:9, which is not in \
             the controller's probe_destinations",
        ),
        (
            "tcp: { address: \"127.0.0.3:5432\" }",
            tonic::Code::PermissionDenied,
            "steady_state.probes[0].tcp.address: probe `web` connects to 127.0.0.3:5432, which is \
             not in the controller's probe_destinations",
        ),
        (
            "promql: { url: \"https://127.0.0.4:9090\", query: up, min: 1 }",
            tonic::Code::PermissionDenied,
            "steady_state.probes[0].promql.url: probe `web` connects to 127.0.0.4:9090, which is \
             not in the controller's probe_destinations",
        ),
        (
            "http: { url: \"http://127.0.0.1:9/\", bearer_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token }",
            tonic::Code::PermissionDenied,
            "steady_state.probes[0].http.bearer_token_file: probe `web` reads \
             /var/run/secrets/kubernetes.io/serviceaccount/token, which is not in the \
             controller's probe_files",
        ),
    ];
    for (probe, code, expected) in cases {
        let status = client
            .submit_run(api::SubmitRunRequest {
                experiment_yaml: experiment(probe),
            })
            .await
            .expect_err(probe);
        eprintln!("{probe}: {:?} {}", status.code(), status.message());
        assert_eq!(status.code(), code, "{probe}: {status}");
        assert_eq!(
            status.message(),
            format!("experiment_yaml: {expected}"),
            "{probe}"
        );
    }
    let runs = client
        .list_runs(api::ListRunsRequest {})
        .await?
        .into_inner()
        .runs;
    assert!(runs.is_empty(), "a refused submission started {runs:?}");

    // The control case: a listed destination and a listed file are accepted.
    let accepted = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: experiment(
                "http: { url: \"http://127.0.0.1:9/health\", bearer_token_file: /run/chaos-test-token }",
            ),
        })
        .await?
        .into_inner()
        .run_id;
    let run = wait_finished(&mut client, &accepted, Duration::from_secs(30)).await?;
    assert!(
        run.reasons
            .iter()
            .any(|r| r.contains("cannot reach the agents")),
        "{run:?}"
    );
    let status = serve.terminate(Duration::from_secs(10))?;
    assert!(status.success(), "chaosctl serve exited with {status}");
    Ok(())
}

/// VmRSS of a process in bytes, from /proc/PID/status.
fn resident_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS line")?
        .parse()?;
    Ok(kib * 1024)
}

/// 0.9 MiB of YAML: one anchored fault step with 50 targets and 100 000 aliases to it.
/// Before aliases were refused, its expansion (5 million target strings) took the
/// controller's memory up by hundreds of megabytes.
fn alias_bomb() -> String {
    let mut text = String::from(
        "name: chaos-test-bomb\nmethod:\n  faults:\n    - &s\n      name: k\n      target: { targets: [",
    );
    text.push_str(&vec!["\"pid:1\""; 50].join(","));
    text.push_str("] }\n      kill: {}\n");
    text.push_str(&"    - *s\n".repeat(100_000));
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn submissions_that_would_turn_the_controller_against_the_cluster_are_refused_fast()
-> Result<()> {
    let tls = make_certs()?;
    let state = state_dir()?;
    let work = work_dir()?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let (metrics_address, api_address) = (loopback()?, loopback()?);
    let config = serve_config(work.path(), metrics_address, &agent, tls.path())?;
    // One slot: a refused submission that still held it would block the next one.
    let serve = start_serve(
        work.path(),
        &config,
        metrics_address,
        api_address,
        tls.path(),
        &["--max-concurrent-runs=1"],
    )?;
    let serve_pid = serve.child.id();
    let mut client = controller(api_address, tls.path()).await?;
    let step = "method:\n  faults:\n    - name: k\n      target: { targets: [\"pid:1\"] }\n      kill: {}\n";
    let cases: Vec<(&str, String, tonic::Code, &[&str])> = vec![
        (
            "delete_pod of a kube-system pod",
            "name: chaos-test-evict\nmethod:\n  faults:\n    - name: evict-dns\n      \
             target: { targets: [\"pod:kube-system/coredns-0\"] }\n      delete_pod: {}\n"
                .to_string(),
            tonic::Code::PermissionDenied,
            &["fault `evict-dns`", "protected namespace kube-system"],
        ),
        (
            "a kube-system selector",
            step.replace("targets: [\"pid:1\"]", "namespace: kube-system")
                .replace("method:", "name: chaos-test-dns\nmethod:"),
            tonic::Code::PermissionDenied,
            &["target.namespace", "kube-system"],
        ),
        (
            "the include_protected field",
            step.replace(
                "targets: [\"pid:1\"]",
                "namespace: shop, include_protected: true",
            )
            .replace("method:", "name: chaos-test-field\nmethod:"),
            tonic::Code::InvalidArgument,
            &["method.faults[0].target.include_protected"],
        ),
        (
            "agents of its own",
            format!("name: chaos-test-agents\nagents: {{ static: [\"127.0.0.1:9\"] }}\n{step}"),
            tonic::Code::PermissionDenied,
            &["agents.static"],
        ),
        (
            "a TLS directory of its own",
            format!("name: chaos-test-tls\nagents: {{ tls_dir: /root }}\n{step}"),
            tonic::Code::PermissionDenied,
            &["agents.tls_dir"],
        ),
        (
            "plain text",
            format!("name: chaos-test-plain\nagents: {{ insecure_plaintext: true }}\n{step}"),
            tonic::Code::PermissionDenied,
            &["agents.insecure_plaintext"],
        ),
        (
            "an out-of-range baseline",
            format!("name: chaos-test-long\nbaseline: 9223372036854775808s\n{step}"),
            tonic::Code::InvalidArgument,
            &["baseline:", "longer than the 1h accepted"],
        ),
        (
            "a duration that overflows",
            format!("name: chaos-test-overflow\nbaseline: 18446744073709551615h\n{step}"),
            tonic::Code::InvalidArgument,
            &["too large", "line 2"],
        ),
    ];
    for (what, text, code, needles) in cases {
        let started = Instant::now();
        let status = client
            .submit_run(api::SubmitRunRequest {
                experiment_yaml: text,
            })
            .await
            .err()
            .with_context(|| format!("{what}: accepted"))?;
        let took = started.elapsed();
        eprintln!(
            "{what}: {:?} after {took:?}: {}",
            status.code(),
            status.message()
        );
        assert_eq!(status.code(), code, "{what}: {status}");
        for needle in needles {
            assert!(
                status.message().contains(needle),
                "{what}: {}",
                status.message()
            );
        }
        assert!(
            took < Duration::from_secs(2),
            "{what}: refused after {took:?}"
        );
    }

    // The alias bomb: refused at its first alias, with the controller's memory bounded.
    let bomb = alias_bomb();
    let before = resident_bytes(serve_pid)?;
    let started = Instant::now();
    let status = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: bomb.clone(),
        })
        .await
        .err()
        .context("the alias bomb was accepted")?;
    let took = started.elapsed();
    // Whatever the parse allocated has been used by now; a run holding the expansion
    // would still hold it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_bytes(serve_pid)?;
    eprintln!(
        "alias bomb ({} bytes): {:?} after {took:?}; serve VmRSS {} KiB before, {} KiB after \
         (+{} KiB): {}",
        bomb.len(),
        status.code(),
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024,
        status.message()
    );
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(
        status.message().contains("aliases") && status.message().contains("line 8"),
        "{}",
        status.message()
    );
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    assert!(
        after.saturating_sub(before) < 64 << 20,
        "serve grew from {before} to {after} bytes on the alias bomb"
    );
    let (code, _) = http_get(metrics_address, "/healthz")?;
    assert_eq!(code, 200);

    // Nothing was started, and the one slot is free for a submission within bounds.
    let runs = client
        .list_runs(api::ListRunsRequest {})
        .await?
        .into_inner()
        .runs;
    assert!(runs.is_empty(), "{runs:?}");
    let run_id = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: "name: chaos-test-fits\nmethod:\n  faults:\n    - name: k\n      \
                              target: { namespace: chaos-test-no-such-namespace }\n      kill: {}\n"
                .to_string(),
        })
        .await?
        .into_inner()
        .run_id;
    let run = wait_finished(&mut client, &run_id, Duration::from_secs(30)).await?;
    assert_eq!(run.verdict, "failed", "{:?}", run.reasons);
    assert!(
        run.reasons
            .iter()
            .any(|r| r.contains("matches no running container")),
        "{:?}",
        run.reasons
    );
    // A run that failed gives its slot back.
    let again = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml:
                "name: chaos-test-fits-again\nmethod:\n  faults:\n    - name: k\n      \
                              target: { namespace: chaos-test-no-such-namespace }\n      kill: {}\n"
                    .to_string(),
        })
        .await
        .context("the slot of a failed run was not freed")?
        .into_inner()
        .run_id;
    wait_finished(&mut client, &again, Duration::from_secs(30)).await?;
    Ok(())
}

/// A TLS dir whose client certificate is `NAME.pem` (made by `chaosctl certs --client`),
/// as a person would configure `chaosctl submit`.
fn person_tls_dir(certs: &Path, name: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("chaos-test-person-")
        .tempdir()?;
    std::fs::copy(certs.join("ca.pem"), dir.path().join("ca.pem"))?;
    std::fs::copy(
        certs.join(format!("{name}.pem")),
        dir.path().join("client.pem"),
    )?;
    std::fs::copy(
        certs.join(format!("{name}-key.pem")),
        dir.path().join("client-key.pem"),
    )?;
    Ok(dir)
}

/// Roles on serve's API: a viewer reads runs and is refused SubmitRun and CancelRun
/// (PermissionDenied naming identity and role, audited); an operator gets past
/// authorization to the submission's own checks.
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_reads_runs_and_is_refused_submit_and_cancel() -> Result<()> {
    let tls = tempfile::Builder::new()
        .prefix("chaos-test-tls-")
        .tempdir()?;
    let clients: Vec<chaosctl::agents::certs::ClientSpec> = ["vera:viewer", "olga:operator"]
        .iter()
        .map(|s| s.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    chaosctl::agents::certs::generate_with_clients(
        tls.path(),
        &chaosctl::agents::certs::default_agent_names(),
        &clients,
        false,
    )?;
    let (state, work) = (state_dir()?, work_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let (metrics_address, api_address) = (loopback()?, loopback()?);
    let config = serve_config(work.path(), metrics_address, &agent, tls.path())?;
    // olga is an operator limited to `shop` by serve's policy.
    let policy = work.path().join("authz.yaml");
    std::fs::write(
        &policy,
        "rules:\n  - identity: olga\n    role: operator\n    namespaces: [shop]\n",
    )?;
    let policy_flag = format!("--authz-policy={}", policy.display());
    let _serve = start_serve(
        work.path(),
        &config,
        metrics_address,
        api_address,
        tls.path(),
        &[policy_flag.as_str()],
    )?;
    let (vera_tls, olga_tls) = (
        person_tls_dir(tls.path(), "vera")?,
        person_tls_dir(tls.path(), "olga")?,
    );
    let mut vera = controller(api_address, vera_tls.path()).await?;
    vera.list_runs(api::ListRunsRequest {}).await?;

    let refused = vera
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: "name: x\n".into(),
        })
        .await
        .expect_err("a viewer submitted a run");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("vera (role viewer)")
            && refused.message().contains("needs role operator"),
        "{refused:?}"
    );
    let refused = vera
        .cancel_run(api::CancelRunRequest {
            run_id: "r-1".into(),
        })
        .await
        .expect_err("a viewer cancelled a run");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // An operator is past authorization: an empty experiment fails its own check.
    let mut olga = controller(api_address, olga_tls.path()).await?;
    let invalid = olga
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: String::new(),
        })
        .await
        .expect_err("an empty experiment was accepted");
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");
    // Her namespaces hold for what she submits: a target in `db` is refused before it runs.
    let outside = olga
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: "name: chaos-test-outside\nmethod:\n  faults:\n    - name: k\n      \
                 target: { targets: [\"pod:db/pg-0\"] }\n      kill: {}\n"
                .into(),
        })
        .await
        .expect_err("a run outside the operator's namespaces was accepted");
    assert_eq!(outside.code(), tonic::Code::PermissionDenied, "{outside:?}");
    assert!(
        outside
            .message()
            .contains("olga (role operator) is limited to namespaces [shop]")
            && outside.message().contains("namespace db"),
        "{outside:?}"
    );

    let log = std::fs::read_to_string(work.path().join("serve.log"))?;
    let audited = |method: &str, who: &str| {
        log.lines().any(|l| {
            l.contains("audit")
                && l.contains(method)
                && l.contains(who)
                && l.contains("PermissionDenied")
        })
    };
    assert!(audited("SubmitRun", "vera"), "{log}");
    assert!(audited("CancelRun", "vera"), "{log}");
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("SubmitRun")
            && l.contains("olga")
            && l.contains("InvalidArgument")),
        "{log}"
    );
    Ok(())
}
