//! The count of reloads that found the files changed, for the server's Prometheus
//! registry: "replaced" (new connections use the new files) or "failed" (they keep the
//! previous ones, which will expire).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::TlsError;
use crate::reload::Reload;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

const OUTCOMES: [&str; 2] = ["replaced", "failed"];

/// Cloning shares the same series.
#[derive(Clone, Debug, Default)]
pub struct ReloadCounter {
    family: Family<OutcomeLabels, Counter>,
}

impl ReloadCounter {
    /// Registers the counter as `name` (`_total` is added), with a zero series for each
    /// outcome so an alert sees 0 rather than nothing.
    pub fn register(registry: &mut Registry, name: &str) -> ReloadCounter {
        let counter = ReloadCounter::default();
        registry.register(
            name,
            "TLS files read again and found changed: replaced (new connections use them) \
             or failed (new connections keep the previous certificate)",
            counter.family.clone(),
        );
        for outcome in OUTCOMES {
            counter
                .family
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        counter
    }

    /// Counts a reload; one that found the files unchanged is not worth a count.
    pub fn record(&self, result: &Result<Reload, TlsError>) {
        let outcome = match result {
            Ok(Reload::Unchanged) => return,
            Ok(Reload::Replaced) => OUTCOMES[0],
            Err(_) => OUTCOMES[1],
        };
        self.family.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_changes_and_failures_not_unchanged_files() {
        let mut registry = Registry::with_prefix("test");
        let counter = ReloadCounter::register(&mut registry, "tls_reloads");
        counter.record(&Ok(Reload::Replaced));
        counter.record(&Ok(Reload::Unchanged));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("test_tls_reloads_total{outcome=\"replaced\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("test_tls_reloads_total{outcome=\"failed\"} 0"),
            "{text}"
        );
    }
}
