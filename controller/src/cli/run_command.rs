//! `chaosctl run EXPERIMENT.yaml`: load, connect, plan (and stop there for --dry-run),
//! run with live progress on stderr, then print the table or JSON and write the HTML
//! report. Ctrl-C and SIGTERM stop the run and revert everything.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::agents::fleet::{Fleet, FleetConfig};
use crate::agents::kube_api::KubeApi;
use crate::engine::experiment::{self, Experiment};
use crate::engine::report;
use crate::engine::runner::{self, RunOptions, StepPlan};
use crate::engine::selection::{TargetPolicy, refuse_named_protected};

pub struct RunArgs {
    pub experiment: PathBuf,
    pub report: Option<PathBuf>,
    pub dry_run: bool,
    pub json: bool,
    /// The command line's agent, used when the experiment lists none.
    pub default_agent: String,
    pub default_tls_dir: Option<PathBuf>,
    pub default_plaintext: bool,
    /// `--agents`: these agents instead of the file's (static and DNS); the command line's
    /// `--tls-dir` / `--insecure-plaintext` then replace the file's TLS settings.
    pub agents_override: Vec<String>,
    /// `--kubeconfig`; without it KUBECONFIG, ~/.kube/config or the in-cluster account.
    /// Only read when the experiment needs the Kubernetes API.
    pub kubeconfig: Option<PathBuf>,
    /// `--include-protected`: kube-system and chaos-control may be targeted.
    pub include_protected: bool,
}

/// Returns the process exit status: 0 passed, 1 failed, 2 deviated, 3 aborted.
pub async fn run(args: RunArgs) -> Result<i32> {
    let experiment = experiment::load(&args.experiment)?;
    let policy = TargetPolicy {
        include_protected: args.include_protected,
    };
    // Before connecting anywhere: the file alone says it would touch a protected namespace.
    refuse_named_protected(&experiment, policy).map_err(anyhow::Error::msg)?;
    let fleet = connect(&experiment, &args).await?;
    if args.dry_run {
        let plans = runner::plan(&experiment, &fleet, policy)
            .await
            .map_err(anyhow::Error::msg)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "experiment": experiment.name,
                    "dry_run": true,
                    "agents": fleet.addresses,
                    "plan": plans,
                }))?
            );
        } else {
            print!(
                "{}",
                dry_run_text(&experiment.name, &fleet.addresses, &plans)
            );
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
        policy,
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

/// The agents (and the Kubernetes API when a step needs it), before anything is planned,
/// so that missing access fails the run before any fault.
async fn connect(experiment: &Experiment, args: &RunArgs) -> Result<Fleet> {
    let kube = match experiment.kube_api_need() {
        Some(need) => Some(
            KubeApi::connect(args.kubeconfig.as_deref())
                .await
                .with_context(|| format!("{need} needs the Kubernetes API"))?,
        ),
        None => None,
    };
    let mut agents = experiment.agents.clone();
    if !args.agents_override.is_empty() {
        agents.static_agents = args.agents_override.clone();
        agents.dns = None;
        if args.default_tls_dir.is_some() {
            agents.tls_dir = args.default_tls_dir.clone();
        }
        if args.default_plaintext {
            agents.insecure_plaintext = true;
        }
    }
    let mut config = FleetConfig::resolve(&agents).await?;
    if config.addresses.is_empty() {
        config.addresses.push(args.default_agent.clone());
    }
    if config.tls_dir.is_none() {
        config.tls_dir = args.default_tls_dir.clone();
    }
    config.plaintext |= args.default_plaintext;
    let fleet = Fleet::connect(&config).await?;
    Ok(match kube {
        Some(kube) => fleet.with_kube_api(kube),
        None => fleet,
    })
}

/// The dry run's report: the agents, then per step the fault and every chosen target
/// (agent, node, target, pod), a partition's blackhole on each, and the pods a
/// delete_pod step would delete.
pub fn dry_run_text(experiment: &str, agents: &[String], plans: &[StepPlan]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "experiment {experiment} (dry run: nothing injected)");
    let _ = writeln!(out, "agents: {}", agents.join(", "));
    for p in plans {
        let _ = writeln!(
            out,
            "step {} ({}, {:.1}s): {}",
            p.step,
            p.kind,
            p.duration_ms as f64 / 1000.0,
            p.fault
        );
        for t in &p.targets {
            let pod = if t.pod.is_empty() { "-" } else { &t.pod };
            let node = if t.node.is_empty() { "-" } else { &t.node };
            let _ = writeln!(
                out,
                "  agent {} node {node} target {} pod {pod}",
                t.agent, t.target
            );
            if !t.blackhole_to.is_empty() {
                let _ = writeln!(out, "    blackhole to {}", t.blackhole_to.join(", "));
            }
        }
        for pod in &p.delete_pods {
            let _ = writeln!(out, "  delete pod {pod} through the Kubernetes API");
        }
    }
    out
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
