//! How much one experiment may ask for: counts of probes, faults, targets and labels, the
//! length of names, every duration, and the run's total length. A run holds a slot of
//! `chaosctl serve` and leases on the agents for its whole length, and every duration ends
//! up in `Instant` arithmetic; these bounds keep both finite. Checked after parsing, with
//! the field path in every error. Documented in docs/experiments.md.

use std::time::Duration;

use crate::engine::experiment::{Experiment, ExperimentError, FaultSpec, FaultStep, MethodMode};
use crate::units::duration::format_duration as human;

pub const MAX_PROBES: usize = 32;
pub const MAX_FAULTS: usize = 64;
/// Explicit `targets` of one step.
pub const MAX_EXPLICIT_TARGETS: usize = 256;
/// Experiment labels, and the label pairs of one selector.
pub const MAX_LABELS: usize = 32;
/// Bytes of a label key or value carried to the agents.
pub const MAX_LABEL_BYTES: usize = 253;
/// CIDRs or ports in one list of a network or blackhole step.
pub const MAX_LIST_ITEMS: usize = 256;
/// Bytes of the experiment's, a fault's or a probe's name.
pub const MAX_NAME_BYTES: usize = 128;
/// Agents called at once.
pub const MAX_PARALLELISM: usize = 1024;
/// A fault's duration, as the agents' own default `--max-duration-secs`; also the
/// baseline, a pause, the recovery timeout and every other window of the run.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// A lease longer than this would keep a dead controller's faults for too long.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(600);
/// A probe's interval and timeout.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(600);
/// Baseline + method + recovery timeout.
pub const MAX_RUN_LENGTH: Duration = Duration::from_secs(6 * 3600);

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ExperimentError {
    ExperimentError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn at_most(field: &str, value: Duration, max: Duration) -> Result<(), ExperimentError> {
    if value > max {
        return Err(invalid(
            field,
            format!(
                "{} is longer than the {} accepted",
                human(value),
                human(max)
            ),
        ));
    }
    Ok(())
}

fn count(field: &str, len: usize, max: usize) -> Result<(), ExperimentError> {
    if len > max {
        return Err(invalid(
            field,
            format!("{len} entries, more than the {max} accepted"),
        ));
    }
    Ok(())
}

fn name(field: &str, value: &str) -> Result<(), ExperimentError> {
    if value.len() > MAX_NAME_BYTES {
        return Err(invalid(
            field,
            format!(
                "{} bytes, more than the {MAX_NAME_BYTES} accepted",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn labels<'a>(
    field: &str,
    pairs: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), ExperimentError> {
    count(field, pairs.len(), MAX_LABELS)?;
    for (key, value) in pairs {
        if key.len() > MAX_LABEL_BYTES || value.len() > MAX_LABEL_BYTES {
            return Err(invalid(
                format!("{field}.{key}"),
                format!("keys and values are at most {MAX_LABEL_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

/// Every bound of this module; the first one broken is the error.
pub fn check(e: &Experiment) -> Result<(), ExperimentError> {
    name("name", &e.name)?;
    at_most("lease_ttl", e.lease_ttl, MAX_LEASE_TTL)?;
    if e.agents.parallelism > MAX_PARALLELISM {
        return Err(invalid(
            "agents.parallelism",
            format!("must be at most {MAX_PARALLELISM}"),
        ));
    }
    labels("labels", e.labels.iter())?;
    at_most("baseline", e.baseline, MAX_DURATION)?;
    count(
        "steady_state.probes",
        e.steady_state.probes.len(),
        MAX_PROBES,
    )?;
    for (i, p) in e.steady_state.probes.iter().enumerate() {
        let field = format!("steady_state.probes[{i}]");
        name(&format!("{field}.name"), &p.name)?;
        at_most(&format!("{field}.interval"), p.interval, MAX_PROBE_INTERVAL)?;
        at_most(&format!("{field}.timeout"), p.timeout, MAX_PROBE_INTERVAL)?;
        let t = &p.tolerance;
        for (key, value) in [
            ("latency_max", t.latency_max),
            ("latency_p50", t.latency_p50),
            ("latency_p95", t.latency_p95),
            ("latency_p99", t.latency_p99),
        ] {
            if let Some(value) = value {
                at_most(&format!("{field}.tolerance.{key}"), value, MAX_DURATION)?;
            }
        }
        if let Some(latency) = p.abort.as_ref().and_then(|a| a.latency_above) {
            at_most(
                &format!("{field}.abort.latency_above"),
                latency,
                MAX_DURATION,
            )?;
        }
    }
    at_most("method.pause", e.method.pause, MAX_DURATION)?;
    count("method.faults", e.method.faults.len(), MAX_FAULTS)?;
    for (i, step) in e.method.faults.iter().enumerate() {
        check_step(step, &format!("method.faults[{i}]"))?;
    }
    at_most("recovery.timeout", e.recovery.timeout, MAX_DURATION)?;
    at_most("recovery.hold", e.recovery.hold, MAX_DURATION)?;
    let total = run_length(e).ok_or_else(|| invalid("method", "the run's length overflows"))?;
    if total > MAX_RUN_LENGTH {
        return Err(invalid(
            "method",
            format!(
                "baseline + faults + pauses + recovery.timeout come to {}, more than the {} a \
                 run may take",
                human(total),
                human(MAX_RUN_LENGTH)
            ),
        ));
    }
    Ok(())
}

fn check_step(step: &FaultStep, field: &str) -> Result<(), ExperimentError> {
    name(&format!("{field}.name"), &step.name)?;
    at_most(&format!("{field}.duration"), step.duration, MAX_DURATION)?;
    for (at, t) in step.selectors() {
        count(
            &format!("{field}.{at}.targets"),
            t.targets.len(),
            MAX_EXPLICIT_TARGETS,
        )?;
        labels(&format!("{field}.{at}.labels"), t.labels.iter())?;
    }
    let key = step.fault.key();
    match &step.fault {
        FaultSpec::Kill(kill) => {
            if let Some(interval) = kill.interval {
                at_most(&format!("{field}.{key}.interval"), interval, MAX_DURATION)?;
            }
        }
        FaultSpec::Memory(memory) => {
            if let Some(ramp) = memory.ramp {
                at_most(&format!("{field}.{key}.ramp"), ramp, MAX_DURATION)?;
            }
        }
        FaultSpec::DeletePod(delete) => {
            at_most(
                &format!("{field}.{key}.grace_period"),
                delete.grace_period,
                MAX_DURATION,
            )?;
        }
        FaultSpec::Network(n) => {
            for (part, value) in [("delay", n.delay), ("jitter", n.jitter)] {
                if let Some(value) = value {
                    at_most(&format!("{field}.{key}.{part}"), value, MAX_DURATION)?;
                }
            }
            for (part, len) in [
                ("to", n.to.len()),
                ("ports", n.ports.len()),
                ("exclude_to", n.exclude_to.len()),
                ("exclude_ports", n.exclude_ports.len()),
            ] {
                count(&format!("{field}.{key}.{part}"), len, MAX_LIST_ITEMS)?;
            }
        }
        FaultSpec::Blackhole(b) => {
            count(&format!("{field}.{key}.to"), b.to.len(), MAX_LIST_ITEMS)?;
            count(
                &format!("{field}.{key}.ports"),
                b.ports.len(),
                MAX_LIST_ITEMS,
            )?;
        }
        // No durations or lists to bound: their sizes and counts have their own checks (a
        // DNS fault's rules and delays: `DnsSpec::check`).
        FaultSpec::Cpu(_)
        | FaultSpec::Dns(_)
        | FaultSpec::Pause(_)
        | FaultSpec::Io(_)
        | FaultSpec::DiskFill(_)
        | FaultSpec::IoStress(_)
        | FaultSpec::Partition(_) => {}
    }
    Ok(())
}

/// The longest a run can take: baseline, the method (sequential: every fault and the
/// pauses between them; parallel: the longest fault), and the recovery timeout. None when
/// the sum does not fit a Duration (only possible with bounds above this module's).
pub fn run_length(e: &Experiment) -> Option<Duration> {
    let steps = &e.method.faults;
    let method = match e.method.mode {
        MethodMode::Sequential => {
            let faults = steps
                .iter()
                .try_fold(Duration::ZERO, |sum, s| sum.checked_add(s.duration))?;
            let pauses = e
                .method
                .pause
                .checked_mul(u32::try_from(steps.len().saturating_sub(1)).ok()?)?;
            faults.checked_add(pauses)?
        }
        MethodMode::Parallel => steps.iter().map(|s| s.duration).max().unwrap_or_default(),
    };
    e.baseline
        .checked_add(method)?
        .checked_add(e.recovery.timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::experiment::parse;

    const BASE: &str = "\
name: bounded
baseline: 5s
steady_state:
  probes:
    - name: web
      interval: 1s
      tcp: { address: \"127.0.0.1:1\" }
method:
  faults:
    - name: kill-web
      target: { targets: [\"pod:dev/web-0/web\"] }
      duration: 10s
      kill: { interval: 1s }
";

    fn refused(text: &str) -> String {
        parse(text).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn the_base_is_within_every_bound() {
        let e = parse(BASE).unwrap();
        assert_eq!(
            run_length(&e),
            Some(Duration::from_secs(5 + 10 + 60)),
            "baseline + fault + default recovery timeout"
        );
    }

    #[test]
    fn every_duration_has_a_maximum_naming_its_field() {
        let cases = [
            ("baseline: 5s", "baseline: 9223372036854775808s", "baseline"),
            ("baseline: 5s", "baseline: 2h", "baseline"),
            ("baseline: 5s", "lease_ttl: 11m", "lease_ttl"),
            (
                "duration: 10s",
                "duration: 61m",
                "method.faults[0].duration",
            ),
            (
                "kill: { interval: 1s }",
                "kill: { interval: 2h }",
                "method.faults[0].kill.interval",
            ),
            (
                "interval: 1s",
                "interval: 11m",
                "steady_state.probes[0].interval",
            ),
            (
                "tcp: { address: \"127.0.0.1:1\" }",
                "tcp: { address: \"127.0.0.1:1\" }\n      timeout: 1h",
                "steady_state.probes[0].timeout",
            ),
            (
                "tcp: { address: \"127.0.0.1:1\" }",
                "tcp: { address: \"127.0.0.1:1\" }\n      tolerance: { latency_p95: 2h }",
                "steady_state.probes[0].tolerance.latency_p95",
            ),
            (
                "tcp: { address: \"127.0.0.1:1\" }",
                "tcp: { address: \"127.0.0.1:1\" }\n      abort: { latency_above: 2h }",
                "steady_state.probes[0].abort.latency_above",
            ),
            (
                "baseline: 5s",
                "baseline: 5s\nrecovery: { timeout: 2h, hold: 1s }",
                "recovery.timeout",
            ),
        ];
        for (from, to, field) in cases {
            let text = BASE.replace(from, to);
            assert_ne!(text, BASE, "{from}");
            let error = refused(&text);
            assert!(error.starts_with(field), "{to}: {error}");
        }
    }

    #[test]
    fn a_duration_too_large_to_parse_names_its_line() {
        let error = refused(&BASE.replace("baseline: 5s", "baseline: 18446744073709551615h"));
        assert!(
            error.contains("too large") && error.contains("line 2"),
            "{error}"
        );
    }

    #[test]
    fn network_and_other_step_durations_are_bounded() {
        let cases = [
            ("network: { delay: 2h }", "method.faults[0].network.delay"),
            (
                "memory: { size: 1MiB, ramp: 2h }",
                "method.faults[0].memory.ramp",
            ),
            (
                "delete_pod: { grace_period: 2h }",
                "method.faults[0].delete_pod.grace_period",
            ),
        ];
        for (fault, field) in cases {
            let error = refused(&BASE.replace("kill: { interval: 1s }", fault));
            assert!(error.starts_with(field), "{fault}: {error}");
        }
    }

    #[test]
    fn the_total_length_of_a_run_is_bounded() {
        // Seven sequential 59-minute faults with no pause: each within bounds, 6 h 53 m in all.
        let mut text = BASE.replace(
            "duration: 10s\n      kill: { interval: 1s }",
            "duration: 59m\n      kill: { interval: 1s }",
        );
        let step = "    - name: more\n      target: { targets: [\"pod:dev/web-0/web\"] }\n      duration: 59m\n      cpu: { load: 10 }\n";
        for _ in 0..6 {
            text.push_str(step);
        }
        let error = refused(&text);
        assert!(error.starts_with("method:"), "{error}");
        assert!(error.contains("6h"), "{error}");
        // In parallel they last as long as the longest one.
        let parallel = text.replace("method:\n", "method:\n  mode: parallel\n");
        parse(&parallel).unwrap();
    }

    #[test]
    fn counts_and_names_are_bounded() {
        let many_targets = vec!["\"pid:1\""; MAX_EXPLICIT_TARGETS + 1].join(", ");
        let error = refused(&BASE.replace("\"pod:dev/web-0/web\"", &many_targets));
        assert!(
            error.starts_with("method.faults[0].target.targets"),
            "{error}"
        );

        let mut text = BASE.to_string();
        let step = "    - name: k\n      target: { targets: [\"pid:1\"] }\n      kill: {}\n";
        text.push_str(&step.repeat(MAX_FAULTS));
        assert!(refused(&text).starts_with("method.faults:"));

        let probe = "    - name: p{i}\n      tcp: { address: \"127.0.0.1:1\" }\n";
        let probes: String = (0..MAX_PROBES)
            .map(|i| probe.replace("{i}", &i.to_string()))
            .collect();
        let text = BASE.replace("  probes:\n", &format!("  probes:\n{probes}"));
        assert!(refused(&text).starts_with("steady_state.probes:"));

        let labels: Vec<String> = (0..=MAX_LABELS).map(|i| format!("l{i}: v")).collect();
        let text = format!("{BASE}labels: {{ {} }}\n", labels.join(", "));
        assert!(refused(&text).starts_with("labels:"));

        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let error = refused(&BASE.replace("name: bounded", &format!("name: {long}")));
        assert!(error.starts_with("name:"), "{error}");
        let error = refused(&BASE.replace("name: kill-web", &format!("name: {long}")));
        assert!(error.starts_with("method.faults[0].name"), "{error}");

        let ports = vec!["1"; MAX_LIST_ITEMS + 1].join(",");
        let error = refused(&BASE.replace(
            "kill: { interval: 1s }",
            &format!("network: {{ delay: 1ms, ports: [{ports}] }}"),
        ));
        assert!(
            error.starts_with("method.faults[0].network.ports"),
            "{error}"
        );
    }
}
