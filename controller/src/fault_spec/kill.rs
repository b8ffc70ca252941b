//! `kill`: signals to the target's processes, once or every interval.

use std::time::Duration;

use chaos_proto::api;
use clap::Args;
use serde::Deserialize;

use crate::engine::experiment::values::optional_duration;
use crate::units::duration::parse_duration;

#[derive(Debug, Clone, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSpec {
    /// The signal: KILL, TERM, 9, ...; a stop signal (STOP, TSTP, TTIN, TTOU) holds the
    /// processes stopped until the fault ends (needs --duration, no --interval).
    #[arg(long, default_value = "KILL")]
    #[serde(default = "default_signal")]
    pub signal: String,
    /// Only processes with this name (comm, or the file name of argv[0]).
    #[arg(long)]
    #[serde(default)]
    pub process: Option<String>,
    /// Repeat every INTERVAL (e.g. 10s) until --duration ends.
    #[arg(long, value_parser = parse_duration, requires = "duration")]
    #[serde(default, deserialize_with = "optional_duration")]
    pub interval: Option<Duration>,
}

fn default_signal() -> String {
    "KILL".into()
}

impl KillSpec {
    /// No process is "" (the container's init, the pid itself, every process of a
    /// cgroup); no interval is 0, once.
    pub fn to_api(&self) -> api::ProcessFault {
        api::ProcessFault {
            signal: self.signal.clone(),
            process: self.process.clone().unwrap_or_default(),
            interval_ms: self.interval.map_or(0, |d| d.as_millis() as u64),
        }
    }
}
