//! The process kind's plan and its validation: a signal sent once, repeated at an
//! interval, or (a stop signal) held until the fault ends.

use std::str::FromStr;
use std::time::Duration;

use chaos_proto::api;
use nix::sys::signal::Signal;

use crate::error::AgentError;

/// Shortest repeat interval; anything tighter is a busy loop, not a fault.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessPlan {
    pub signal: Signal,
    pub process_filter: Option<String>,
    pub interval: Option<Duration>,
}

pub fn parse_signal(text: &str) -> Result<Signal, AgentError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Signal::SIGKILL);
    }
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| {
            AgentError::invalid("process.signal", format!("{number} is not a signal number"))
        });
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| {
        AgentError::invalid("process.signal", format!("`{text}` is not a signal name"))
    })
}

pub(super) fn validate_process(
    p: &api::ProcessFault,
    duration: Duration,
) -> Result<ProcessPlan, AgentError> {
    let signal = parse_signal(&p.signal)?;
    let filter = p.process.trim();
    if filter.len() > 256 || filter.contains('\0') {
        return Err(AgentError::invalid(
            "process.process",
            "must be at most 256 characters without NUL",
        ));
    }
    if is_stop_signal(signal) {
        // A stopped process stays stopped: the fault holds the stop and continues the
        // processes at its end, so it needs an end and has nothing to repeat.
        if duration.is_zero() {
            return Err(AgentError::invalid(
                "duration_ms",
                format!(
                    "is required with {}: the processes stay stopped until the fault ends, when the agent continues them (SIGCONT)",
                    signal_name(signal)
                ),
            ));
        }
        if p.interval_ms > 0 {
            return Err(AgentError::invalid(
                "process.interval_ms",
                "must be 0 with a stop signal: the stop holds until the fault ends, and repeating it stops nothing more",
            ));
        }
    }
    let interval = match p.interval_ms {
        0 => None,
        ms => {
            let interval = Duration::from_millis(ms);
            if interval < MIN_INTERVAL {
                return Err(AgentError::invalid(
                    "process.interval_ms",
                    format!("must be at least {} ms", MIN_INTERVAL.as_millis()),
                ));
            }
            if duration.is_zero() {
                return Err(AgentError::invalid(
                    "duration_ms",
                    "is required when process.interval_ms repeats the signal",
                ));
            }
            if interval > duration {
                return Err(AgentError::invalid(
                    "process.interval_ms",
                    "is longer than duration_ms, so it would never repeat",
                ));
            }
            Some(interval)
        }
    };
    Ok(ProcessPlan {
        signal,
        process_filter: (!filter.is_empty()).then(|| filter.to_string()),
        interval,
    })
}

/// A signal as people write it: `KILL` for SIGKILL.
pub fn signal_name(signal: Signal) -> String {
    signal.as_str().trim_start_matches("SIG").to_string()
}

/// Signals whose default action stops a process. A stop is a state, not an event: the
/// fault holds it and every end of the fault continues the processes.
pub fn is_stop_signal(signal: Signal) -> bool {
    matches!(
        signal,
        Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_support::{kill, req};
    use crate::validate::{FaultPlan, Limits, validate_inject};
    use api::inject_request::Fault;

    #[test]
    fn a_plain_kill_defaults_to_sigkill_once() {
        let v = validate_inject(&req("pid:10", 0, kill()), &Limits::default()).unwrap();
        assert_eq!(
            v.plan,
            FaultPlan::Process(ProcessPlan {
                signal: Signal::SIGKILL,
                process_filter: None,
                interval: None
            })
        );
        assert_eq!(v.duration, Duration::ZERO);
    }

    #[test]
    fn signals_parse_by_name_number_and_prefix() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigstop").unwrap(), Signal::SIGSTOP);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("").unwrap(), Signal::SIGKILL);
        assert!(matches!(
            parse_signal("NOPE"),
            Err(AgentError::InvalidArgument {
                field: "process.signal",
                ..
            })
        ));
        assert!(matches!(
            parse_signal("99"),
            Err(AgentError::InvalidArgument {
                field: "process.signal",
                ..
            })
        ));
    }

    #[test]
    fn a_stop_signal_needs_a_duration_and_no_interval() {
        let stop = |signal: &str, duration_ms, interval_ms| {
            validate_inject(
                &req(
                    "pod:dev/db-0/db",
                    duration_ms,
                    Fault::Process(api::ProcessFault {
                        signal: signal.into(),
                        interval_ms,
                        ..Default::default()
                    }),
                ),
                &Limits::default(),
            )
        };
        for signal in ["STOP", "TSTP", "TTIN", "TTOU", "19"] {
            match stop(signal, 0, 0) {
                Err(AgentError::InvalidArgument { field, reason }) => {
                    assert_eq!(field, "duration_ms", "{signal}");
                    assert!(reason.contains("SIGCONT"), "{reason}");
                }
                other => panic!("{signal}: {other:?}"),
            }
            assert!(matches!(
                stop(signal, 10_000, 1_000),
                Err(AgentError::InvalidArgument {
                    field: "process.interval_ms",
                    ..
                })
            ));
            assert!(stop(signal, 10_000, 0).is_ok(), "{signal}");
        }
        // Other signals stay one-shot without a duration.
        assert!(stop("TERM", 0, 0).is_ok());
        assert!(stop("CONT", 0, 0).is_ok());
    }
}
