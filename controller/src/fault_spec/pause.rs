//! `pause`: every process of the target's containers frozen (their cgroup freezer).

use chaos_proto::api;
use clap::Args;
use serde::Deserialize;

/// No options: `pause: {}`, `chaosctl inject pause --target T --duration D`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseSpec {}

impl PauseSpec {
    pub fn to_api(&self) -> api::PauseFault {
        api::PauseFault {}
    }
}
