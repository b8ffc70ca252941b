//! One probe's latency over the run as an inline SVG: axes with ticks and their units,
//! the phases named along the top, each fault's window shaded and labelled with its step,
//! failed samples marked on the time axis and slow ones at their latency.

use std::fmt::Write;

use super::escape;
use crate::engine::runner::RunResult;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
/// Room for the phase names and the fault labels above the plot.
const TOP: f64 = 46.0;
const BOTTOM: f64 = 48.0;

pub(super) const LATENCY_COLOUR: &str = "#2471a3";
pub(super) const FAILURE_COLOUR: &str = "#c0392b";
pub(super) const SLOW_COLOUR: &str = "#e67e22";
pub(super) const FAULT_COLOUR: &str = "#f5b041";
pub(super) const THROUGHPUT_COLOUR: &str = "#117a65";
/// Darker than the window, to be read on white.
const FAULT_LABEL_COLOUR: &str = "#9c640c";

/// Tick positions from 0 to at least `max`: a step of 1, 2 or 5 times a power of ten,
/// the smallest that gives at most `most` intervals.
pub(super) fn ticks(max: f64, most: usize) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let rough = max / most.max(1) as f64;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|step| step * most as f64 >= max)
        .unwrap_or(10.0 * power);
    let count = (max / step).ceil() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

/// A tick's label without trailing zeros: 0, 0.5, 2, 150.
fn tick_label(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

struct Frame {
    end_ms: f64,
    max_value: f64,
}

impl Frame {
    fn x(&self, at_ms: f64) -> f64 {
        LEFT + at_ms / self.end_ms * (WIDTH - LEFT - RIGHT)
    }
    fn y(&self, value: f64) -> f64 {
        HEIGHT - BOTTOM - value / self.max_value * (HEIGHT - TOP - BOTTOM)
    }
}

pub(super) fn latency_chart(result: &RunResult, probe: usize) -> String {
    let p = &result.probes[probe];
    let highest = p
        .samples
        .iter()
        .filter(|s| s.success)
        .map(|s| s.latency_ms)
        .fold(0.0_f64, f64::max);
    let (mut svg, frame) = open_chart(
        result,
        highest,
        &format!("latency of probe {}", p.name),
        "latency (ms)",
    );
    let plot_bottom = HEIGHT - BOTTOM;
    // One line per stretch of successful samples: a line across failures would draw
    // latencies nobody measured.
    for stretch in p.samples.split(|s| !s.success) {
        let points: Vec<String> = stretch
            .iter()
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    frame.x(s.at_ms as f64),
                    frame.y(s.latency_ms)
                )
            })
            .collect();
        if !points.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline class="latency" fill="none" stroke="{LATENCY_COLOUR}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
        }
    }
    for s in p.samples.iter().filter(|s| !s.healthy) {
        let (colour, y, what) = if s.success {
            (SLOW_COLOUR, frame.y(s.latency_ms), "too slow")
        } else {
            (FAILURE_COLOUR, plot_bottom, "failed")
        };
        let _ = write!(
            svg,
            r#"<circle class="unhealthy" cx="{:.1}" cy="{y:.1}" r="4" fill="{colour}"><title>{what} at {:.2} s: {}</title></circle>"#,
            frame.x(s.at_ms as f64),
            s.at_ms as f64 / 1000.0,
            escape(&s.error)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// An SVG over the run's time axis up to `highest` on the value axis, with the fault
/// windows, the phases and both axes drawn (windows first, so what the caller draws next
/// goes over them), and its frame.
fn open_chart(result: &RunResult, highest: f64, label: &str, value_label: &str) -> (String, Frame) {
    let value_ticks = ticks(highest, 5);
    let time_ticks = ticks(result.phases.end_ms as f64 / 1000.0, 12);
    let frame = Frame {
        end_ms: time_ticks.last().copied().unwrap_or(1.0) * 1000.0,
        max_value: value_ticks.last().copied().unwrap_or(1.0),
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12" role="img" aria-label="{}">"#,
        escape(label)
    );
    fault_windows(&mut svg, result, &frame);
    phases(&mut svg, result, &frame);
    axes(&mut svg, &frame, &time_ticks, &value_ticks, value_label);
    (svg, frame)
}

/// Each fault step's window shaded over the plot, its name above.
fn fault_windows(svg: &mut String, result: &RunResult, frame: &Frame) {
    let (plot_top, plot_bottom) = (TOP, HEIGHT - BOTTOM);
    for (index, f) in result.per_fault.iter().enumerate() {
        let start = frame.x(f.injected_at_ms as f64);
        let stop = frame
            .x(f.ended_at_ms.unwrap_or(result.phases.end_ms) as f64)
            .max(start + 3.0);
        // Two rows of labels, so faults close together do not write over each other.
        let label_y = plot_top - 4.0 - (index % 2) as f64 * 14.0;
        let _ = write!(
            svg,
            r#"<rect class="fault-window" x="{start:.1}" y="{plot_top}" width="{:.1}" height="{:.1}" fill="{FAULT_COLOUR}" fill-opacity="0.35"><title>fault {}</title></rect><text class="fault-label" x="{start:.1}" y="{label_y}" fill="{FAULT_LABEL_COLOUR}" font-weight="bold">{}</text>"#,
            stop - start,
            plot_bottom - plot_top,
            escape(&f.step),
            escape(&f.step)
        );
    }
}

/// The HTTP load's answered requests per second over the run, on the latency chart's
/// time axis, so the two read one above the other.
pub(super) fn throughput_chart(result: &RunResult, per_second: &[u64]) -> String {
    let highest = per_second.iter().copied().max().unwrap_or(0) as f64;
    let (mut svg, frame) = open_chart(
        result,
        highest,
        "load throughput",
        "answered requests per second",
    );
    // A step line: each second's count held across that second.
    let mut points = Vec::new();
    for (second, count) in per_second.iter().enumerate() {
        let y = frame.y(*count as f64);
        points.push(format!("{:.1},{y:.1}", frame.x(second as f64 * 1000.0)));
        points.push(format!(
            "{:.1},{y:.1}",
            frame.x((second + 1) as f64 * 1000.0)
        ));
    }
    if !points.is_empty() {
        let _ = write!(
            svg,
            r#"<polyline class="throughput" fill="none" stroke="{THROUGHPUT_COLOUR}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Dashed lines where the phases change, and each phase's name above its stretch.
fn phases(svg: &mut String, result: &RunResult, frame: &Frame) {
    let method_start = result
        .phases
        .first_inject_ms
        .unwrap_or(result.phases.baseline_end_ms);
    let method_end = result.phases.method_end_ms.unwrap_or(result.phases.end_ms);
    let stretches = [
        ("baseline", 0, method_start),
        ("faults", method_start, method_end),
        ("recovery", method_end, result.phases.end_ms),
    ];
    for (name, from, to) in stretches {
        if to <= from {
            continue;
        }
        let (left, right) = (frame.x(from as f64), frame.x(to as f64));
        let _ = write!(
            svg,
            r##"<text class="phase" x="{:.1}" y="12" text-anchor="middle" fill="#555">{name}</text><line x1="{right:.1}" x2="{right:.1}" y1="{TOP}" y2="{:.1}" stroke="#777" stroke-dasharray="4 3"/>"##,
            (left + right) / 2.0,
            HEIGHT - BOTTOM
        );
    }
}

fn axes(
    svg: &mut String,
    frame: &Frame,
    time_ticks: &[f64],
    value_ticks: &[f64],
    value_label: &str,
) {
    let (plot_top, plot_bottom) = (TOP, HEIGHT - BOTTOM);
    let (plot_left, plot_right) = (LEFT, WIDTH - RIGHT);
    let _ = write!(
        svg,
        r##"<line x1="{plot_left}" x2="{plot_right}" y1="{plot_bottom}" y2="{plot_bottom}" stroke="#000"/><line x1="{plot_left}" x2="{plot_left}" y1="{plot_top}" y2="{plot_bottom}" stroke="#000"/>"##
    );
    for &seconds in time_ticks {
        let x = frame.x(seconds * 1000.0);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{plot_bottom}" y2="{:.1}" stroke="#000"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            plot_bottom + 5.0,
            plot_bottom + 18.0,
            tick_label(seconds)
        );
    }
    for &value in value_ticks {
        let y = frame.y(value);
        let _ = write!(
            svg,
            r##"<line x1="{:.1}" x2="{plot_right}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><line x1="{:.1}" x2="{plot_left}" y1="{y:.1}" y2="{y:.1}" stroke="#000"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            plot_left + 1.0,
            plot_left - 5.0,
            plot_left - 8.0,
            y + 4.0,
            tick_label(value)
        );
    }
    let _ = write!(
        svg,
        r#"<text class="axis-label" x="{:.1}" y="{:.1}" text-anchor="middle">time since the start of the run (s)</text><text class="axis-label" transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{value_label}</text>"#,
        (plot_left + plot_right) / 2.0,
        HEIGHT - 8.0,
        (plot_top + plot_bottom) / 2.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_steps_that_cover_the_maximum() {
        assert_eq!(
            ticks(9.3, 12),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
        );
        assert_eq!(ticks(4.8, 5), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(ticks(37.0, 5), vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        let nothing: Vec<String> = ticks(0.0, 5).into_iter().map(tick_label).collect();
        assert_eq!(nothing, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(ticks(130.0, 12).last(), Some(&140.0));
        for (max, most) in [(0.7, 5), (1234.0, 12), (61.0, 12), (3.0, 1)] {
            let found = ticks(max, most);
            assert!(found.len() - 1 <= most.max(1), "{max}: {found:?}");
            assert!(*found.last().unwrap() >= max, "{max}: {found:?}");
        }
    }

    #[test]
    fn tick_labels_drop_trailing_zeros() {
        let labels: Vec<String> = [0.0, 0.5, 2.0, 150.0, 0.25]
            .into_iter()
            .map(tick_label)
            .collect();
        assert_eq!(labels, ["0", "0.5", "2", "150", "0.25"]);
    }
}
