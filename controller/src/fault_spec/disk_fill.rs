//! `disk_fill`: a filesystem the target writes to filled with one file for the duration,
//! removed at every end. Exactly one of size and percent.

use std::path::Path;

use chaos_proto::api;
use clap::Args;
use serde::Deserialize;

use super::{FieldNames, SpecError};
use crate::engine::experiment::values::optional_size;
use crate::units::size::parse_size;

#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(group(clap::ArgGroup::new("amount").args(["size", "percent"]).required(true)))]
pub struct DiskFillSpec {
    /// The file's size: 1GiB, 500MiB, plain bytes.
    #[arg(long, value_name = "SIZE", value_parser = fill_size)]
    #[serde(default, deserialize_with = "optional_size")]
    pub size: Option<u64>,
    /// Fill until the filesystem is this much used, as df counts it: 1 to 99.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=99))]
    #[serde(default)]
    pub percent: Option<u32>,
    /// A directory inside the container, whose filesystem is filled (a volume's mount
    /// path for that volume). Default: /, the container's writable root.
    #[arg(long, value_name = "DIR", value_parser = fill_path)]
    #[serde(default)]
    pub path: Option<String>,
}

/// `--size`: above 0 (0 is "no size" in the API).
fn fill_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err("must be above 0".into()),
        bytes => Ok(bytes),
    }
}

/// `--path` (of a disk fill and an IO stress): as [`check_fill_path`] takes it.
pub(super) fn fill_path(text: &str) -> Result<String, String> {
    check_fill_path(text).map(|()| text.to_string())
}

/// The longest path accepted (Linux's PATH_MAX).
pub const MAX_FILL_PATH_BYTES: usize = 4096;

/// A disk fill's (or IO stress's) directory, as the agent takes it: absolute, without
/// `..` steps (the agent joins it under the container's root), without control
/// characters. The error is the reason, with the path quoted and escaped.
pub fn check_fill_path(path: &str) -> Result<(), String> {
    if path.len() > MAX_FILL_PATH_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_FILL_PATH_BYTES} accepted",
            path.len()
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("{path:?} contains a control character"));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!(
            "{path:?} is not absolute (a directory inside the container, such as /data)"
        ));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{path:?} has a `..` step"));
    }
    Ok(())
}

impl DiskFillSpec {
    /// The amount not given is 0 (the API's "not this one"); no path is "", which the
    /// agent reads as "/", the container's writable root.
    pub fn to_api(&self) -> api::DiskFillFault {
        api::DiskFillFault {
            size_bytes: self.size.unwrap_or(0),
            percent: self.percent.unwrap_or(0),
            path: self.path.clone().unwrap_or_default(),
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
        if self.size == Some(0) {
            return Err(SpecError::of("size", "must be above 0"));
        }
        if let Some(percent) = self.percent
            && !(1..=99).contains(&percent)
        {
            return Err(SpecError::of(
                "percent",
                "must be 1 to 99 (how much of the filesystem is used after the fill, as df \
                 counts it)",
            ));
        }
        if let Some(path) = &self.path {
            check_fill_path(path).map_err(|reason| SpecError::of("path", reason))?;
        }
        Ok(())
    }
}
