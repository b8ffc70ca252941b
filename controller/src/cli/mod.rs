//! The command line's own parts (the binary's argument parsing is in `main.rs`): how
//! answers are printed, `chaosctl run`, and the commands of `chaosctl serve`'s API.

pub mod output;
pub mod remote_runs;
pub mod run_command;
