//! Statistics of a probe's samples over one phase, and whether they meet a tolerance.

use serde::Serialize;

use crate::engine::experiment::Tolerance;
use crate::engine::probe::Sample;

/// Latencies are over the successful samples only: a refused connection answers fast
/// and would make a broken service look quick.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseStats {
    pub count: usize,
    pub successes: usize,
    pub success_ratio: f64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

pub fn phase_stats<'a>(samples: impl Iterator<Item = &'a Sample>) -> PhaseStats {
    let mut count = 0;
    let mut latencies = Vec::new();
    for s in samples {
        count += 1;
        if s.success {
            latencies.push(s.latency_ms);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let successes = latencies.len();
    PhaseStats {
        count,
        successes,
        success_ratio: if count == 0 {
            0.0
        } else {
            successes as f64 / count as f64
        },
        mean_ms: (successes > 0).then(|| latencies.iter().sum::<f64>() / successes as f64),
        p50_ms: percentile(&latencies, 50.0),
        p95_ms: percentile(&latencies, 95.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied(),
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Every way the statistics break the tolerance, in words; empty when they meet it.
pub fn violations(stats: &PhaseStats, tolerance: &Tolerance) -> Vec<String> {
    let mut found = Vec::new();
    if stats.count == 0 {
        found.push("no samples".to_string());
        return found;
    }
    if stats.success_ratio + 1e-9 < tolerance.success_ratio {
        found.push(format!(
            "success ratio {:.3} < {:.3}",
            stats.success_ratio, tolerance.success_ratio
        ));
    }
    let limits = [
        ("p50", stats.p50_ms, tolerance.latency_p50),
        ("p95", stats.p95_ms, tolerance.latency_p95),
        ("p99", stats.p99_ms, tolerance.latency_p99),
        ("max", stats.max_ms, tolerance.latency_max),
    ];
    for (name, value, limit) in limits {
        if let (Some(value), Some(limit)) = (value, limit) {
            let limit_ms = limit.as_secs_f64() * 1000.0;
            if value > limit_ms {
                found.push(format!("latency {name} {value:.1} ms > {limit_ms:.1} ms"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(success: bool, latency_ms: f64) -> Sample {
        Sample {
            at_ms: 0,
            success,
            healthy: success,
            latency_ms,
            error: String::new(),
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 95.0), Some(95.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn stats_count_failures_but_time_only_successes() {
        let samples = [
            sample(true, 10.0),
            sample(true, 30.0),
            sample(false, 1.0),
            sample(true, 20.0),
        ];
        let stats = phase_stats(samples.iter());
        assert_eq!((stats.count, stats.successes), (4, 3));
        assert_eq!(stats.success_ratio, 0.75);
        assert_eq!(stats.mean_ms, Some(20.0));
        assert_eq!(stats.p50_ms, Some(20.0));
        assert_eq!(stats.max_ms, Some(30.0));
    }

    #[test]
    fn tolerance_violations_are_named() {
        let samples = [sample(true, 400.0), sample(false, 1.0)];
        let stats = phase_stats(samples.iter());
        let tolerance = Tolerance {
            success_ratio: 0.9,
            latency_p95: Some(std::time::Duration::from_millis(300)),
            ..Tolerance::default()
        };
        let found = violations(&stats, &tolerance);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("success ratio 0.500"));
        assert!(found[1].starts_with("latency p95 400.0 ms"));
        assert_eq!(
            violations(&PhaseStats::default(), &tolerance),
            ["no samples"]
        );
        let fine = [sample(true, 100.0)];
        assert!(violations(&phase_stats(fine.iter()), &tolerance).is_empty());
    }
}
