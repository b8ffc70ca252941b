//! `cpu`: stressors in the target's cgroup, loading its CPU to a percentage of its limit.

use chaos_proto::api;
use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::SpecError;

#[derive(Debug, Clone, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Percent of the container's CPU limit (of its cpuset when unlimited), 1 to 100.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub load: u32,
    /// Stressor threads (default: enough whole cores for the load; starve: the most
    /// threads, default 16 per CPU of the limit).
    #[arg(long)]
    #[serde(default)]
    pub cores: Option<u32>,
    /// fill: drive the container's TOTAL use to the load; add: add the load on top;
    /// starve: take the load from a busy workload, leaving it at most 100 - load.
    #[arg(long, value_enum, default_value = "fill")]
    #[serde(default)]
    pub mode: CpuModeSpec,
}

/// The CPU fault's mode: the same words in the file and after `--mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CpuModeSpec {
    #[default]
    Fill,
    Add,
    Starve,
}

impl CpuModeSpec {
    pub fn to_api(self) -> api::CpuMode {
        match self {
            CpuModeSpec::Fill => api::CpuMode::Fill,
            CpuModeSpec::Add => api::CpuMode::Add,
            CpuModeSpec::Starve => api::CpuMode::Starve,
        }
    }
}

impl CpuSpec {
    /// No cores is 0, as many as the load needs.
    pub fn to_api(&self) -> api::CpuFault {
        api::CpuFault {
            load_percent: self.load,
            cores: self.cores.unwrap_or(0),
            mode: self.mode.to_api() as i32,
        }
    }

    pub fn check(&self) -> Result<(), SpecError> {
        if !(1..=100).contains(&self.load) {
            return Err(SpecError::of("load", "must be 1 to 100"));
        }
        Ok(())
    }
}
