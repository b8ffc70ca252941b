//! A run's result for people: a text table (here), and a self-contained HTML page
//! (`page`) with one SVG chart per probe (`chart`). JSON is the serde form of
//! [`RunResult`].

mod chart;
mod page;

use std::fmt::Write;

pub use page::html;

use crate::engine::load::{LoadPhase, LoadResult, Phase, change_percent};
use crate::engine::outage::FaultOutage;
use crate::engine::runner::{RunResult, StepPlan};
use crate::engine::stats::PhaseStats;

/// Text as HTML: the characters that could start a tag or an entity, or end an attribute.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(super) fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.1}"))
}

pub(super) fn secs(value: Option<u64>) -> String {
    value.map_or("-".into(), |v| format!("{:.2}s", v as f64 / 1000.0))
}

fn stats_row(out: &mut String, probe: &str, phase: &str, s: &PhaseStats) {
    let _ = writeln!(
        out,
        "{probe:<16} {phase:<7} {:>6} {:>8.3} {:>9} {:>9} {:>9} {:>9}",
        s.count,
        s.success_ratio,
        ms(s.mean_ms),
        ms(s.p50_ms),
        ms(s.p95_ms),
        ms(s.p99_ms)
    );
}

/// The final table `chaosctl run` prints.
pub fn table(result: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "experiment {}  run {}",
        result.experiment, result.run_id
    );
    let _ = writeln!(
        out,
        "{:<16} {:<7} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "PROBE", "PHASE", "COUNT", "SUCCESS", "MEAN ms", "P50 ms", "P95 ms", "P99 ms"
    );
    for p in &result.probes {
        stats_row(&mut out, &p.name, "before", &p.before);
        stats_row(&mut out, &p.name, "during", &p.during);
        stats_row(&mut out, &p.name, "after", &p.after);
    }
    if let Some(load) = &result.load {
        let _ = writeln!(out);
        out.push_str(&load_table(load));
    }
    let _ = writeln!(out);
    for f in &result.faults {
        let _ = writeln!(
            out,
            "fault {:<12} {:<8} {} on {} id {} [{} → {}]{}",
            f.step,
            f.kind,
            f.target,
            f.agent,
            if f.fault_id.is_empty() {
                "-"
            } else {
                &f.fault_id
            },
            secs(Some(f.injected_at_ms)),
            secs(f.ended_at_ms),
            if f.error.is_empty() {
                String::new()
            } else {
                format!(" ERROR {}", f.error)
            }
        );
        let _ = writeln!(
            out,
            "      asked: {}{}",
            f.asked,
            if f.achieved.is_empty() {
                String::new()
            } else {
                format!("; did: {}", f.achieved)
            }
        );
        if let Some(why) = &f.no_effect {
            let _ = writeln!(out, "      NO EFFECT: {why}");
        }
    }
    if !result.per_fault.is_empty() {
        let _ = writeln!(out, "per fault, counted from its own injection:");
    }
    for f in &result.per_fault {
        let _ = writeln!(out, "  {}", fault_outage_line(f));
    }
    let _ = writeln!(
        out,
        "time to detect {}  time to recover {}  recovered {}",
        secs(result.timing.time_to_detect_ms),
        secs(result.timing.time_to_recover_ms),
        result.timing.recovered
    );
    if let Some(a) = &result.abort {
        let _ = writeln!(
            out,
            "aborted at {}: {} (all reverted at {})",
            secs(Some(a.at_ms)),
            a.reason,
            secs(a.reverted_at_ms)
        );
    }
    let _ = writeln!(out, "verdict {}", result.verdict.name().to_uppercase());
    for r in &result.reasons {
        let _ = writeln!(out, "  - {r}");
    }
    out
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:+.1}%"))
}

/// The load's figures per phase, with the change from before.
pub fn load_table(load: &LoadResult) -> String {
    let table = load_rows(load);
    let mut out = format!("load: {}\n", load.description);
    let columns = table.header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            std::iter::once(&table.header)
                .chain(&table.rows)
                .map(|row| row.get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&table.header).chain(&table.rows) {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            // The first column is a name, left-aligned; the figures are right-aligned.
            if c == 0 {
                let _ = write!(line, "{cell:<width$}", width = widths[c]);
            } else {
                let _ = write!(line, "  {cell:>width$}", width = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for note in &table.notes {
        let _ = writeln!(out, "{note}");
    }
    out
}

/// The load's figures as rows, for the text table and the HTML one: per phase for the
/// HTTP load, per figure for an exec load; `notes` are the lines under the table.
pub(super) struct LoadRows {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

pub(super) fn load_rows(load: &LoadResult) -> LoadRows {
    if load.exec_runs.is_empty() {
        http_load_rows(load)
    } else {
        exec_load_rows(load)
    }
}

fn http_load_rows(load: &LoadResult) -> LoadRows {
    let before = load.phases.first();
    let header = [
        "PHASE",
        "SECONDS",
        "REQUESTS",
        "ERRORS",
        "THROUGHPUT",
        "CHANGE",
        "MEAN ms",
        "P50 ms",
        "P95 ms",
        "P99 ms",
    ];
    let rows = load
        .phases
        .iter()
        .filter_map(|phase| {
            let requests = phase.requests.as_ref()?;
            let change = change_percent(
                before.and_then(|b| b.throughput_per_s),
                phase.throughput_per_s,
            );
            Some(vec![
                phase.phase.name().to_string(),
                format!("{:.1}", phase.seconds),
                requests.count.to_string(),
                (requests.count - requests.successes).to_string(),
                phase
                    .throughput_per_s
                    .map_or("-".into(), |t| format!("{t:.1}/s")),
                if phase.phase == Phase::Before {
                    String::new()
                } else {
                    percent(change)
                },
                ms(requests.mean_ms),
                ms(requests.p50_ms),
                ms(requests.p95_ms),
                ms(requests.p99_ms),
            ])
        })
        .collect();
    LoadRows {
        header: header.iter().map(|h| h.to_string()).collect(),
        rows,
        notes: Vec::new(),
    }
}

fn exec_load_rows(load: &LoadResult) -> LoadRows {
    let before = load.phases.first();
    let names: Vec<&String> = load
        .phases
        .iter()
        .flat_map(|p| p.figures.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let figure = |phase: &LoadPhase, name: &str| phase.figures.get(name).copied();
    let rows = names
        .into_iter()
        .map(|name| {
            let mut row = vec![name.clone()];
            for phase in &load.phases {
                let value = figure(phase, name).map_or("-".into(), |v| format!("{v:.2}"));
                if phase.phase == Phase::Before {
                    row.push(value);
                } else {
                    let change =
                        change_percent(before.and_then(|b| figure(b, name)), figure(phase, name));
                    row.push(format!("{value} ({})", percent(change)));
                }
            }
            row
        })
        .collect();
    let runs: Vec<String> = load
        .phases
        .iter()
        .map(|p| {
            format!(
                "{} {} ({} failed)",
                p.phase.name(),
                p.runs.unwrap_or(0),
                p.failed_runs.unwrap_or(0)
            )
        })
        .collect();
    let mut notes = vec![format!("runs: {}", runs.join(", "))];
    for run in load.exec_runs.iter().filter(|r| !r.error.is_empty()) {
        notes.push(format!(
            "  run at {}: {}",
            secs(Some(run.started_at_ms)),
            run.error
        ));
    }
    let mut header = vec!["FIGURE".to_string()];
    for phase in &load.phases {
        header.push(if phase.phase == Phase::Before {
            phase.phase.name().to_string()
        } else {
            format!("{} (change)", phase.phase.name())
        });
    }
    LoadRows {
        header,
        rows,
        notes,
    }
}

/// One fault step's own outage and recovery, counted from its injection.
pub(super) fn fault_outage_line(f: &FaultOutage) -> String {
    let mut line = format!("{:<12} ", f.step);
    if f.outages == 0 {
        line.push_str("no outage");
        return line;
    }
    let _ = write!(
        line,
        "outage at +{}, {} long",
        secs(f.outage_start_ms),
        secs(f.outage_ms)
    );
    if f.outages > 1 {
        let _ = write!(line, " in {} stretches", f.outages);
    }
    match f.time_to_recover_ms {
        Some(_) => {
            let _ = write!(line, ", recovered at +{}", secs(f.time_to_recover_ms));
        }
        None => line.push_str(", not recovered"),
    }
    line
}

/// What `--dry-run` prints.
pub fn plan_table(plans: &[StepPlan]) -> String {
    let mut out = String::new();
    for p in plans {
        let _ = writeln!(
            out,
            "fault {} ({}, {:.1}s) on {} target(s):",
            p.step,
            p.kind,
            p.duration_ms as f64 / 1000.0,
            p.targets.len()
        );
        for t in &p.targets {
            let _ = writeln!(out, "  {} {} via {}", t.target, t.pod, t.agent);
        }
    }
    out
}
