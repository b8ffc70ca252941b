//! `memory`: resident memory held in the target's cgroup, a size or a percent of its limit.

use std::time::Duration;

use chaos_proto::api;
use clap::Args;
use serde::Deserialize;

use super::{FieldNames, SpecError};
use crate::engine::experiment::values::{optional_duration, optional_size};
use crate::units::duration::parse_duration;
use crate::units::size::parse_size;

#[derive(Debug, Clone, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// How much: 256MiB, 1GiB, 500M, plain bytes.
    #[arg(long, value_parser = parse_size, required_unless_present = "percent", conflicts_with = "percent")]
    #[serde(default, deserialize_with = "optional_size")]
    pub size: Option<u64>,
    /// Percent of the container's memory limit (its own or its pod's).
    #[arg(long)]
    #[serde(default)]
    pub percent: Option<u32>,
    /// With --percent: of node memory when the container has no memory limit (the agent
    /// refuses a percent of an unlimited container otherwise).
    #[arg(long, requires = "percent")]
    #[serde(default)]
    pub allow_node_memory: bool,
    /// Reach the size linearly over this time.
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "optional_duration")]
    pub ramp: Option<Duration>,
}

impl MemorySpec {
    /// The amount not given is 0, the API's "not this one".
    pub fn to_api(&self) -> api::MemoryFault {
        api::MemoryFault {
            size_bytes: self.size.unwrap_or(0),
            percent: self.percent.unwrap_or(0),
            ramp_ms: self.ramp.map_or(0, |d| d.as_millis() as u64),
            allow_node_memory: self.allow_node_memory,
        }
    }

    pub fn check(&self, names: FieldNames) -> Result<(), SpecError> {
        if self.size.is_some() == self.percent.is_some() {
            return Err(SpecError::whole(format!(
                "needs exactly one of {} and {}",
                names("size"),
                names("percent")
            )));
        }
        if self.allow_node_memory && self.percent.is_none() {
            return Err(SpecError::of(
                "allow_node_memory",
                format!("applies to {} only", names("percent")),
            ));
        }
        Ok(())
    }
}
