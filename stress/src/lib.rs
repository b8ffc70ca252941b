//! Stressors of Chaos Control. They run in a child process of the agent that the agent has
//! moved into the TARGET container's own cgroup, so the container's limits bound them exactly
//! like the workload. Each stressor stops by itself at its deadline, and [`prepare_child`]
//! makes it die with the agent.

pub mod control;
pub mod cpu;
mod error;
pub mod io;
pub mod memory;
mod process;

pub use error::StressError;
pub use process::{PARENT_GONE_EXIT_CODE, prepare_child, process_cpu_time_ns};
