//! `io`: the block IO of the target's containers throttled (their cgroup's io.max or
//! blkio throttle). At least one limit above 0; a limit left out (or 0, as in the API)
//! stays as it is.

use chaos_proto::api;
use clap::Args;
use serde::Deserialize;

use super::{FieldNames, SpecError};
use crate::engine::experiment::values::optional_size;
use crate::units::size::parse_size;

#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoSpec {
    /// Read bytes per second: 1MiB, 512KiB, plain bytes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "optional_size")]
    pub read_bps: Option<u64>,
    /// Write bytes per second: 1MiB, 512KiB, plain bytes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "optional_size")]
    pub write_bps: Option<u64>,
    /// Read operations per second.
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub read_iops: Option<u64>,
    /// Write operations per second.
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub write_iops: Option<u64>,
    /// One disk: MAJ:MIN, a name (nvme0n1) or a path (/dev/loop3); a partition means its
    /// disk. Default: every whole disk.
    #[arg(long)]
    #[serde(default)]
    pub device: Option<String>,
}

impl IoSpec {
    /// Whether the spec limits anything: 0 means no limit, so a spec of zeros would
    /// inject a fault that throttles nothing.
    pub fn has_limit(&self) -> bool {
        [
            self.read_bps,
            self.write_bps,
            self.read_iops,
            self.write_iops,
        ]
        .iter()
        .any(|limit| limit.is_some_and(|value| value > 0))
    }

    /// A limit left out is 0, which the agent reads as no limit; no device is "", every
    /// whole disk.
    pub fn to_api(&self) -> api::IoFault {
        api::IoFault {
            read_bytes_per_second: self.read_bps.unwrap_or(0),
            write_bytes_per_second: self.write_bps.unwrap_or(0),
            read_iops: self.read_iops.unwrap_or(0),
            write_iops: self.write_iops.unwrap_or(0),
            device: self.device.clone().unwrap_or_default(),
        }
    }

    pub fn check(&self, names: FieldNames) -> Result<(), SpecError> {
        if !self.has_limit() {
            return Err(SpecError::whole(format!(
                "needs at least one of {}, {}, {}, {} above 0 (0 is no limit)",
                names("read_bps"),
                names("write_bps"),
                names("read_iops"),
                names("write_iops")
            )));
        }
        Ok(())
    }
}
