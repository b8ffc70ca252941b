//! `chaosctl run EXPERIMENT.yaml`: load, connect, plan (and stop there for --dry-run),
//! run with live progress on stderr, then print the table or JSON and write the HTML
//! report. Ctrl-C and SIGTERM stop the run and revert everything.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::experiment::{self, Experiment};
use crate::fleet::{Fleet, FleetConfig};
use crate::report;
use crate::runner::{self, RunOptions};

pub struct RunArgs {
    pub experiment: PathBuf,
    pub report: Option<PathBuf>,
    pub dry_run: bool,
    pub json: bool,
    /// The command line's agent, used when the experiment lists none.
    pub default_agent: String,
    pub default_tls_dir: Option<PathBuf>,
    pub default_plaintext: bool,
}

/// Returns the process exit status: 0 passed, 1 failed, 2 deviated, 3 aborted.
pub async fn run(args: RunArgs) -> Result<i32> {
    let experiment = experiment::load(&args.experiment)?;
    let fleet = connect(&experiment, &args).await?;
    if args.dry_run {
        let plans = runner::plan(&experiment, &fleet)
            .await
            .map_err(anyhow::Error::msg)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "experiment": experiment.name,
                    "agents": fleet.addresses,
                    "plan": plans,
                }))?
            );
        } else {
            println!(
                "experiment {} (dry run: nothing injected)\nagents: {}",
                experiment.name,
                fleet.addresses.join(", ")
            );
            print!("{}", report::plan_table(&plans));
        }
        return Ok(0);
    }

    let (cancel_sender, cancel) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        eprintln!("stopping: reverting every fault of this run");
        let _ = cancel_sender.send(true);
    });
    let options = RunOptions {
        run_id: runner::new_run_id(&experiment.name),
        progress: Arc::new(|line: &str| eprintln!("{line}")),
        cancel,
    };
    let result = runner::run(&experiment, &fleet, options).await;
    if let Some(path) = &args.report {
        std::fs::write(path, report::html(&result))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", report::table(&result));
    }
    Ok(result.verdict.exit_code())
}

async fn connect(experiment: &Experiment, args: &RunArgs) -> Result<Fleet> {
    let mut config = FleetConfig::resolve(&experiment.agents).await?;
    if config.addresses.is_empty() {
        config.addresses.push(args.default_agent.clone());
    }
    if config.tls_dir.is_none() {
        config.tls_dir = args.default_tls_dir.clone();
    }
    config.plaintext |= args.default_plaintext;
    Ok(Fleet::connect(&config).await?)
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
