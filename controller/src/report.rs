//! A run's result for people: a text table, and an HTML page with one inline SVG chart
//! per probe (latency over time, failures marked, fault windows shaded). JSON is the
//! serde form of [`RunResult`].

use std::fmt::Write;

use crate::outage::FaultOutage;
use crate::runner::{RunResult, StepPlan};
use crate::stats::PhaseStats;

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.1}"))
}

fn secs(value: Option<u64>) -> String {
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

/// One fault step's own outage and recovery, counted from its injection.
fn fault_outage_line(f: &FaultOutage) -> String {
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 220.0;
const MARGIN: f64 = 40.0;

/// One probe's chart: x is time since the start, y latency; failures are red marks on
/// the axis, fault windows shaded, phase boundaries dashed.
fn chart(result: &RunResult, probe: usize) -> String {
    let p = &result.probes[probe];
    let end = result.phases.end_ms.max(1) as f64;
    let max_latency = p
        .samples
        .iter()
        .filter(|s| s.success)
        .map(|s| s.latency_ms)
        .fold(1.0_f64, f64::max);
    let x = |at: f64| MARGIN + at / end * (WIDTH - 2.0 * MARGIN);
    let y = |latency: f64| HEIGHT - MARGIN - latency / max_latency * (HEIGHT - 2.0 * MARGIN);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{}">"#,
        escape(&p.name)
    );
    for f in &result.faults {
        let start = f.injected_at_ms as f64;
        let stop = f
            .ended_at_ms
            .map_or(end, |e| e as f64)
            .max(start + end / 300.0);
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{MARGIN}" width="{:.1}" height="{:.1}" fill="#f5b041" fill-opacity="0.3"><title>{} {}</title></rect>"##,
            x(start),
            x(stop) - x(start),
            HEIGHT - 2.0 * MARGIN,
            escape(&f.step),
            escape(&f.target)
        );
    }
    for boundary in [
        Some(result.phases.baseline_end_ms),
        result.phases.method_end_ms,
    ]
    .into_iter()
    .flatten()
    {
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{MARGIN}" y2="{1:.1}" stroke="#555" stroke-dasharray="4 3"/>"##,
            x(boundary as f64),
            HEIGHT - MARGIN
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{MARGIN}" x2="{:.1}" y1="{1:.1}" y2="{1:.1}" stroke="#000"/><line x1="{MARGIN}" x2="{MARGIN}" y1="{MARGIN}" y2="{1:.1}" stroke="#000"/>"##,
        WIDTH - MARGIN,
        HEIGHT - MARGIN
    );
    let _ = write!(
        svg,
        r#"<text x="4" y="{}" font-size="11">{max_latency:.0} ms</text><text x="{:.1}" y="{}" font-size="11">{:.1} s</text>"#,
        MARGIN + 4.0,
        WIDTH - MARGIN - 30.0,
        HEIGHT - MARGIN + 16.0,
        end / 1000.0
    );
    let points: Vec<String> = p
        .samples
        .iter()
        .filter(|s| s.success)
        .map(|s| format!("{:.1},{:.1}", x(s.at_ms as f64), y(s.latency_ms)))
        .collect();
    if !points.is_empty() {
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="#2471a3" stroke-width="1.5" points="{}"/>"##,
            points.join(" ")
        );
    }
    for s in p.samples.iter().filter(|s| !s.healthy) {
        let _ = write!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#c0392b"><title>{}</title></circle>"##,
            x(s.at_ms as f64),
            HEIGHT - MARGIN,
            escape(&s.error)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A self-contained HTML page (no scripts, no external resources).
pub fn html(result: &RunResult) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0} — {1}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>\
         <h1>{0}</h1><p>run {2} — verdict <strong>{1}</strong></p><ul>",
        escape(&result.experiment),
        result.verdict.name(),
        escape(&result.run_id)
    );
    for r in &result.reasons {
        let _ = write!(page, "<li>{}</li>", escape(r));
    }
    let _ = write!(
        page,
        "</ul><p>time to detect {} — time to recover {} — recovered {}</p>",
        secs(result.timing.time_to_detect_ms),
        secs(result.timing.time_to_recover_ms),
        result.timing.recovered
    );
    if !result.per_fault.is_empty() {
        page.push_str(
            "<table><tr><th>fault</th><th>outages</th><th>outage start</th>\
             <th>outage length</th><th>time to recover</th></tr>",
        );
        for f in &result.per_fault {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&f.step),
                f.outages,
                secs(f.outage_start_ms),
                secs(f.outage_ms),
                secs(f.time_to_recover_ms)
            );
        }
        page.push_str(
            "</table><p>Outage start and time to recover count from the fault's own injection.</p>",
        );
    }
    page.push_str("<pre>");
    page.push_str(&escape(&table(result)));
    page.push_str("</pre>");
    for (index, p) in result.probes.iter().enumerate() {
        let _ = write!(page, "<h2>probe {}</h2>", escape(&p.name));
        page.push_str(&chart(result, index));
    }
    page.push_str("</body></html>\n");
    page
}
