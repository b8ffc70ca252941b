//! Load during an experiment: the `load` section drives the system under test for the
//! whole run (baseline, faults, recovery) and is measured per phase, so a report shows
//! what the system carried before, during and after the faults, the table our users made
//! by hand around their pgbench runs.
//!
//! - `http`: a built-in generator (`http`), at a fixed request rate (open loop: a slow
//!   service does not slow the arrivals) or over a number of connections each sending its
//!   next request when the last one is answered (closed loop: the throughput the service
//!   can give);
//! - `exec`: a benchmark command (`exec`: pgbench, wrk, a script), run once per phase or
//!   back to back, whose figures are taken from its output by named patterns.
//!
//! This file: the spec as the YAML writes it, its validation, and the per-phase figures
//! (pure). The generators only record what they saw.

mod exec;
mod http;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::engine::probe::Sample;
use crate::engine::probe::url::parse_url;
use crate::engine::stats::{PhaseStats, phase_stats};
use crate::units::duration::parse_duration;

pub use exec::{ExecLoadRun, ExecRun};
pub use http::HttpLoadRun;

/// `load: { http: … }` or `load: { exec: … }`, exactly one (checked by `validate`,
/// as probe kinds are).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    #[serde(default)]
    pub http: Option<HttpLoad>,
    #[serde(default)]
    pub exec: Option<ExecLoad>,
}

/// The load a valid spec names.
pub enum LoadKind<'a> {
    Http(&'a HttpLoad),
    Exec(&'a ExecLoad),
}

impl LoadSpec {
    pub fn kind(&self) -> Result<LoadKind<'_>, String> {
        match (&self.http, &self.exec) {
            (Some(h), None) => Ok(LoadKind::Http(h)),
            (None, Some(e)) => Ok(LoadKind::Exec(e)),
            _ => Err("needs exactly one of http, exec".into()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLoad {
    /// `http://HOST:PORT/PATH` (or https), sent GET.
    pub url: String,
    /// Requests per second, started on schedule whatever the answers.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Connections, each sending its next request when the last one is answered.
    #[serde(default)]
    pub connections: Option<usize>,
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecMode {
    /// Once at the start of each phase (baseline, faults, recovery).
    #[default]
    PerPhase,
    /// Again and again for the whole run; a run counts for the phase holding its middle.
    Continuous,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecLoad {
    /// argv run on the controller's host.
    pub command: Vec<String>,
    #[serde(default)]
    pub mode: ExecMode,
    /// Figure name → a regular expression with one capture group, the number, matched
    /// against the command's standard output (the last match counts), e.g.
    /// `tps: "tps = ([0-9.]+)"`.
    pub figures: BTreeMap<String, String>,
    /// One run is killed after this long.
    #[serde(default = "default_exec_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_exec_timeout() -> Duration {
    Duration::from_secs(600)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// The most a rate or a connection count may ask: a load generator inside a chaos tool
/// must not become the outage.
pub const MAX_RATE: f64 = 10_000.0;
pub const MAX_CONNECTIONS: usize = 256;
const MAX_FIGURE_PATTERN_BYTES: usize = 1024;

/// Checks what serde cannot; `Err` is (field under `load`, message).
pub fn validate(spec: &LoadSpec) -> Result<(), (String, String)> {
    let bad = |field: &str, message: String| Err((field.to_string(), message));
    let kind = spec.kind().map_err(|m| (String::new(), m))?;
    match kind {
        LoadKind::Http(h) => {
            parse_url(&h.url).map_err(|e| ("http.url".to_string(), e))?;
            match (h.rate, h.connections) {
                (Some(_), Some(_)) | (None, None) => {
                    return bad("http", "needs exactly one of rate, connections".into());
                }
                (Some(rate), None) if !(rate > 0.0 && rate <= MAX_RATE) => {
                    return bad(
                        "http.rate",
                        format!("must be above 0 and at most {MAX_RATE} requests per second"),
                    );
                }
                (None, Some(n)) if n == 0 || n > MAX_CONNECTIONS => {
                    return bad(
                        "http.connections",
                        format!("must be 1 to {MAX_CONNECTIONS}"),
                    );
                }
                _ => {}
            }
            if h.timeout.is_zero() {
                return bad("http.timeout", "must be above 0".into());
            }
        }
        LoadKind::Exec(e) => {
            if e.command.first().is_none_or(|program| program.is_empty()) {
                return bad("exec.command", "must name a program".into());
            }
            if e.figures.is_empty() {
                return bad("exec.figures", "needs at least one named pattern".into());
            }
            for (name, pattern) in &e.figures {
                exec::figure_pattern(pattern).map_err(|m| (format!("exec.figures.{name}"), m))?;
            }
            if e.timeout.is_zero() {
                return bad("exec.timeout", "must be above 0".into());
            }
        }
    }
    Ok(())
}

/// The run's phases, as the load is measured over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Before,
    During,
    After,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Before, Phase::During, Phase::After];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::During => "during",
            Phase::After => "after",
        }
    }
}

/// Where the phases change, in ms from the start of the run.
#[derive(Debug, Clone, Copy)]
pub struct PhaseBounds {
    pub faults_from_ms: u64,
    pub recovery_from_ms: u64,
    pub end_ms: u64,
}

impl PhaseBounds {
    pub fn of(self, at_ms: u64) -> Phase {
        if at_ms < self.faults_from_ms {
            Phase::Before
        } else if at_ms < self.recovery_from_ms {
            Phase::During
        } else {
            Phase::After
        }
    }

    /// The phase of a run from `start_ms` to `end_ms`: `during` if it overlaps the faults'
    /// window at all (a run the fault touched is not a clean before or after, and the run
    /// a kill cut short must count where the kill is), otherwise the side it is on.
    pub fn of_span(self, start_ms: u64, end_ms: u64) -> Phase {
        if start_ms < self.recovery_from_ms && end_ms > self.faults_from_ms {
            Phase::During
        } else {
            self.of(start_ms)
        }
    }

    fn span_ms(self, phase: Phase) -> u64 {
        match phase {
            Phase::Before => self.faults_from_ms,
            Phase::During => self.recovery_from_ms.saturating_sub(self.faults_from_ms),
            Phase::After => self.end_ms.saturating_sub(self.recovery_from_ms),
        }
    }
}

/// One phase of the load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadPhase {
    pub phase: Phase,
    pub seconds: f64,
    /// HTTP: the requests started in the phase, their latencies (answered ones only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<PhaseStats>,
    /// HTTP: answered requests per second of the phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_per_s: Option<f64>,
    /// exec: each figure's mean over the phase's runs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, f64>,
    /// exec: runs counted for the phase, and the ones that failed or matched nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_runs: Option<usize>,
}

/// What the load did over the run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// E.g. `http GET http://web:8080/ at 50 requests/s`.
    pub description: String,
    pub phases: Vec<LoadPhase>,
    /// HTTP: answered requests in each whole second of the run (index = second; the last,
    /// partial second is left out).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub throughput_by_second: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exec_runs: Vec<ExecRun>,
}

/// The HTTP load's figures: `requests` are (start, outcome) as `Sample`s.
pub fn http_result(description: String, requests: &[Sample], bounds: PhaseBounds) -> LoadResult {
    let phases = Phase::ALL
        .into_iter()
        .map(|phase| {
            let stats = phase_stats(requests.iter().filter(|r| bounds.of(r.at_ms) == phase));
            let seconds = bounds.span_ms(phase) as f64 / 1000.0;
            LoadPhase {
                phase,
                seconds,
                throughput_per_s: (seconds > 0.0).then(|| stats.successes as f64 / seconds),
                requests: Some(stats),
                figures: BTreeMap::new(),
                runs: None,
                failed_runs: None,
            }
        })
        .collect();
    // Whole seconds only: the run's last, partial second would read as a drop.
    let seconds = (bounds.end_ms / 1000) as usize;
    let mut throughput_by_second = vec![0; seconds];
    for r in requests.iter().filter(|r| r.success) {
        if let Some(count) = throughput_by_second.get_mut((r.at_ms / 1000) as usize) {
            *count += 1;
        }
    }
    LoadResult {
        description,
        phases,
        throughput_by_second,
        exec_runs: Vec::new(),
    }
}

/// The exec load's figures: each run counts for the phase it was started for
/// (`per_phase`) or holding its middle (`continuous`, decided when it was recorded).
pub fn exec_result(description: String, runs: Vec<ExecRun>, bounds: PhaseBounds) -> LoadResult {
    let phases = Phase::ALL
        .into_iter()
        .map(|phase| {
            let mine: Vec<&ExecRun> = runs.iter().filter(|r| r.phase == phase).collect();
            let good: Vec<&&ExecRun> = mine.iter().filter(|r| r.error.is_empty()).collect();
            let mut figures = BTreeMap::new();
            if let Some(first) = good.first() {
                for name in first.figures.keys() {
                    let values: Vec<f64> = good
                        .iter()
                        .filter_map(|r| r.figures.get(name))
                        .copied()
                        .collect();
                    figures.insert(
                        name.clone(),
                        values.iter().sum::<f64>() / values.len() as f64,
                    );
                }
            }
            LoadPhase {
                phase,
                seconds: bounds.span_ms(phase) as f64 / 1000.0,
                requests: None,
                throughput_per_s: None,
                figures,
                runs: Some(mine.len()),
                failed_runs: Some(mine.len() - good.len()),
            }
        })
        .collect();
    LoadResult {
        description,
        phases,
        throughput_by_second: Vec::new(),
        exec_runs: runs,
    }
}

impl LoadSpec {
    pub fn description(&self) -> String {
        match self.kind() {
            Err(e) => e,
            Ok(LoadKind::Http(h)) => match (h.rate, h.connections) {
                (Some(rate), _) => format!("http GET {} at {rate} requests/s", h.url),
                (_, connections) => format!(
                    "http GET {} over {} connection(s)",
                    h.url,
                    connections.unwrap_or(0)
                ),
            },
            Ok(LoadKind::Exec(e)) => format!(
                "exec `{}` {}",
                e.command.join(" "),
                match e.mode {
                    ExecMode::PerPhase => "once per phase",
                    ExecMode::Continuous => "back to back",
                }
            ),
        }
    }
}

/// A load while the experiment runs.
pub enum LoadRun {
    Http(HttpLoadRun),
    Exec(ExecLoadRun),
}

impl LoadRun {
    /// Starts the load; `phase` says which phase the run is in (the exec load starts a
    /// run at each change), `destinations` what a submitted run may connect to.
    pub fn start(
        spec: &LoadSpec,
        started: std::time::Instant,
        phase: tokio::sync::watch::Receiver<Phase>,
        destinations: Option<std::sync::Arc<crate::engine::probe::policy::ProbeDestinations>>,
    ) -> Result<LoadRun, String> {
        Ok(match spec.kind()? {
            LoadKind::Http(h) => LoadRun::Http(HttpLoadRun::start(h, started, destinations)?),
            LoadKind::Exec(e) => LoadRun::Exec(ExecLoadRun::start(e, started, phase)?),
        })
    }

    pub async fn stop(self, description: String, bounds: PhaseBounds) -> LoadResult {
        match self {
            LoadRun::Http(run) => http_result(description, &run.stop().await, bounds),
            LoadRun::Exec(run) => exec_result(description, run.stop(bounds).await, bounds),
        }
    }
}

/// `to` against `from` in percent, when both exist and `from` is not 0.
pub fn change_percent(from: Option<f64>, to: Option<f64>) -> Option<f64> {
    match (from, to) {
        (Some(from), Some(to)) if from != 0.0 => Some((to - from) / from * 100.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<LoadSpec, String> {
        let spec: LoadSpec = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        validate(&spec).map_err(|(field, message)| format!("{field}: {message}"))?;
        Ok(spec)
    }

    #[test]
    fn an_http_load_needs_one_of_rate_and_connections_within_bounds() {
        assert!(parse("http: { url: \"http://web:8080/\", rate: 50 }").is_ok());
        assert!(parse("http: { url: \"http://web:8080/\", connections: 4, timeout: 1s }").is_ok());
        for (yaml, want) in [
            (
                "http: { url: \"http://web/\" }",
                "exactly one of rate, connections",
            ),
            (
                "http: { url: \"http://web/\", rate: 5, connections: 2 }",
                "exactly one",
            ),
            ("http: { url: \"http://web/\", rate: 0 }", "http.rate"),
            ("http: { url: \"http://web/\", rate: 20000 }", "http.rate"),
            (
                "http: { url: \"http://web/\", connections: 0 }",
                "http.connections",
            ),
            ("http: { url: \"ftp://web/\", rate: 1 }", "http.url"),
            (
                "http: { url: \"http://web/\", rate: 1, burst: 3 }",
                "unknown field `burst`",
            ),
        ] {
            let error = parse(yaml).expect_err(yaml);
            assert!(error.contains(want), "{yaml}: {error}");
        }
    }

    #[test]
    fn an_exec_load_needs_a_program_and_patterns_with_one_group() {
        assert!(
            parse("exec: { command: [pgbench, -T, \"5\"], figures: { tps: \"tps = ([0-9.]+)\" } }")
                .is_ok()
        );
        for (yaml, want) in [
            (
                "exec: { command: [], figures: { tps: \"([0-9]+)\" } }",
                "exec.command",
            ),
            ("exec: { command: [x], figures: {} }", "exec.figures"),
            (
                "exec: { command: [x], figures: { tps: \"tps\" } }",
                "exec.figures.tps",
            ),
            (
                "exec: { command: [x], figures: { tps: \"(a)(b)\" } }",
                "exec.figures.tps",
            ),
            (
                "exec: { command: [x], figures: { tps: \"(\" } }",
                "exec.figures.tps",
            ),
        ] {
            let error = parse(yaml).expect_err(yaml);
            assert!(error.contains(want), "{yaml}: {error}");
        }
    }

    fn request(at_ms: u64, success: bool, latency_ms: f64) -> Sample {
        Sample {
            at_ms,
            success,
            healthy: success,
            latency_ms,
            error: String::new(),
        }
    }

    #[test]
    fn http_figures_are_per_phase_and_per_second() {
        let bounds = PhaseBounds {
            faults_from_ms: 2_000,
            recovery_from_ms: 4_000,
            end_ms: 5_000,
        };
        let requests = [
            request(100, true, 2.0),
            request(600, true, 4.0),
            request(1_100, true, 2.0),
            request(1_900, true, 4.0),
            request(2_500, false, 0.5),
            request(3_500, true, 40.0),
            request(4_200, true, 3.0),
        ];
        let result = http_result("test".into(), &requests, bounds);
        let [before, during, after] = result.phases.as_slice() else {
            panic!("{:?}", result.phases);
        };
        assert_eq!(before.throughput_per_s, Some(2.0));
        assert_eq!(before.requests.as_ref().map(|s| s.mean_ms), Some(Some(3.0)));
        assert_eq!(during.throughput_per_s, Some(0.5));
        let during_requests = during.requests.as_ref().unwrap();
        assert_eq!((during_requests.count, during_requests.successes), (2, 1));
        assert_eq!(after.throughput_per_s, Some(1.0));
        assert_eq!(result.throughput_by_second, vec![2, 2, 0, 1, 1]);
        // A run ending 300 ms into its sixth second: that second is left out.
        let longer = PhaseBounds {
            end_ms: 5_300,
            ..bounds
        };
        let mut late = requests.to_vec();
        late.push(request(5_100, true, 2.0));
        let result = http_result("test".into(), &late, longer);
        assert_eq!(result.throughput_by_second, vec![2, 2, 0, 1, 1]);
        assert_eq!(
            change_percent(before.throughput_per_s, during.throughput_per_s),
            Some(-75.0)
        );
    }

    #[test]
    fn exec_figures_are_the_mean_of_the_phases_good_runs() {
        let run = |phase, tps: Option<f64>| ExecRun {
            phase,
            started_at_ms: 0,
            ended_at_ms: 1,
            figures: tps
                .map(|t| BTreeMap::from([("tps".to_string(), t)]))
                .unwrap_or_default(),
            error: if tps.is_some() {
                String::new()
            } else {
                "exit status 1".into()
            },
        };
        let bounds = PhaseBounds {
            faults_from_ms: 10,
            recovery_from_ms: 20,
            end_ms: 30,
        };
        let runs = vec![
            run(Phase::Before, Some(300.0)),
            run(Phase::Before, Some(400.0)),
            run(Phase::During, Some(100.0)),
            run(Phase::During, None),
        ];
        let result = exec_result("pgbench".into(), runs, bounds);
        assert_eq!(result.phases[0].figures["tps"], 350.0);
        assert_eq!(result.phases[1].figures["tps"], 100.0);
        assert_eq!(
            (result.phases[1].runs, result.phases[1].failed_runs),
            (Some(2), Some(1))
        );
        assert!(result.phases[2].figures.is_empty());
        assert_eq!(result.phases[2].runs, Some(0));
    }

    #[test]
    fn a_run_the_faults_window_touches_counts_as_during() {
        let bounds = PhaseBounds {
            faults_from_ms: 8_000,
            recovery_from_ms: 14_000,
            end_ms: 20_000,
        };
        // Mostly before, cut short by a kill at 8.1 s.
        assert_eq!(bounds.of_span(7_670, 8_150), Phase::During);
        assert_eq!(bounds.of_span(13_900, 15_900), Phase::During);
        assert_eq!(bounds.of_span(5_000, 7_000), Phase::Before);
        // Ends exactly as the faults begin: untouched.
        assert_eq!(bounds.of_span(6_000, 8_000), Phase::Before);
        assert_eq!(bounds.of_span(14_000, 16_000), Phase::After);
        assert_eq!(bounds.of_span(9_000, 10_000), Phase::During);
    }
}
