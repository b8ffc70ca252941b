//! The command line: its subcommands and flags (`args`), what each does (`commands`),
//! how answers are printed, `chaosctl run`, and the commands of `chaosctl serve`'s API.

pub mod args;
pub mod commands;
pub mod output;
pub mod remote_runs;
pub mod run_command;
