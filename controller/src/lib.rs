//! chaosctl: the command line and controller of Chaos Control.
//!
//! - [`agents`]: reaching the agents (mTLS client, the fleet, certificates) and the
//!   Kubernetes API.
//! - [`fault_spec`]: one definition of each fault, read by the command line and the
//!   experiment file alike; [`units`]: durations, sizes and rates as people write them.
//! - [`engine`]: the experiment engine: the file, target selection, the runner, probes,
//!   load, outage attribution, the verdict and the report.
//! - [`cli`]: what the command line prints and its `run`, `submit` and `runs` commands.
//! - [`serve`]: `chaosctl serve`, the controller running experiments behind a gRPC API.

pub mod agents;
pub mod cli;
pub mod engine;
pub mod fault_spec;
pub mod serve;
pub mod units;
