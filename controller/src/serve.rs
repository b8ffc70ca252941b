//! `chaosctl serve --config controller.yaml`: the long-running controller. It checks
//! its agents periodically (Capabilities for `chaosctl_agent_up`, List for
//! `chaosctl_active_faults`), runs the configured experiments on their schedule one at
//! a time, and serves `/metrics` and `/healthz` over plain HTTP. SIGTERM or Ctrl-C
//! stops the running experiment (everything it injected is reverted) and then exits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chaos_proto::api;
use chaos_proto::api::agent_client::AgentClient;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::client::{AgentAddress, connect};
use crate::controller_metrics::{ActiveFaultCounts, ControllerMetrics};
use crate::duration::parse_duration;
use crate::experiment::{self, AgentsSpec, Experiment};
use crate::fleet::{Fleet, FleetConfig, fan_out};
use crate::output::kind_name;
use crate::runner::{self, RunOptions};

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

/// Reads and checks the configuration, loading every experiment file it names.
pub fn load_config(path: &Path) -> Result<(ServeConfig, Vec<(Experiment, Duration)>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: ServeConfig =
        serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if config.agent_check_interval < MIN_SCHEDULE {
        anyhow::bail!("agent_check_interval: must be at least 1s");
    }
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

/// Runs until SIGTERM or Ctrl-C.
pub async fn serve(config_path: &Path) -> Result<()> {
    let (config, experiments) = load_config(config_path)?;
    let metrics = ControllerMetrics::new();
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("listening on {}", config.metrics_listen))?;
    tracing::info!(address = %config.metrics_listen, experiments = experiments.len(), "serving");
    eprintln!(
        "chaosctl serve: metrics on http://{}",
        listener.local_addr()?
    );

    let (stop_sender, stop) = watch::channel(false);
    tokio::spawn(serve_http(listener, metrics.clone()));
    tokio::spawn(watch_agents(
        config.agents.clone(),
        config.agent_check_interval,
        metrics.clone(),
        stop.clone(),
    ));
    let scheduler = tokio::spawn(run_schedule(experiments, metrics, stop));
    wait_for_stop_signal().await;
    eprintln!("chaosctl serve: stopping; reverting the running experiment's faults");
    let _ = stop_sender.send(true);
    scheduler
        .await
        .context("the experiment scheduler panicked")?;
    Ok(())
}

/// Runs each experiment whenever it is due, one at a time, until `stop`.
async fn run_schedule(
    experiments: Vec<(Experiment, Duration)>,
    metrics: ControllerMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let start = Instant::now();
    let mut due: Vec<Instant> = vec![start; experiments.len()];
    while !*stop.borrow() {
        let Some((index, at)) = due.iter().copied().enumerate().min_by_key(|(_, at)| *at) else {
            // Nothing scheduled: only the agent checks and /metrics run.
            let _ = stop.changed().await;
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.changed() => return,
        }
        let (experiment, every) = &experiments[index];
        run_one(experiment, &metrics, stop.clone()).await;
        // The next run is a schedule interval after this one was due; a run that took
        // longer than its interval starts the next one right away, not in a burst.
        due[index] = (at + *every).max(Instant::now());
    }
}

async fn run_one(
    experiment: &Experiment,
    metrics: &ControllerMetrics,
    cancel: watch::Receiver<bool>,
) {
    let fleet = match connect_fleet(&experiment.agents).await {
        Ok(fleet) => fleet,
        Err(e) => {
            tracing::warn!(experiment = %experiment.name, error = %e, "cannot reach the agents");
            eprintln!("experiment {}: failed: {e:#}", experiment.name);
            metrics.record_verdict(&experiment.name, "failed");
            return;
        }
    };
    let name = experiment.name.clone();
    let options = RunOptions {
        run_id: runner::new_run_id(&experiment.name),
        progress: Arc::new(move |line: &str| eprintln!("[{name}] {line}")),
        cancel,
    };
    let result = runner::run(experiment, &fleet, options).await;
    eprintln!(
        "experiment {}: {} {}",
        result.experiment,
        result.verdict.name(),
        result.reasons.join("; ")
    );
    metrics.record_run(&result);
}

async fn connect_fleet(agents: &AgentsSpec) -> Result<Fleet> {
    let config = FleetConfig::resolve(agents).await?;
    Ok(Fleet::connect(&config).await?)
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
            (address, None)
        }
        Err(_) => (address, None),
    }
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
