//! The metrics `chaosctl serve` exports: experiment verdicts, the faults active on the
//! agents, time to recover, probe latency and whether each agent answers. Scrape cost
//! depends only on these few families, never on the agents' containers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::runner::RunResult;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    experiment: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    kind: String,
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExperimentLabels {
    experiment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    experiment: String,
    probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

type ProbeHistograms = Family<ProbeLabels, Histogram, fn() -> Histogram>;

fn probe_histogram() -> Histogram {
    // 1 ms .. ~32 s: a local TCP connect takes a millisecond, a hung probe its timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Active faults counted by (kind, pod namespace); the namespace is empty for targets
/// outside Kubernetes.
pub type ActiveFaultCounts = BTreeMap<(String, String), i64>;

/// The controller's metrics. Cloning shares the same series.
#[derive(Clone)]
pub struct ControllerMetrics {
    registry: Arc<Registry>,
    experiments: Family<VerdictLabels, Counter>,
    active_faults: Family<FaultLabels, Gauge>,
    time_to_recover: Family<ExperimentLabels, Gauge<f64, AtomicU64>>,
    probe_latency: ProbeHistograms,
    agent_up: Family<AgentLabels, Gauge>,
    tls_reloads: chaos_tls::ReloadCounter,
    connections: chaos_tls::ConnectionMetrics,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> ControllerMetrics {
        let mut registry = Registry::with_prefix("chaosctl");
        let experiments = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "experiments",
            "Experiment runs finished, by verdict",
            experiments.clone(),
        );
        let active_faults = Family::<FaultLabels, Gauge>::default();
        registry.register(
            "active_faults",
            "Faults active on the agents at the last check",
            active_faults.clone(),
        );
        let time_to_recover = Family::<ExperimentLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "time_to_recover_seconds",
            "Time from the first injection to the recovered steady state, last run",
            time_to_recover.clone(),
        );
        let probe_latency: ProbeHistograms = Family::new_with_constructor(probe_histogram);
        registry.register(
            "probe_latency_seconds",
            "Latency of every probe sample of finished runs",
            probe_latency.clone(),
        );
        let agent_up = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "agent_up",
            "1 when the agent answered the last Capabilities call, else 0",
            agent_up.clone(),
        );
        let tls_reloads = chaos_tls::ReloadCounter::register(&mut registry, "tls_reloads");
        let connections = chaos_tls::ConnectionMetrics::register(&mut registry);
        ControllerMetrics {
            registry: Arc::new(registry),
            experiments,
            active_faults,
            time_to_recover,
            probe_latency,
            agent_up,
            tls_reloads,
            connections,
        }
    }

    /// The API listener's cap, counted in `chaosctl_open_connections` and
    /// `chaosctl_refused_connections_total`.
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

    /// Counts the run's verdict, sets its time to recover, observes its probe samples.
    pub fn record_run(&self, result: &RunResult) {
        self.record_verdict(&result.experiment, result.verdict.name());
        self.set_time_to_recover(&result.experiment, result.timing.time_to_recover_ms);
        for probe in &result.probes {
            let histogram = self.probe_latency.get_or_create(&ProbeLabels {
                experiment: result.experiment.clone(),
                probe: probe.name.clone(),
            });
            for sample in &probe.samples {
                histogram.observe(sample.latency_ms / 1000.0);
            }
        }
    }

    /// Counts one finished run; also for runs that could not start (verdict `failed`).
    pub fn record_verdict(&self, experiment: &str, verdict: &str) {
        self.experiments
            .get_or_create(&VerdictLabels {
                experiment: experiment.to_string(),
                verdict: verdict.to_string(),
            })
            .inc();
    }

    pub fn set_agent_up(&self, agent: &str, up: bool) {
        self.agent_up
            .get_or_create(&AgentLabels {
                agent: agent.to_string(),
            })
            .set(i64::from(up));
    }

    /// Replaces every active-fault series: kinds that ended disappear instead of
    /// lingering at their last count.
    pub fn set_active_faults(&self, counts: &ActiveFaultCounts) {
        self.active_faults.clear();
        for ((kind, namespace), count) in counts {
            self.active_faults
                .get_or_create(&FaultLabels {
                    kind: kind.clone(),
                    namespace: namespace.clone(),
                })
                .set(*count);
        }
    }

    /// The OpenMetrics text of every series.
    /// The last measured time to recover; a run that never broke or never recovered
    /// leaves the previous value.
    fn set_time_to_recover(&self, experiment: &str, time_to_recover_ms: Option<u64>) {
        if let Some(ms) = time_to_recover_ms {
            self.time_to_recover
                .get_or_create(&ExperimentLabels {
                    experiment: experiment.to_string(),
                })
                .set(ms as f64 / 1000.0);
        }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            // Writing into a String cannot fail; an empty answer is the safe fallback.
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_named_as_documented() {
        let metrics = ControllerMetrics::new();
        metrics.record_verdict("shop", "passed");
        metrics.set_agent_up("10.0.0.1:7090", true);
        metrics.tls_reloaded(&Ok(chaos_tls::Reload::Replaced));
        let mut counts = ActiveFaultCounts::new();
        counts.insert(("cpu".into(), "shop".into()), 2);
        metrics.set_active_faults(&counts);
        let text = metrics.encode();
        assert!(
            text.contains("chaosctl_experiments_total{experiment=\"shop\",verdict=\"passed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chaosctl_agent_up{agent=\"10.0.0.1:7090\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chaosctl_tls_reloads_total{outcome=\"replaced\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chaosctl_tls_reloads_total{outcome=\"failed\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("chaosctl_active_faults{kind=\"cpu\",namespace=\"shop\"} 2"),
            "{text}"
        );
        // scripts/validate-manifests exempts this name from its live-scrape check (the
        // test controller's runs never break their steady state): it is checked here.
        metrics.set_time_to_recover("shop", Some(1500));
        let text = metrics.encode();
        assert!(
            text.contains("chaosctl_time_to_recover_seconds{experiment=\"shop\"} 1.5"),
            "{text}"
        );
        // Families without series yet are left out of the scrape.
        assert!(
            !text.contains("chaosctl_probe_latency_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn ended_fault_kinds_disappear() {
        let metrics = ControllerMetrics::new();
        let mut counts = ActiveFaultCounts::new();
        counts.insert(("memory".into(), String::new()), 1);
        metrics.set_active_faults(&counts);
        metrics.set_active_faults(&ActiveFaultCounts::new());
        assert!(!metrics.encode().contains("chaosctl_active_faults{"));
    }
}
