//! The chaosctl binary: the command line is `chaosctl::cli`.

use anyhow::{Context, Result};
use chaosctl::cli::args::Cli;
use clap::Parser;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(chaosctl::cli::commands::run(cli))
}
