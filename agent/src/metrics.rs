//! Prometheus metrics and the plain-HTTP endpoint that serves them with the
//! liveness and readiness checks. Scrape cost depends only on the agent's own state
//! (a few families), never on the node's containers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chaos_proto::api;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevertLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

fn inject_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: kills take microseconds, network faults milliseconds.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// The agent's metrics. Cloning shares the same series.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    active: Family<KindLabels, Gauge>,
    injections: Family<KindLabels, Counter>,
    reverts: Family<RevertLabels, Counter>,
    revert_errors: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    inject_duration: HistogramFamily,
    overdue: Gauge,
    revert_pending: Gauge,
    oom_kills: Family<KindLabels, Counter>,
    tls_reloads: chaos_tls::ReloadCounter,
    connections: chaos_tls::ConnectionMetrics,
}

const REVERT_REASONS: &[&str] = &[
    "requested",
    "expired",
    "lease",
    "shutdown",
    "target_gone",
    "recovered",
];
const ERROR_CODES: &[&str] = &[
    "invalid_argument",
    "not_found",
    "failed_precondition",
    "permission_denied",
    "unimplemented",
    "resource_exhausted",
    "unavailable",
    "internal",
];

impl Metrics {
    /// `kinds`: the kinds whose series start at zero, so dashboards and alerts see 0
    /// rather than nothing.
    pub fn new(version: &str, kinds: impl IntoIterator<Item = api::FaultKind>) -> Metrics {
        let mut registry = Registry::default();
        let active = Family::<KindLabels, Gauge>::default();
        let injections = Family::<KindLabels, Counter>::default();
        let reverts = Family::<RevertLabels, Counter>::default();
        let revert_errors = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let inject_duration: HistogramFamily = Family::new_with_constructor(inject_histogram);
        let overdue = Gauge::default();
        let revert_pending = Gauge::default();
        let oom_kills = Family::<KindLabels, Counter>::default();
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "chaos_agent_active_faults",
            "Faults currently held by this agent",
            active.clone(),
        );
        registry.register(
            "chaos_agent_injections",
            "Faults applied",
            injections.clone(),
        );
        registry.register(
            "chaos_agent_reverts",
            "Faults reverted, by reason (requested, expired, lease, recovered)",
            reverts.clone(),
        );
        registry.register(
            "chaos_agent_revert_errors",
            "Reverts that failed (the journal record is kept)",
            revert_errors.clone(),
        );
        registry.register(
            "chaos_agent_errors",
            "Injections refused or failed, by gRPC code",
            errors.clone(),
        );
        registry.register(
            "chaos_agent_inject_duration_seconds",
            "Time to validate, resolve, journal and apply a fault",
            inject_duration.clone(),
        );
        registry.register(
            "chaos_agent_overdue_faults",
            "Faults still active past their deadline (should be 0)",
            overdue.clone(),
        );
        registry.register(
            "chaos_agent_revert_pending_faults",
            "Faults whose revert failed: still listed, retried with backoff until it succeeds (should be 0)",
            revert_pending.clone(),
        );
        registry.register(
            "chaos_agent_oom_kills",
            "OOM kills seen in target cgroups while a fault was active",
            oom_kills.clone(),
        );
        let tls_reloads =
            chaos_tls::ReloadCounter::register(&mut registry, "chaos_agent_tls_reloads");
        let connections = chaos_tls::ConnectionMetrics::register(
            registry.sub_registry_with_prefix("chaos_agent"),
        );
        registry.register(
            "chaos_agent_build_info",
            "Agent version",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: version.to_string(),
            })
            .set(1);
        for kind in kinds.into_iter().map(api::FaultKind::label) {
            let labels = KindLabels {
                kind: kind.to_string(),
            };
            active.get_or_create(&labels).set(0);
            injections.get_or_create(&labels).inc_by(0);
            revert_errors.get_or_create(&labels).inc_by(0);
            oom_kills.get_or_create(&labels).inc_by(0);
            drop(inject_duration.get_or_create(&labels));
            for reason in REVERT_REASONS {
                reverts
                    .get_or_create(&RevertLabels {
                        kind: kind.to_string(),
                        reason: reason.to_string(),
                    })
                    .inc_by(0);
            }
            for code in ERROR_CODES {
                errors
                    .get_or_create(&ErrorLabels {
                        kind: kind.to_string(),
                        code: code.to_string(),
                    })
                    .inc_by(0);
            }
        }
        Metrics {
            registry: Arc::new(registry),
            active,
            injections,
            reverts,
            revert_errors,
            errors,
            inject_duration,
            overdue,
            revert_pending,
            oom_kills,
            tls_reloads,
            connections,
        }
    }

    /// The cap of the listener named `listener` ("grpc" or "metrics"), counted in
    /// `chaos_agent_open_connections` and `chaos_agent_refused_connections_total`.
    pub fn connection_limit(
        &self,
        listener: &'static str,
        max: usize,
    ) -> Arc<chaos_tls::ConnectionLimit> {
        self.connections.limit(listener, max)
    }

    pub fn tls_reloaded(&self, result: &Result<chaos_tls::Reload, chaos_tls::TlsError>) {
        self.tls_reloads.record(result);
    }

    fn kind(kind: &str) -> KindLabels {
        KindLabels {
            kind: kind.to_string(),
        }
    }

    pub fn injected(&self, kind: &str, took: Duration) {
        self.injections.get_or_create(&Self::kind(kind)).inc();
        self.inject_duration
            .get_or_create(&Self::kind(kind))
            .observe(took.as_secs_f64());
    }

    pub fn rejected(&self, kind: &str, code: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn reverted(&self, kind: &str, reason: &str) {
        self.reverts
            .get_or_create(&RevertLabels {
                kind: kind.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn revert_failed(&self, kind: &str) {
        self.revert_errors.get_or_create(&Self::kind(kind)).inc();
    }

    pub fn active_changed(&self, kind: &str, delta: i64) {
        self.active.get_or_create(&Self::kind(kind)).inc_by(delta);
    }

    /// OOM kills observed in a target cgroup during a fault of `kind`.
    pub fn oom_killed(&self, kind: &str, count: u64) {
        self.oom_kills
            .get_or_create(&Self::kind(kind))
            .inc_by(count);
    }

    pub fn set_overdue(&self, count: i64) {
        self.overdue.set(count);
    }

    pub fn set_revert_pending(&self, count: i64) {
        self.revert_pending.set(count);
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (the journal of
/// a previous run has been replayed and gRPC is serving). Plain HTTP: the kubelet's
/// probes cannot present a client certificate. At most `limit` connections at once:
/// one more is closed at once.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    limit: Arc<chaos_tls::ConnectionLimit>,
) {
    loop {
        let (stream, _, permit) = chaos_tls::accept(&listener, &limit).await;
        let metrics = metrics.clone();
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            // The slot is freed when the connection ends.
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = route(req.uri().path(), &metrics, &ready);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn route(path: &str, metrics: &Metrics, ready: &AtomicBool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if ready.load(Ordering::Acquire) => {
            (StatusCode::OK, "text/plain", "ready\n".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_KINDS: [api::FaultKind; 3] = [
        api::FaultKind::Cpu,
        api::FaultKind::Process,
        api::FaultKind::Network,
    ];

    #[test]
    fn exposes_every_family_with_zero_series() {
        let metrics = Metrics::new("0.0.0-test", TEST_KINDS);
        metrics.injected("process", Duration::from_micros(300));
        metrics.rejected("process", "invalid_argument");
        metrics.reverted("process", "expired");
        metrics.active_changed("process", 1);
        metrics.tls_reloaded(&Ok(chaos_tls::Reload::Replaced));
        metrics.tls_reloaded(&Ok(chaos_tls::Reload::Unchanged));
        let grpc = metrics.connection_limit("grpc", 1);
        drop(metrics.connection_limit("metrics", 1));
        let peer = "127.0.0.1:9".parse().expect("address");
        let _held = grpc.admit(peer).expect("a slot");
        assert!(grpc.admit(peer).is_none(), "over the cap");
        let text = metrics.encode();
        for needle in [
            "chaos_agent_active_faults{kind=\"cpu\"} 0",
            "chaos_agent_active_faults{kind=\"process\"} 1",
            "chaos_agent_injections_total{kind=\"process\"} 1",
            "chaos_agent_reverts_total{kind=\"process\",reason=\"expired\"} 1",
            "chaos_agent_errors_total{kind=\"process\",code=\"invalid_argument\"} 1",
            "chaos_agent_revert_errors_total{kind=\"network\"} 0",
            "chaos_agent_inject_duration_seconds_count{kind=\"process\"} 1",
            "chaos_agent_overdue_faults 0",
            "chaos_agent_build_info{version=\"0.0.0-test\"} 1",
            "chaos_agent_tls_reloads_total{outcome=\"replaced\"} 1",
            "chaos_agent_tls_reloads_total{outcome=\"failed\"} 0",
            "chaos_agent_open_connections{listener=\"grpc\"} 1",
            "chaos_agent_refused_connections_total{listener=\"grpc\"} 1",
            "chaos_agent_open_connections{listener=\"metrics\"} 0",
            "chaos_agent_refused_connections_total{listener=\"metrics\"} 0",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
    }

    #[test]
    fn routes_health_and_readiness() {
        let metrics = Metrics::new("t", TEST_KINDS);
        let ready = AtomicBool::new(false);
        assert_eq!(route("/healthz", &metrics, &ready).status(), StatusCode::OK);
        assert_eq!(
            route("/readyz", &metrics, &ready).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.store(true, Ordering::Release);
        assert_eq!(route("/readyz", &metrics, &ready).status(), StatusCode::OK);
        assert_eq!(
            route("/nope", &metrics, &ready).status(),
            StatusCode::NOT_FOUND
        );
    }
}
