//! The metrics `chaosctl serve` exports: experiment verdicts, the faults active on the
//! agents, time to recover, probe latency and whether each agent answers. Scrape cost
//! depends only on these few families, never on the agents' containers.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::runner::RunResult;

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

/// Experiment names become label values as they come; after this many distinct ones, the
/// runs of any other experiment are counted under [`OTHER`]. Names come from submitted
/// files, so without a bound every submission could add series until scrapes get slow.
pub const MAX_EXPERIMENT_LABELS: usize = 100;
/// Distinct (experiment, probe) pairs of `probe_latency_seconds`; later probes go under
/// probe=[`OTHER`].
pub const MAX_PROBE_LABELS: usize = 200;
/// The label value of everything beyond a bound.
pub const OTHER: &str = "other";

/// The first `max` distinct values pass as they are; later ones become [`OTHER`].
struct LabelBudget<T> {
    seen: Mutex<HashSet<T>>,
    max: usize,
}

impl<T: Eq + Hash + Clone> LabelBudget<T> {
    fn new(max: usize) -> LabelBudget<T> {
        LabelBudget {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// Whether `value` has (or now gets) a series of its own.
    fn admits(&self, value: &T) -> bool {
        // A panic while holding the lock leaves a plain set behind; keep using it.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return true;
        }
        if seen.len() < self.max {
            seen.insert(value.clone());
            return true;
        }
        false
    }
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
    experiment_names: Arc<LabelBudget<String>>,
    probe_names: Arc<LabelBudget<(String, String)>>,
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
            experiment_names: Arc::new(LabelBudget::new(MAX_EXPERIMENT_LABELS)),
            probe_names: Arc::new(LabelBudget::new(MAX_PROBE_LABELS)),
        }
    }

    /// The experiment label value of `name`: itself, or [`OTHER`] beyond the bound.
    fn experiment_label(&self, name: &str) -> String {
        if self.experiment_names.admits(&name.to_string()) {
            name.to_string()
        } else {
            OTHER.to_string()
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
        let experiment = self.experiment_label(&result.experiment);
        for probe in &result.probes {
            let pair = (experiment.clone(), probe.name.clone());
            let probe_label = if self.probe_names.admits(&pair) {
                probe.name.clone()
            } else {
                OTHER.to_string()
            };
            let histogram = self.probe_latency.get_or_create(&ProbeLabels {
                experiment: experiment.clone(),
                probe: probe_label,
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
                experiment: self.experiment_label(experiment),
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
                    experiment: self.experiment_label(experiment),
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
    fn experiment_and_probe_labels_are_bounded_in_number() {
        let metrics = ControllerMetrics::new();
        for i in 0..MAX_EXPERIMENT_LABELS + 50 {
            metrics.record_verdict(&format!("submitted-{i}"), "failed");
        }
        // An experiment seen before the bound keeps its own series.
        metrics.record_verdict("submitted-0", "passed");
        let text = metrics.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("chaosctl_experiments_total{"))
            .count();
        // MAX distinct names with `failed`, one with `passed`, and `other`.
        assert_eq!(series, MAX_EXPERIMENT_LABELS + 2, "{text}");
        assert!(
            text.contains("chaosctl_experiments_total{experiment=\"other\",verdict=\"failed\"} 50"),
            "{text}"
        );
        assert!(
            text.contains(
                "chaosctl_experiments_total{experiment=\"submitted-0\",verdict=\"passed\"} 1"
            ),
            "{text}"
        );
        // Experiments past the bound share `other` in every family.
        metrics.set_time_to_recover("submitted-120", Some(500));
        assert!(
            metrics
                .encode()
                .contains("chaosctl_time_to_recover_seconds{experiment=\"other\"} 0.5")
        );

        let probes = LabelBudget::new(2);
        assert!(probes.admits(&("a".to_string(), "p1".to_string())));
        assert!(probes.admits(&("a".to_string(), "p2".to_string())));
        assert!(!probes.admits(&("a".to_string(), "p3".to_string())));
        assert!(probes.admits(&("a".to_string(), "p1".to_string())));
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
