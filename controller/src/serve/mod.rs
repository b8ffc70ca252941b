//! `chaosctl serve [--config controller.yaml]`: the long-running controller. It serves
//! the Controller gRPC API (runs submitted as YAML, over mTLS with client certificates),
//! runs the configured experiments on their schedule, checks its agents periodically
//! (Capabilities for `chaosctl_agent_up`, List for `chaosctl_active_faults`), and serves
//! `/metrics` and `/healthz` over plain HTTP. Submitted and scheduled runs share one
//! [`RunRegistry`]. SIGTERM or Ctrl-C cancels every running run (everything they injected
//! is reverted) and then exits.

pub mod metrics;
pub mod registry;
pub mod service;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chaos_proto::api;
use chaos_proto::api::agent_client::AgentClient;
use chaos_proto::api::controller_server::ControllerServer;
use chaos_tls::ReloadingTls;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::time::Instant;
use tonic::transport::{Channel, Server};

use crate::agents::client::{AgentAddress, connect};
use crate::agents::fleet::AgentsSpec;
use crate::agents::fleet::{FleetConfig, fan_out};
use crate::cli::output::kind_name;
use crate::engine::experiment::{self, Experiment};
use crate::engine::probe::policy::{ProbeDestinations, ProbePolicy};
use crate::engine::selection::TargetPolicy;
use crate::serve::metrics::{ActiveFaultCounts, ControllerMetrics};
use crate::serve::registry::{RunRegistry, Source};
use crate::serve::service::{
    ControllerService, MAX_REQUEST_BYTES, SubmitPolicy, server_tls_files, start_run,
};
use crate::units::duration::parse_duration;

/// The configuration file of `chaosctl serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Where `/metrics` and `/healthz` are served.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// The agents to watch, and the agents of experiments that list none themselves.
    #[serde(default)]
    pub agents: AgentsSpec,
    /// How often every agent is asked for Capabilities and its faults.
    #[serde(default = "default_agent_check", deserialize_with = "duration")]
    pub agent_check_interval: Duration,
    #[serde(default)]
    pub experiments: Vec<ScheduledExperiment>,
    /// Where the probes of submitted experiments may connect: host names (exact) and
    /// networks (CIDR, or one address). Empty (the default): nowhere. Scheduled
    /// experiments are the operator's own and are not limited.
    #[serde(default)]
    pub probe_destinations: Vec<String>,
    /// Files the probes of submitted experiments may name as bearer_token_file or
    /// ca_file, exactly as they name them. Empty (the default): none.
    #[serde(default)]
    pub probe_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledExperiment {
    /// The experiment file; relative paths are relative to the configuration file.
    pub file: PathBuf,
    /// Run it every this long (the first run right at start).
    #[serde(deserialize_with = "duration")]
    pub schedule: Duration,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7092))
}

fn default_agent_check() -> Duration {
    Duration::from_secs(10)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// The shortest schedule accepted: a run takes at least its baseline and recovery.
const MIN_SCHEDULE: Duration = Duration::from_secs(1);
/// How long an agent may take to answer a check.
const AGENT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How `chaosctl serve` is started (its command-line flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The configuration file; without one: no schedule, no agents watched.
    pub config: Option<PathBuf>,
    /// Where the Controller gRPC API listens.
    pub api_listen: SocketAddr,
    /// ca.pem, controller.pem and controller-key.pem for the API's mTLS.
    pub api_tls_dir: Option<PathBuf>,
    /// Serve the API without TLS (local experiments only).
    pub api_insecure_plaintext: bool,
    /// `--authz-policy`: roles of the API's callers (default: their certificate's O).
    pub authz_policy: Option<PathBuf>,
    /// How often the API's TLS files are read again.
    pub api_tls_reload: Duration,
    /// Runs submitted through the API beyond this many running at once are refused.
    pub max_concurrent_runs: usize,
    /// Finished runs remembered for GetRun and ListRuns.
    pub keep_finished_runs: usize,
    /// Connections the API holds at once (from accept); one more is closed at once.
    pub max_api_connections: usize,
    /// Let submitted experiments use exec probes (commands on the controller's host).
    pub allow_exec_probes: bool,
    /// kube-system and chaos-control may be targeted, by scheduled and submitted runs.
    pub include_protected: bool,
}

/// How long the shutdown waits for cancelled runs to revert and finish.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

/// Reads and checks the configuration, loading every experiment file it names.
pub fn load_config(path: &Path) -> Result<(ServeConfig, Vec<(Experiment, Duration)>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_config(&text, path)
}

fn parse_config(text: &str, path: &Path) -> Result<(ServeConfig, Vec<(Experiment, Duration)>)> {
    let config: ServeConfig =
        serde_norway::from_str(text).with_context(|| format!("parsing {}", path.display()))?;
    if config.agent_check_interval < MIN_SCHEDULE {
        anyhow::bail!("agent_check_interval: must be at least 1s");
    }
    probe_policy(&config)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut experiments = Vec::new();
    for (index, scheduled) in config.experiments.iter().enumerate() {
        if scheduled.schedule < MIN_SCHEDULE {
            anyhow::bail!("experiments[{index}].schedule: must be at least 1s");
        }
        let file = base.join(&scheduled.file);
        let mut loaded = experiment::load(&file)
            .with_context(|| format!("experiments[{index}].file {}", file.display()))?;
        if loaded.agents.static_agents.is_empty() && loaded.agents.dns.is_none() {
            loaded.agents = config.agents.clone();
        }
        experiments.push((loaded, scheduled.schedule));
    }
    Ok((config, experiments))
}

/// The configuration's limits on submitted probes.
fn probe_policy(config: &ServeConfig) -> Result<ProbePolicy> {
    let destinations =
        ProbeDestinations::parse(&config.probe_destinations).map_err(anyhow::Error::msg)?;
    Ok(ProbePolicy {
        destinations: Arc::new(destinations),
        files: config.probe_files.iter().cloned().collect(),
    })
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn serve(options: ServeOptions) -> Result<()> {
    let (config, experiments) = match &options.config {
        Some(path) => load_config(path)?,
        None => parse_config("{}", Path::new("(no --config)"))?,
    };
    if options.max_concurrent_runs == 0 {
        anyhow::bail!("--max-concurrent-runs: must be at least 1");
    }
    if options.max_api_connections == 0 {
        anyhow::bail!("--max-api-connections: must be at least 1");
    }
    if options.keep_finished_runs == 0 {
        // `submit --wait` and CancelRun read the finished run back.
        anyhow::bail!("--keep-finished-runs: must be at least 1");
    }
    let metrics = ControllerMetrics::new();
    let registry = RunRegistry::new(
        options.max_concurrent_runs,
        options.keep_finished_runs,
        metrics.clone(),
        true,
    );
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("listening on {}", config.metrics_listen))?;
    let api_listener = tokio::net::TcpListener::bind(options.api_listen)
        .await
        .with_context(|| format!("listening on {} (--api-listen)", options.api_listen))?;
    let api_tls = match (&options.api_tls_dir, options.api_insecure_plaintext) {
        (_, true) => {
            tracing::warn!(
                "!!! controller API WITHOUT TLS (--insecure-plaintext): anyone who reaches {} can run experiments !!!",
                options.api_listen
            );
            None
        }
        (Some(dir), false) => Some(Arc::new(
            ReloadingTls::load(server_tls_files(dir))
                .context("loading the API's TLS files (`chaosctl certs --out DIR` writes them)")?,
        )),
        (None, false) => anyhow::bail!(
            "the controller API needs --tls-dir (or --api-tls-dir) with ca.pem, controller.pem and \
             controller-key.pem, or --insecure-plaintext"
        ),
    };
    tracing::info!(
        metrics = %config.metrics_listen,
        api = %options.api_listen,
        experiments = experiments.len(),
        "serving"
    );
    let api_scheme = if api_tls.is_some() { "https" } else { "http" };
    eprintln!(
        "chaosctl serve: metrics on http://{}, API on {api_scheme}://{}",
        listener.local_addr()?,
        api_listener.local_addr()?
    );

    let (stop_sender, stop) = watch::channel(false);
    tokio::spawn(serve_http(listener, metrics.clone()));
    tokio::spawn(watch_agents(
        config.agents.clone(),
        config.agent_check_interval,
        metrics.clone(),
        stop.clone(),
    ));
    let targets = TargetPolicy {
        include_protected: options.include_protected,
    };
    if targets.include_protected {
        tracing::warn!("--include-protected: runs may target kube-system and chaos-control");
    }
    // Both versions: Python's grpcio-reflection and older grpcurl builds ask for v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chaos_proto::CONTROLLER_FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the v1alpha reflection service")?;
    let access = if api_tls.is_none() {
        // The same rule as the agent's: no certificate, no identity; the flag says so.
        tracing::warn!("API callers have no identity: every caller is `insecure-plaintext`, admin");
        chaos_tls::authz::Access::Plaintext
    } else {
        let policy = match &options.authz_policy {
            Some(path) => chaos_tls::authz::Policy::load(path)?,
            None => chaos_tls::authz::Policy::default(),
        };
        chaos_tls::authz::Access::Certificates(policy)
    };
    let service = ControllerService {
        access,
        registry: Arc::clone(&registry),
        policy: SubmitPolicy {
            allow_exec_probes: options.allow_exec_probes,
            default_agents: config.agents.clone(),
            probes: probe_policy(&config)?,
            targets,
        },
    };
    let mut api_stop = stop.clone();
    let api_stopped = async move {
        let _ = api_stop.wait_for(|s| *s).await;
    };
    let router = Server::builder()
        .timeout(Duration::from_secs(60))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // A larger SubmitRun is refused by tonic before it is buffered whole.
        .add_service(ControllerServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES));
    let api_limit = metrics.connection_limit("api", options.max_api_connections);
    let api = match api_tls {
        Some(tls) => {
            let reload_metrics = metrics.clone();
            tokio::spawn(chaos_tls::keep_reloading(
                Arc::clone(&tls),
                options.api_tls_reload,
                move |result| reload_metrics.tls_reloaded(result),
            ));
            let incoming =
                chaos_tls::incoming(api_listener, tls, chaos_tls::HANDSHAKE_TIMEOUT, api_limit);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, api_stopped))
        }
        None => {
            let incoming = chaos_tls::plain_incoming(api_listener, api_limit);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, api_stopped))
        }
    };
    let scheduler = tokio::spawn(run_schedule(
        experiments,
        Arc::clone(&registry),
        targets,
        stop,
    ));
    tokio::select! {
        _ = wait_for_stop_signal() => {}
        served = api => {
            // The API stopped by itself: report why, after reverting what runs.
            registry.cancel_all();
            registry.wait_all(SHUTDOWN_WAIT).await;
            return match served {
                Ok(Ok(())) => Err(anyhow::anyhow!("the controller API stopped")),
                Ok(Err(e)) => Err(e).context("serving the controller API"),
                Err(e) => Err(e).context("the controller API panicked"),
            };
        }
    }
    eprintln!("chaosctl serve: stopping; reverting the running experiments' faults");
    let _ = stop_sender.send(true);
    registry.cancel_all();
    scheduler
        .await
        .context("the experiment scheduler panicked")?;
    let left = registry.wait_all(SHUTDOWN_WAIT).await;
    if left > 0 {
        anyhow::bail!(
            "{left} runs did not finish within {SHUTDOWN_WAIT:?}; their leases lapse on the agents"
        );
    }
    Ok(())
}

/// Starts each experiment whenever it is due, one at a time, until `stop`.
async fn run_schedule(
    experiments: Vec<(Experiment, Duration)>,
    registry: Arc<RunRegistry>,
    targets: TargetPolicy,
    mut stop: watch::Receiver<bool>,
) {
    let start = Instant::now();
    let mut due: Vec<Instant> = vec![start; experiments.len()];
    while !*stop.borrow() {
        let Some((index, at)) = due.iter().copied().enumerate().min_by_key(|(_, at)| *at) else {
            // Nothing scheduled: only the API, the agent checks and /metrics run.
            let _ = stop.changed().await;
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.changed() => return,
        }
        let (experiment, every) = &experiments[index];
        match start_run(&registry, experiment.clone(), Source::Schedule, targets) {
            // Scheduled runs are never refused at the limit; wait for this one to end
            // (a stop that came while it started cancels it too).
            Ok(id) => {
                tokio::select! {
                    _ = registry.wait(&id, Duration::MAX) => {}
                    _ = stop.changed() => {
                        let _ = registry.cancel(&id);
                        let _ = registry.wait(&id, SHUTDOWN_WAIT).await;
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(experiment = %experiment.name, error = %e, "not started"),
        }
        // The next run is a schedule interval after this one was due; a run that took
        // longer than its interval starts the next one right away, not in a burst.
        due[index] = (at + *every).max(Instant::now());
    }
}

/// Asks every agent for Capabilities and its active faults every `interval`.
async fn watch_agents(
    agents: AgentsSpec,
    interval: Duration,
    metrics: ControllerMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let clients: Arc<Mutex<HashMap<String, AgentClient<Channel>>>> = Arc::default();
    let limit = Arc::new(Semaphore::new(agents.parallelism.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let config = match FleetConfig::resolve(&agents).await {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!(error = %e, "cannot resolve the agents");
                continue;
            }
        };
        let answers = fan_out(&limit, config.addresses.clone(), |address| {
            check_agent(address, config.clone(), Arc::clone(&clients))
        })
        .await;
        let mut counts = ActiveFaultCounts::new();
        for (address, faults) in answers {
            metrics.set_agent_up(&address, faults.is_some());
            for fault in faults.unwrap_or_default() {
                let namespace = fault
                    .targets
                    .first()
                    .and_then(|t| t.container.as_ref())
                    .map(|c| c.pod_namespace.clone())
                    .unwrap_or_default();
                *counts
                    .entry((kind_name(fault.kind).to_string(), namespace))
                    .or_default() += 1;
            }
        }
        metrics.set_active_faults(&counts);
    }
}

/// The agent's active faults, or None when it does not answer (it is then down).
async fn check_agent(
    address: String,
    config: FleetConfig,
    clients: Arc<Mutex<HashMap<String, AgentClient<Channel>>>>,
) -> (String, Option<Vec<api::Fault>>) {
    let cached = clients.lock().await.get(&address).cloned();
    let client = match cached {
        Some(client) => client,
        None => {
            let target = AgentAddress {
                address: address.clone(),
                tls_dir: config.tls_dir.clone(),
                plaintext: config.plaintext,
            };
            match connect(&target).await {
                Ok(client) => {
                    clients.lock().await.insert(address.clone(), client.clone());
                    client
                }
                Err(e) => {
                    tracing::debug!(agent = %address, error = %e, "agent unreachable");
                    return (address, None);
                }
            }
        }
    };
    let faults = tokio::time::timeout(AGENT_CHECK_TIMEOUT, async {
        let mut client = client;
        client.capabilities(api::CapabilitiesRequest {}).await?;
        let listed = client
            .list(api::ListRequest {
                include_ended: false,
            })
            .await?;
        Ok::<_, tonic::Status>(listed.into_inner().faults)
    })
    .await;
    match faults {
        Ok(Ok(faults)) => {
            let active = api::FaultState::Active as i32;
            (
                address,
                Some(faults.into_iter().filter(|f| f.state == active).collect()),
            )
        }
        Ok(Err(status)) => {
            tracing::debug!(agent = %address, code = ?status.code(), "agent check failed");
            forget_client(&clients, &address).await;
            (address, None)
        }
        Err(_) => {
            forget_client(&clients, &address).await;
            (address, None)
        }
    }
}

/// After a failed check the next one connects afresh: a cached channel reconnects with
/// the TLS files read when it was made, which stop working once they are rotated.
async fn forget_client(clients: &Mutex<HashMap<String, AgentClient<Channel>>>, address: &str) {
    clients.lock().await.remove(address);
}

/// Serves `/metrics` and `/healthz`. Plain HTTP: Prometheus and the kubelet scrape it.
async fn serve_http(listener: tokio::net::TcpListener, metrics: ControllerMetrics) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = route(req.uri().path(), &metrics);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn route(path: &str, metrics: &ControllerMetrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const EXPERIMENT: &str = "name: chaos-test-x\nmethod:\n  faults:\n    - name: k\n      target: { namespace: shop, pod: web }\n      duration: 1s\n      kill: {}\n";

    #[test]
    fn defaults_and_relative_experiment_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "x.yaml", EXPERIMENT);
        let config = write(
            dir.path(),
            "controller.yaml",
            "agents:\n  static: [\"127.0.0.1:7090\"]\nexperiments:\n  - file: x.yaml\n    schedule: 5m\n",
        );
        let (config, experiments) = load_config(&config).unwrap();
        assert_eq!(config.metrics_listen, default_metrics_listen());
        assert_eq!(config.agent_check_interval, Duration::from_secs(10));
        assert_eq!(experiments.len(), 1);
        assert_eq!(experiments[0].1, Duration::from_secs(300));
        // The experiment lists no agents: it gets the controller's.
        assert_eq!(
            experiments[0].0.agents.static_agents,
            vec!["127.0.0.1:7090"]
        );
    }

    #[test]
    fn probe_destinations_and_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "c.yaml",
            "probe_destinations: [prometheus.monitoring.svc, 10.96.0.0/12, \"fd00::/8\"]\nprobe_files: [/run/token]\n",
        );
        let (config, _) = load_config(&config).unwrap();
        let policy = probe_policy(&config).unwrap();
        assert!(policy.destinations.lists_name("prometheus.monitoring.svc"));
        assert!(
            policy
                .destinations
                .contains_address("10.100.0.1".parse().unwrap())
        );
        assert!(
            policy
                .destinations
                .contains_address("fd12::1".parse().unwrap())
        );
        assert!(policy.files.contains(Path::new("/run/token")));
        // None configured: nothing is allowed.
        let (empty, _) = parse_config("{}", Path::new("x")).unwrap();
        assert!(probe_policy(&empty).unwrap().destinations.is_empty());

        let bad = write(
            dir.path(),
            "d.yaml",
            "probe_destinations: [web, 10.0.0.0/40]\n",
        );
        let error = format!("{:#}", load_config(&bad).unwrap_err());
        assert!(error.contains("probe_destinations[1]"), "{error}");
    }

    #[test]
    fn the_shipped_configmap_is_a_valid_configuration() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/components/controller/configmap.yaml");
        let map: serde_norway::Value =
            serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let text = map["data"]["controller.yaml"].as_str().unwrap();
        let (config, _) = parse_config(text, &path).unwrap();
        let policy = probe_policy(&config).unwrap();
        // Every service the shipped experiments probe is listed (demo-kill is local).
        let experiments = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        let mut checked = 0;
        for entry in std::fs::read_dir(&experiments).unwrap() {
            let file = entry.unwrap().path();
            if file.file_name().is_some_and(|n| n == "demo-kill.yaml") {
                continue;
            }
            let experiment = crate::engine::experiment::load(&file).unwrap();
            for probe in &experiment.steady_state.probes {
                use crate::engine::probe::url::{Host, parse_address, parse_url};
                let host = match (&probe.http, &probe.promql, &probe.tcp) {
                    (Some(http), _, _) => parse_url(&http.url).unwrap().host,
                    (_, Some(promql), _) => parse_url(&promql.url).unwrap().host,
                    (_, _, Some(tcp)) => parse_address(&tcp.address).unwrap().0,
                    // An exec probe connects nowhere itself.
                    _ => continue,
                };
                let Host::Name(name) = host else {
                    panic!("{}: {host}", file.display());
                };
                assert!(
                    policy.destinations.lists_name(&name),
                    "{}: {name}",
                    file.display()
                );
                checked += 1;
            }
        }
        assert!(checked >= 6, "{checked}");
    }

    #[test]
    fn unknown_keys_and_short_schedules_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "x.yaml", EXPERIMENT);
        let unknown = write(dir.path(), "a.yaml", "metricsListen: 0.0.0.0:1\n");
        let error = format!("{:#}", load_config(&unknown).unwrap_err());
        assert!(error.contains("metricsListen"), "{error}");
        let short = write(
            dir.path(),
            "b.yaml",
            "experiments:\n  - file: x.yaml\n    schedule: 10ms\n",
        );
        let error = format!("{:#}", load_config(&short).unwrap_err());
        assert!(error.contains("experiments[0].schedule"), "{error}");
    }
}
