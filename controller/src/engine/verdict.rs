//! Time to detect, time to recover and the verdict of a run.
//!
//! The steady state holds at a moment when every probe's latest sample is healthy.
//! Detection is the first unhealthy sample at or after the first injection; recovery
//! is the first moment after the last unhealthy sample at which every probe has a
//! healthy sample again, provided it then held for the recovery hold.

use serde::Serialize;

use crate::engine::probe::Sample;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The hypothesis held.
    Passed,
    /// The system left its tolerances where the hypothesis said it would not, or did
    /// not recover in time.
    Deviated,
    /// An abort condition (or the operator) stopped the method and everything was reverted.
    Aborted,
    /// The experiment could not be carried out (no steady state before, an agent error),
    /// or it left a fault it could not revert.
    Failed,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Deviated => "deviated",
            Verdict::Aborted => "aborted",
            Verdict::Failed => "failed",
        }
    }

    /// The process exit status `chaosctl run` ends with.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Passed => 0,
            Verdict::Failed => 1,
            Verdict::Deviated => 2,
            Verdict::Aborted => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// From the first injection to the first unhealthy sample.
    pub time_to_detect_ms: Option<u64>,
    /// From the first injection to the moment the steady state held again.
    pub time_to_recover_ms: Option<u64>,
    /// When the steady state held again, from the start of the run.
    pub recovered_at_ms: Option<u64>,
    /// Whether the steady state was holding (for the hold) at the end of the run.
    pub recovered: bool,
}

/// `probes[i]` are probe i's samples in time order.
pub fn timing(probes: &[Vec<Sample>], first_inject_ms: u64, end_ms: u64, hold_ms: u64) -> Timing {
    let after_inject = |s: &&Sample| s.at_ms >= first_inject_ms;
    let first_bad = probes
        .iter()
        .flat_map(|samples| samples.iter().filter(after_inject))
        .filter(|s| !s.healthy)
        .map(|s| s.at_ms)
        .min();
    let Some(first_bad) = first_bad else {
        // Never deviated: the steady state held throughout.
        return Timing {
            recovered: probes.iter().any(|p| !p.is_empty()),
            ..Timing::default()
        };
    };
    let last_bad = probes
        .iter()
        .flat_map(|samples| samples.iter())
        .filter(|s| !s.healthy)
        .map(|s| s.at_ms)
        .max()
        .unwrap_or(first_bad);
    // Each probe's first healthy sample after the last unhealthy one; all of them
    // must exist for the steady state to hold.
    let mut recovered_at = Some(last_bad);
    for samples in probes {
        let first_good = samples
            .iter()
            .find(|s| s.at_ms > last_bad && s.healthy)
            .map(|s| s.at_ms);
        recovered_at = match (recovered_at, first_good) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    let recovered = recovered_at.is_some_and(|at| end_ms.saturating_sub(at) >= hold_ms);
    Timing {
        time_to_detect_ms: Some(first_bad - first_inject_ms),
        time_to_recover_ms: recovered_at
            .filter(|_| recovered)
            .map(|at| at - first_inject_ms),
        recovered_at_ms: recovered_at.filter(|_| recovered),
        recovered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(u64, bool)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(at_ms, healthy)| Sample {
                at_ms,
                success: healthy,
                healthy,
                latency_ms: 1.0,
                error: String::new(),
            })
            .collect()
    }

    #[test]
    fn detects_and_recovers() {
        let web = series(&[
            (0, true),
            (1000, true),
            (1200, false),
            (1400, false),
            (1600, true),
            (5000, true),
        ]);
        let tcp = series(&[
            (100, true),
            (1300, true),
            (1500, false),
            (1700, true),
            (5000, true),
        ]);
        let t = timing(&[web, tcp], 1100, 5000, 2000);
        assert_eq!(t.time_to_detect_ms, Some(100));
        // Last unhealthy at 1500; web is healthy at 1600, tcp at 1700.
        assert_eq!(t.recovered_at_ms, Some(1700));
        assert_eq!(t.time_to_recover_ms, Some(600));
        assert!(t.recovered);
    }

    #[test]
    fn no_recovery_without_the_hold() {
        let web = series(&[(0, true), (1200, false), (4500, true)]);
        let t = timing(&[web], 1000, 5000, 2000);
        assert!(!t.recovered);
        assert_eq!(t.time_to_recover_ms, None);
        assert_eq!(t.time_to_detect_ms, Some(200));
    }

    #[test]
    fn never_deviating_is_recovered_without_times() {
        let web = series(&[(0, true), (1200, true)]);
        let t = timing(&[web], 1000, 5000, 2000);
        assert!(t.recovered);
        assert_eq!((t.time_to_detect_ms, t.time_to_recover_ms), (None, None));
    }

    #[test]
    fn a_probe_that_never_recovers() {
        let web = series(&[(0, true), (1200, false), (1300, false)]);
        let t = timing(&[web], 1000, 9000, 2000);
        assert!(!t.recovered);
    }
}
