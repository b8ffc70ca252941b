//! `io_stress`: workers in the target's cgroup writing and reading back a file each in its
//! filesystem for the duration, charged to the container; the files are removed at every
//! end. Every field may be left out (1 worker, as fast as the device allows, 64 MiB
//! files, in /tmp or /).

use chaos_proto::api;
use clap::Args;
use serde::Deserialize;

use super::SpecError;
use super::disk_fill::{check_fill_path, fill_path};
use crate::engine::experiment::values::optional_size;
use crate::units::size::parse_size;

/// The bounds the agent enforces on an IO stress, checked before any agent is asked.
pub const MAX_IO_STRESS_WORKERS: u32 = 8;
pub const MIN_IO_STRESS_BPS: u64 = 64 << 10;
pub const MIN_IO_STRESS_FILE_SIZE: u64 = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoStressSpec {
    /// Worker processes per target: 1 to 8 (default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8))]
    #[serde(default)]
    pub workers: Option<u32>,
    /// Read plus write bytes per second, shared by a target's workers: 10MiB, at least
    /// 64KiB. Default: as fast as the device allows.
    #[arg(long, value_name = "SIZE", value_parser = stress_bps)]
    #[serde(default, deserialize_with = "optional_size")]
    pub bps: Option<u64>,
    /// Each worker's file: 64MiB (the default), at least 1MiB.
    #[arg(long, value_name = "SIZE", value_parser = stress_file_size)]
    #[serde(default, deserialize_with = "optional_size")]
    pub file_size: Option<u64>,
    /// A directory inside the container (a volume's mount path stresses that volume).
    /// Default: /tmp where the container has one, else /.
    #[arg(long, value_name = "DIR", value_parser = fill_path)]
    #[serde(default)]
    pub path: Option<String>,
}

/// `--bps`: at least 64KiB (the agent's bound).
fn stress_bps(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        bps if bps < MIN_IO_STRESS_BPS => Err("must be at least 64KiB".into()),
        bps => Ok(bps),
    }
}

/// `--file-size`: at least 1MiB (the agent's bound).
fn stress_file_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        size if size < MIN_IO_STRESS_FILE_SIZE => Err("must be at least 1MiB".into()),
        size => Ok(size),
    }
}

impl IoStressSpec {
    /// A field left out is 0 (or ""), which the agent reads as its default.
    pub fn to_api(&self) -> api::IoStressFault {
        api::IoStressFault {
            workers: self.workers.unwrap_or(0),
            bytes_per_second: self.bps.unwrap_or(0),
            file_bytes: self.file_size.unwrap_or(0),
            path: self.path.clone().unwrap_or_default(),
        }
    }

    pub fn check(&self) -> Result<(), SpecError> {
        if let Some(workers) = self.workers
            && !(1..=MAX_IO_STRESS_WORKERS).contains(&workers)
        {
            return Err(SpecError::of(
                "workers",
                format!("must be 1 to {MAX_IO_STRESS_WORKERS}"),
            ));
        }
        if let Some(bps) = self.bps
            && bps < MIN_IO_STRESS_BPS
        {
            return Err(SpecError::of(
                "bps",
                "must be at least 64KiB (leave it out for as fast as the device allows)",
            ));
        }
        if let Some(size) = self.file_size
            && size < MIN_IO_STRESS_FILE_SIZE
        {
            return Err(SpecError::of("file_size", "must be at least 1MiB"));
        }
        if let Some(path) = &self.path {
            check_fill_path(path).map_err(|reason| SpecError::of("path", reason))?;
        }
        Ok(())
    }
}
