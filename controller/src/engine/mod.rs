//! The experiment engine: the experiment file, choosing targets, carrying out the run
//! (probes, load, faults under a lease), and judging and reporting it.

pub mod achieved;
pub mod experiment;
pub mod load;
pub mod outage;
pub mod partition;
pub mod probe;
pub mod report;
pub mod request;
pub mod runner;
pub mod selection;
pub mod stats;
pub mod task;
pub mod verdict;

#[cfg(test)]
mod fake_agent;
#[cfg(test)]
mod lifecycle_tests;
