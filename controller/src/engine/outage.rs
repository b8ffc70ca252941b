//! Which fault each outage belongs to, and each fault's own outage and recovery.
//!
//! The run's time to detect and recover count from the first injection, so a first fault
//! that harmed nothing makes a later fault's short outage look long (the demo's CPU
//! fault, then a kill: "time to recover 6.60 s" for an outage of 0.4 s). Here the run's
//! samples become outages (stretches in which the steady state did not hold: some
//! probe's latest sample was unhealthy), and each outage goes to one fault:
//! - the fault whose window (injection to revert) holds the outage's start, the one
//!   injected last if several do (parallel steps);
//! - otherwise the fault injected last before the start: an outage that begins after
//!   its fault's window (a kill, whose process dies at once and whose service fails a
//!   moment later; a fault whose harm outlives its revert) still comes from it.
//!
//! An outage is placed by the moment its first failing sample ended, when the failure was
//! seen: a probe sent just before a kill fails because of it, though it started before.
//! Outages seen before the first injection belong to no fault (the baseline checks the
//! steady state, so there are none in a run that got that far).

use serde::Serialize;

use crate::engine::probe::Sample;

/// A stretch in which the steady state did not hold, in ms from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// The sample that broke the steady state: when it started.
    pub start_ms: u64,
    /// When that sample ended: the moment the failure was seen, which places the outage.
    pub observed_ms: u64,
    /// The sample after which every probe was healthy again; `None` if that never came.
    pub end_ms: Option<u64>,
}

/// One fault step's window: its first injection to its last revert (`None`: still
/// active at the end, which only a failed revert leaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultWindow {
    pub step: String,
    pub injected_at_ms: u64,
    pub ended_at_ms: Option<u64>,
}

/// What one fault step did to the steady state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultOutage {
    pub step: String,
    pub injected_at_ms: u64,
    /// When its last target's fault ended (`None`: never, a failed revert).
    pub ended_at_ms: Option<u64>,
    /// How many outages this fault caused.
    pub outages: usize,
    /// From the fault's injection to the start of its first outage.
    pub outage_start_ms: Option<u64>,
    /// The outages' lengths added up (up to the end of the run for one that never ended).
    pub outage_ms: Option<u64>,
    /// From the fault's injection to the end of its last outage; `None` without an
    /// outage, or if the last one never ended.
    pub time_to_recover_ms: Option<u64>,
}

/// The run's outages, from all probes' samples (each probe's in time order).
pub fn outages(probes: &[Vec<Sample>]) -> Vec<Outage> {
    let mut events: Vec<(u64, usize, &Sample)> = probes
        .iter()
        .enumerate()
        .flat_map(|(probe, samples)| samples.iter().map(move |s| (s.at_ms, probe, s)))
        .collect();
    // Stable: one probe's samples at one moment keep their order.
    events.sort_by_key(|&(at, _, _)| at);
    // A probe with no sample yet does not break the steady state.
    let mut unhealthy = vec![false; probes.len()];
    let mut found = Vec::new();
    // (start, observed) of the outage in progress.
    let mut open: Option<(u64, u64)> = None;
    for (at, probe, sample) in events {
        unhealthy[probe] = !sample.healthy;
        let holds = !unhealthy.iter().any(|u| *u);
        match (open, holds) {
            (None, false) => open = Some((at, at + sample.latency_ms.max(0.0) as u64)),
            (Some((start_ms, observed_ms)), true) => {
                found.push(Outage {
                    start_ms,
                    observed_ms,
                    end_ms: Some(at),
                });
                open = None;
            }
            _ => {}
        }
    }
    if let Some((start_ms, observed_ms)) = open {
        found.push(Outage {
            start_ms,
            observed_ms,
            end_ms: None,
        });
    }
    found
}

/// The index of the window an outage seen at `seen_ms` belongs to.
fn owner(windows: &[FaultWindow], seen_ms: u64) -> Option<usize> {
    // Latest injected first; among equal injections, the later step.
    let latest = |candidates: &mut dyn Iterator<Item = (usize, &FaultWindow)>| {
        candidates
            .max_by_key(|(index, w)| (w.injected_at_ms, *index))
            .map(|(index, _)| index)
    };
    let injected_before = || {
        windows
            .iter()
            .enumerate()
            .filter(move |(_, w)| w.injected_at_ms <= seen_ms)
    };
    let holding = latest(
        &mut injected_before().filter(|(_, w)| w.ended_at_ms.is_none_or(|end| seen_ms <= end)),
    );
    holding.or_else(|| latest(&mut injected_before()))
}

/// Each window's outages and recovery; `end_ms` is the end of the run.
pub fn per_fault(windows: &[FaultWindow], outages: &[Outage], end_ms: u64) -> Vec<FaultOutage> {
    let mut result: Vec<FaultOutage> = windows
        .iter()
        .map(|w| FaultOutage {
            step: w.step.clone(),
            injected_at_ms: w.injected_at_ms,
            ended_at_ms: w.ended_at_ms,
            ..FaultOutage::default()
        })
        .collect();
    for outage in outages {
        let Some(index) = owner(windows, outage.observed_ms) else {
            continue;
        };
        let fault = &mut result[index];
        let since_injection = |at: u64| at.saturating_sub(fault.injected_at_ms);
        let length = outage
            .end_ms
            .unwrap_or(end_ms)
            .saturating_sub(outage.start_ms);
        fault.outages += 1;
        fault
            .outage_start_ms
            .get_or_insert(since_injection(outage.start_ms));
        fault.outage_ms = Some(fault.outage_ms.unwrap_or(0) + length);
        // Outages come in time order, so the last one seen decides.
        fault.time_to_recover_ms = outage.end_ms.map(since_injection);
    }
    result
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
                latency_ms: 0.0,
                error: String::new(),
            })
            .collect()
    }

    /// An outage seen the moment it started (its first failing sample took no time).
    fn outage(start_ms: u64, end_ms: Option<u64>) -> Outage {
        Outage {
            start_ms,
            observed_ms: start_ms,
            end_ms,
        }
    }

    fn window(step: &str, injected_at_ms: u64, ended_at_ms: u64) -> FaultWindow {
        FaultWindow {
            step: step.into(),
            injected_at_ms,
            ended_at_ms: Some(ended_at_ms),
        }
    }

    #[test]
    fn an_outage_lasts_until_every_probe_is_healthy_again() {
        let web = series(&[(0, true), (100, false), (200, false), (300, true)]);
        let api = series(&[(50, true), (250, false), (350, true), (450, true)]);
        assert_eq!(outages(&[web, api]), vec![outage(100, Some(350))]);
    }

    #[test]
    fn separate_stretches_are_separate_outages_and_one_may_never_end() {
        let web = series(&[(0, false), (100, true), (200, false), (300, false)]);
        assert_eq!(
            outages(&[web]),
            vec![outage(0, Some(100)), outage(200, None)]
        );
        assert_eq!(outages(&[series(&[(0, true)]), Vec::new()]), Vec::new());
    }

    /// The demo's shape: a CPU fault that harms nothing, a pause, then a kill whose
    /// outage starts just after its one-second window and lasts 0.4 s.
    #[test]
    fn only_the_second_of_two_faults_caused_the_outage() {
        let windows = [window("cpu", 3_000, 7_000), window("kill", 9_000, 10_000)];
        let found = [outage(10_200, Some(10_600))];
        let per = per_fault(&windows, &found, 14_000);
        assert_eq!(
            per[0],
            FaultOutage {
                step: "cpu".into(),
                injected_at_ms: 3_000,
                ended_at_ms: Some(7_000),
                ..FaultOutage::default()
            }
        );
        assert_eq!(
            per[1],
            FaultOutage {
                step: "kill".into(),
                injected_at_ms: 9_000,
                ended_at_ms: Some(10_000),
                outages: 1,
                outage_start_ms: Some(1_200),
                outage_ms: Some(400),
                time_to_recover_ms: Some(1_600),
            }
        );
    }

    #[test]
    fn overlapping_windows_give_the_outage_to_the_fault_injected_last() {
        let windows = [
            window("latency", 1_000, 9_000),
            window("kill", 4_000, 5_000),
        ];
        let found = [
            outage(2_000, Some(2_500)),
            outage(4_300, Some(6_000)),
            // After the kill's window, inside the latency's: the latency's.
            outage(7_000, Some(7_100)),
        ];
        let per = per_fault(&windows, &found, 12_000);
        assert_eq!(
            (per[0].outages, per[0].outage_ms, per[0].time_to_recover_ms),
            (2, Some(600), Some(6_100))
        );
        assert_eq!(
            (
                per[1].outages,
                per[1].outage_start_ms,
                per[1].time_to_recover_ms
            ),
            (1, Some(300), Some(2_000))
        );
    }

    #[test]
    fn an_outage_that_never_ends_counts_to_the_end_of_the_run_and_has_no_recovery() {
        let windows = [window("kill", 1_000, 2_000)];
        let found = [outage(1_500, None)];
        let per = per_fault(&windows, &found, 5_000);
        assert_eq!(
            (per[0].outage_ms, per[0].time_to_recover_ms),
            (Some(3_500), None)
        );
    }

    #[test]
    fn an_outage_before_any_injection_belongs_to_no_fault() {
        let windows = [window("kill", 1_000, 2_000)];
        let found = [outage(500, Some(600))];
        assert_eq!(per_fault(&windows, &found, 3_000)[0].outages, 0);
    }

    /// A probe sent 10 ms before a kill fails 300 ms later because of it: the outage is
    /// the kill's, from its injection.
    #[test]
    fn a_probe_sent_just_before_the_injection_that_failed_after_it_is_the_faults() {
        let mut web = series(&[(7_600, true), (8_010, false), (8_400, false), (9_000, true)]);
        web[1].latency_ms = 300.0;
        let found = outages(&[web]);
        assert_eq!(
            found,
            vec![Outage {
                start_ms: 8_010,
                observed_ms: 8_310,
                end_ms: Some(9_000)
            }]
        );
        let per = per_fault(&[window("kill", 8_020, 14_000)], &found, 20_000);
        assert_eq!(
            (
                per[0].outages,
                per[0].outage_start_ms,
                per[0].time_to_recover_ms
            ),
            (1, Some(0), Some(980))
        );
    }
}
