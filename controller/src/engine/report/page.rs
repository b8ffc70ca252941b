//! The HTML report: a summary card (verdict, hypothesis, reasons, the run's and each
//! fault's time to detect and recover), the statistics and faults as tables, and a chart
//! per probe. Self-contained: inline CSS and SVG, no script, nothing fetched, so it can
//! be mailed, archived or opened on a machine without network.

use std::fmt::Write;

use super::chart::{
    FAILURE_COLOUR, FAULT_COLOUR, LATENCY_COLOUR, SLOW_COLOUR, latency_chart, throughput_chart,
};
use super::{escape, load_rows, ms, secs};
use crate::engine::load::LoadResult;
use crate::engine::runner::RunResult;
use crate::engine::stats::PhaseStats;

const STYLE: &str = "\
body{font-family:sans-serif;margin:2em;color:#222;max-width:1000px}\
.card{border:1px solid #ccc;border-radius:6px;padding:1em 1.5em;margin-bottom:1.5em}\
.verdict{display:inline-block;padding:.2em .8em;border-radius:4px;color:#fff;font-weight:bold}\
.passed{background:#1e8449}.deviated{background:#b9770e}.aborted{background:#7d3c98}\
.failed{background:#c0392b}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border:1px solid #ccc;padding:3px 10px;text-align:right}\
th{background:#f4f6f7}td.name,th.name{text-align:left}\
.legend span{display:inline-block;margin-right:1.5em}\
.swatch{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle}\
.figures td{text-align:left}tr.flagged td{background:#fdedec}.no-effect{color:#c0392b}";

/// The page `chaosctl run --report` writes.
pub fn html(result: &RunResult) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0} — {1}</title>\
         <style>{STYLE}</style></head><body><h1>{0}</h1>",
        escape(&result.experiment),
        result.verdict.name()
    );
    summary(&mut page, result);
    statistics(&mut page, result);
    faults(&mut page, result);
    if let Some(load) = &result.load {
        load_section(&mut page, load);
    }
    for (index, p) in result.probes.iter().enumerate() {
        let _ = write!(page, "<h2>probe {}: latency</h2>", escape(&p.name));
        page.push_str(&latency_chart(result, index));
        legend(&mut page);
    }
    if let Some(load) = result
        .load
        .as_ref()
        .filter(|l| !l.throughput_by_second.is_empty())
    {
        page.push_str("<h2>load: throughput</h2>");
        page.push_str(&throughput_chart(result, &load.throughput_by_second));
    }
    page.push_str("</body></html>\n");
    page
}

fn summary(page: &mut String, result: &RunResult) {
    let _ = write!(
        page,
        "<div class=\"card summary\"><p><span class=\"verdict {}\">{}</span> run {}</p>\
         <p><strong>Hypothesis:</strong> {}</p>",
        result.verdict.name(),
        result.verdict.name().to_uppercase(),
        escape(&result.run_id),
        escape(&result.hypothesis)
    );
    if !result.reasons.is_empty() {
        page.push_str("<p><strong>Why:</strong></p><ul class=\"reasons\">");
        for r in &result.reasons {
            let _ = write!(page, "<li>{}</li>", escape(r));
        }
        page.push_str("</ul>");
    }
    // Per fault, the time to detect is the start of its first outage.
    let _ = write!(
        page,
        "<table class=\"figures\"><tr><th class=\"name\">counted from</th>\
         <th>time to detect</th><th>time to recover</th><th>outages</th>\
         <th>outage length</th></tr><tr><td class=\"name\">the first injection (the run)</td>\
         <td>{}</td><td>{}</td><td></td><td></td></tr>",
        secs(result.timing.time_to_detect_ms),
        secs(result.timing.time_to_recover_ms),
    );
    for f in &result.per_fault {
        let _ = write!(
            page,
            "<tr><td class=\"name\">fault {}'s injection</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            escape(&f.step),
            secs(f.outage_start_ms),
            secs(f.time_to_recover_ms),
            f.outages,
            secs(f.outage_ms)
        );
    }
    page.push_str("</table>");
    let without_effect: Vec<_> = result
        .faults
        .iter()
        .filter(|f| f.no_effect.is_some())
        .collect();
    if !without_effect.is_empty() {
        page.push_str(
            "<p><strong>Faults that took no effect:</strong></p><ul class=\"no-effect\">",
        );
        for f in without_effect {
            let _ = write!(
                page,
                "<li>{} on {}: {}</li>",
                escape(&f.step),
                escape(&f.target),
                escape(f.no_effect.as_deref().unwrap_or_default())
            );
        }
        page.push_str("</ul>");
    }
    if let Some(a) = &result.abort {
        let _ = write!(
            page,
            "<p><strong>Aborted</strong> at {}: {} (everything reverted at {})</p>",
            secs(Some(a.at_ms)),
            escape(&a.reason),
            secs(a.reverted_at_ms)
        );
    }
    if !result.rollback_errors.is_empty() {
        page.push_str("<p><strong>Not reverted:</strong></p><ul>");
        for e in &result.rollback_errors {
            let _ = write!(page, "<li>{}</li>", escape(e));
        }
        page.push_str("</ul>");
    }
    page.push_str("</div>");
}

fn stats_row(page: &mut String, probe: &str, phase: &str, s: &PhaseStats) {
    let _ = write!(
        page,
        "<tr><td class=\"name\">{}</td><td class=\"name\">{phase}</td><td>{}</td><td>{:.3}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        escape(probe),
        s.count,
        s.success_ratio,
        ms(s.mean_ms),
        ms(s.p50_ms),
        ms(s.p95_ms),
        ms(s.p99_ms),
        ms(s.max_ms)
    );
}

/// The load's figures as a table (the same rows as the text report), the runs that
/// failed under it.
fn load_section(page: &mut String, load: &LoadResult) {
    let table = load_rows(load);
    let _ = write!(
        page,
        "<h2>Load</h2><p>{}</p><table class=\"load\"><tr>",
        escape(&load.description)
    );
    for (c, name) in table.header.iter().enumerate() {
        let class = if c == 0 { " class=\"name\"" } else { "" };
        let _ = write!(page, "<th{class}>{}</th>", escape(name));
    }
    page.push_str("</tr>");
    for row in &table.rows {
        page.push_str("<tr>");
        for (c, cell) in row.iter().enumerate() {
            let class = if c == 0 { " class=\"name\"" } else { "" };
            let _ = write!(page, "<td{class}>{}</td>", escape(cell));
        }
        page.push_str("</tr>");
    }
    page.push_str("</table>");
    if !table.notes.is_empty() {
        let _ = write!(
            page,
            "<pre class=\"load-notes\">{}</pre>",
            escape(&table.notes.join("\n"))
        );
    }
}

fn statistics(page: &mut String, result: &RunResult) {
    page.push_str(
        "<h2>Probes by phase</h2><table class=\"statistics\"><tr><th class=\"name\">probe</th>\
         <th class=\"name\">phase</th><th>samples</th><th>success ratio</th><th>mean ms</th>\
         <th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th></tr>",
    );
    for p in &result.probes {
        stats_row(page, &p.name, "before", &p.before);
        stats_row(page, &p.name, "during", &p.during);
        stats_row(page, &p.name, "after", &p.after);
    }
    page.push_str("</table>");
}

fn faults(page: &mut String, result: &RunResult) {
    if result.faults.is_empty() {
        return;
    }
    page.push_str(
        "<h2>Faults</h2><table class=\"faults\"><tr><th class=\"name\">step</th>\
         <th class=\"name\">target</th><th class=\"name\">asked</th>\
         <th class=\"name\">achieved (the agent's measurement)</th><th>injected</th>\
         <th>ended</th><th class=\"name\">agent, fault id</th></tr>",
    );
    for f in &result.faults {
        let mut achieved = escape(&f.achieved);
        if let Some(why) = &f.no_effect {
            let _ = write!(
                achieved,
                "<br><strong class=\"no-effect\">no effect: {}</strong>",
                escape(why)
            );
        }
        if !f.error.is_empty() {
            let _ = write!(achieved, "<br><strong>error: {}</strong>", escape(&f.error));
        }
        let _ = write!(
            page,
            "<tr{}><td class=\"name\">{}</td><td class=\"name\">{}</td>\
             <td class=\"name\">{}</td><td class=\"name\">{achieved}</td><td>{}</td><td>{}</td>\
             <td class=\"name\">{} {}</td></tr>",
            if f.no_effect.is_some() || !f.error.is_empty() {
                " class=\"flagged\""
            } else {
                ""
            },
            escape(&f.step),
            escape(&f.target),
            escape(&f.asked),
            secs(Some(f.injected_at_ms)),
            secs(f.ended_at_ms),
            escape(&f.agent),
            escape(&f.fault_id)
        );
    }
    page.push_str("</table>");
}

fn legend(page: &mut String) {
    let swatch = |colour: &str, what: &str| {
        format!("<span><i class=\"swatch\" style=\"background:{colour}\"></i>{what}</span>")
    };
    let _ = write!(
        page,
        "<p class=\"legend\">{}{}{}{}</p>",
        swatch(LATENCY_COLOUR, "latency of successful samples"),
        swatch(FAULT_COLOUR, "fault window (labelled with its step)"),
        swatch(FAILURE_COLOUR, "failed sample"),
        swatch(SLOW_COLOUR, "sample over the latency tolerance")
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::load::{ExecRun, LoadPhase, Phase};

    fn phase(phase: Phase, tps: Option<f64>, runs: usize, failed: usize) -> LoadPhase {
        LoadPhase {
            phase,
            seconds: 10.0,
            requests: None,
            throughput_per_s: None,
            figures: tps.map(|t| ("tps".to_string(), t)).into_iter().collect(),
            runs: Some(runs),
            failed_runs: Some(failed),
        }
    }

    fn pgbench_load() -> LoadResult {
        LoadResult {
            description: "exec `pgbench` back to back".into(),
            phases: vec![
                phase(Phase::Before, Some(369.4), 3, 0),
                phase(Phase::During, Some(327.7), 4, 1),
                phase(Phase::After, None, 1, 1),
            ],
            throughput_by_second: Vec::new(),
            exec_runs: vec![ExecRun {
                phase: Phase::During,
                started_at_ms: 8_000,
                ended_at_ms: 8_100,
                figures: BTreeMap::new(),
                error: "exit status: 2 <aborted>".into(),
            }],
        }
    }

    #[test]
    fn the_load_is_an_html_table_with_its_changes_and_the_failed_runs_under_it() {
        let mut page = String::new();
        load_section(&mut page, &pgbench_load());
        assert!(page.contains(
            "<tr><th class=\"name\">FIGURE</th><th>before</th><th>during (change)</th>\
             <th>after (change)</th></tr>"
        ));
        assert!(page.contains(
            "<tr><td class=\"name\">tps</td><td>369.40</td><td>327.70 (-11.3%)</td>\
             <td>- (-)</td></tr>"
        ));
        assert!(
            page.contains("runs: before 3 (0 failed), during 4 (1 failed), after 1 (1 failed)")
        );
        // Command output is escaped, not markup.
        assert!(page.contains("exit status: 2 &lt;aborted&gt;"), "{page}");
        assert!(!page.contains("<pre class=\"load\">"));
    }

    #[test]
    fn the_text_table_has_the_same_rows_in_aligned_columns() {
        let text = crate::engine::report::load_table(&pgbench_load());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "load: exec `pgbench` back to back");
        assert_eq!(lines[1], "FIGURE  before  during (change)  after (change)");
        assert_eq!(lines[2], "tps     369.40  327.70 (-11.3%)           - (-)");
        assert!(lines[3].starts_with("runs: before 3"));
    }
}
