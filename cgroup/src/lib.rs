//! Cgroup handling for Chaos Control.
//!
//! The agent never creates cgroups under a target: it finds the target's own cgroup
//! (from `/proc/PID/cgroup` or a `cgroup:PATH` target), reads its limits and usage, and
//! moves stressor processes into it so they are bounded exactly like the workload.
//! Every operation works against a [`CgroupFs`] root, so unit tests use fake trees.

mod dir;
mod error;
mod freezer;
mod fs;
mod io;
mod io_stat;
mod layout;
mod limits;
mod membership;
mod usage;

pub use error::CgroupError;
pub use freezer::{Freezer, FreezerState};
pub use fs::CgroupFs;
pub use io::{DeviceNumber, IoLimits, IoThrottle};
pub use io_stat::{IoCounters, parse_io_service_bytes, parse_io_stat};
pub use layout::{CgroupLayout, CgroupVersion, KNOWN_V1_CONTROLLERS};
pub use limits::{CpuLimit, MemoryLimit, parse_cpu_list};
pub use membership::ProcessCgroup;

#[cfg(test)]
mod fake_tree_tests;
#[cfg(test)]
mod parse_tests;

#[cfg(feature = "test-support")]
pub mod test_support;
