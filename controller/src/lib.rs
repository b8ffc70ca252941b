//! chaosctl: the command line and controller of Chaos Control.

pub mod certs;
pub mod client;
pub mod controller_api;
pub mod controller_metrics;
pub mod duration;
pub mod experiment;
pub mod fleet;
pub mod kube_api;
pub mod limits;
pub mod output;
pub mod probe;
pub mod probe_http;
pub mod probe_policy;
pub mod probe_url;
pub mod rate;
pub mod remote_runs;
pub mod report;
pub mod request;
pub mod run_command;
pub mod run_registry;
pub mod runner;
pub mod selection;
pub mod serve;
pub mod stats;
pub mod verdict;
pub mod yaml_scan;
