//! What each subcommand does: talk to an agent (inject, list, revert, capabilities,
//! targets), write certificates, run or submit an experiment, serve.

use std::time::Duration;

use crate::agents::certs;
use crate::agents::client::{AgentAddress, connect};
use crate::cli::{output, remote_runs};
use crate::fault_spec::FaultSpec;
use anyhow::{Context, Result};
use chaos_proto::api;

use super::args::*;

/// serve is long-running: its events (runs, audit lines) go to stderr, as a pod's log.
fn init_serve_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Turns a gRPC status into a message that names the code, for people and scripts.
fn agent_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("agent answered {:?}: {}", status.code(), status.message())
}

/// Carries out the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let address = AgentAddress {
        address: cli.agent.clone(),
        tls_dir: cli.tls_dir.clone(),
        plaintext: cli.insecure_plaintext,
    };
    let now_ms = || chrono_now_ms();
    match cli.command {
        Command::Serve {
            config,
            api_listen,
            api_tls_dir,
            tls_reload_secs,
            max_concurrent_runs,
            keep_finished_runs,
            max_api_connections,
            allow_exec_probes,
            include_protected,
            authz_policy,
            log_format,
        } => {
            init_serve_logging(&log_format);
            crate::serve::serve(crate::serve::ServeOptions {
                config,
                api_listen,
                api_tls_dir: api_tls_dir.or(cli.tls_dir.clone()),
                api_insecure_plaintext: cli.insecure_plaintext,
                api_tls_reload: std::time::Duration::from_secs(tls_reload_secs),
                max_concurrent_runs,
                keep_finished_runs,
                max_api_connections: usize::try_from(max_api_connections).unwrap_or(usize::MAX),
                allow_exec_probes,
                include_protected,
                authz_policy,
            })
            .await?
        }
        Command::Submit {
            experiment,
            controller,
            wait,
        } => {
            let target = controller_address(&address, controller);
            let json = cli.output == Output::Json;
            let code = remote_runs::submit(&target, &experiment, wait, json).await?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::Runs { controller } => {
            let target = controller_address(&address, controller);
            remote_runs::list(&target, cli.output == Output::Json, now_ms()).await?;
        }
        Command::Cancel { id, controller } => {
            let target = controller_address(&address, controller);
            remote_runs::cancel(&target, &id, cli.output == Output::Json).await?;
        }
        Command::Run {
            experiment,
            report,
            dry_run,
            agents,
            kubeconfig,
            include_protected,
        } => {
            let code = crate::cli::run_command::run(crate::cli::run_command::RunArgs {
                experiment,
                report,
                dry_run,
                json: cli.output == Output::Json,
                default_agent: cli.agent.clone(),
                default_tls_dir: cli.tls_dir.clone(),
                default_plaintext: cli.insecure_plaintext,
                agents_override: agents,
                kubeconfig,
                include_protected,
            })
            .await?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::Certs {
            out,
            agent_names,
            clients,
            force,
        } => {
            let mut names = certs::default_agent_names();
            names.extend(agent_names);
            let written = certs::generate_with_clients(&out, &names, &clients, force)?;
            for path in written {
                println!("wrote {}", path.display());
            }
        }
        Command::Inject(inject) => {
            let (common, fault, duration) = inject.into_parts();
            check_flags(&fault)?;
            let show_targets = matches!(fault, FaultSpec::Kill(_));
            let agent_fault = fault
                .agent_fault()
                .context("this fault is not an agent's")?;
            let request = inject_request(common, duration, agent_fault);
            inject_and_print(&address, cli.output, request, show_targets).await?;
        }
        Command::List { all } => {
            let mut client = connect(&address).await?;
            let faults = client
                .list(api::ListRequest { include_ended: all })
                .await
                .map_err(agent_error)?
                .into_inner()
                .faults;
            match cli.output {
                Output::Json => print_json(&serde_json::Value::Array(
                    faults.iter().map(output::fault_json).collect(),
                ))?,
                Output::Table => print!("{}", output::faults_table(&faults, now_ms())),
            }
        }
        Command::Get { id } => {
            let mut client = connect(&address).await?;
            let fault = client
                .get(api::GetRequest { id })
                .await
                .map_err(agent_error)?
                .into_inner();
            match cli.output {
                Output::Json => print_json(&output::fault_json(&fault))?,
                Output::Table => print!(
                    "{}",
                    output::faults_table(std::slice::from_ref(&fault), now_ms())
                ),
            }
        }
        Command::Revert { id, all } => {
            let mut client = connect(&address).await?;
            let reverted = client
                .revert(api::RevertRequest {
                    id: id.unwrap_or_default(),
                    all,
                })
                .await
                .map_err(agent_error)?
                .into_inner()
                .reverted;
            match cli.output {
                Output::Json => print_json(&serde_json::Value::Array(
                    reverted.iter().map(output::fault_json).collect(),
                ))?,
                Output::Table if reverted.is_empty() => println!("nothing to revert"),
                Output::Table => print!("{}", output::faults_table(&reverted, now_ms())),
            }
        }
        Command::Capabilities => {
            let mut client = connect(&address).await?;
            let caps = client
                .capabilities(api::CapabilitiesRequest {})
                .await
                .map_err(agent_error)?
                .into_inner();
            match cli.output {
                Output::Json => print_json(&output::capabilities_json(&caps))?,
                Output::Table => print!("{}", output::capabilities_text(&caps)),
            }
        }
        Command::Targets { namespace } => {
            let mut client = connect(&address).await?;
            let response = client
                .list_targets(api::ListTargetsRequest {
                    pod_namespace: namespace.unwrap_or_default(),
                })
                .await
                .map_err(agent_error)?
                .into_inner();
            match cli.output {
                Output::Json => print_json(&serde_json::json!({
                    "node_name": response.node_name,
                    "targets": response.targets.iter().map(output::target_json).collect::<Vec<_>>(),
                }))?,
                Output::Table => print!("{}", output::targets_table(&response.targets)),
            }
        }
    }
    Ok(())
}

/// The request every `chaosctl inject` subcommand sends: its fault on its target.
fn inject_request(
    common: Common,
    duration: Duration,
    fault: api::inject_request::Fault,
) -> api::InjectRequest {
    api::InjectRequest {
        target: common.target,
        duration_ms: duration.as_millis() as u64,
        fault: Some(fault),
        dry_run: common.dry_run,
        ..Default::default()
    }
}

/// Sends one Inject and prints the fault it created.
/// With `show_targets` (a kill), also each target's init pid and processes.
async fn inject_and_print(
    address: &AgentAddress,
    format: Output,
    request: api::InjectRequest,
    show_targets: bool,
) -> Result<()> {
    let mut client = connect(address).await?;
    let fault = client
        .inject(request)
        .await
        .map_err(agent_error)?
        .into_inner()
        .fault
        .context("the agent answered without a fault")?;
    match format {
        Output::Json => print_json(&output::fault_json(&fault))?,
        Output::Table => {
            print!(
                "{}",
                output::faults_table(std::slice::from_ref(&fault), chrono_now_ms())
            );
            for t in fault.targets.iter().filter(|_| show_targets) {
                println!(
                    "  target {} init pid {} ({} processes)",
                    t.target,
                    t.init_pid,
                    t.pids.len()
                );
            }
            if !fault.message.is_empty() {
                println!("  {}", fault.message);
            }
        }
    }
    Ok(())
}

/// The controller's API, authenticated like the agents (--tls-dir, --insecure-plaintext).
fn controller_address(agent: &AgentAddress, controller: ControllerArg) -> AgentAddress {
    AgentAddress {
        address: controller.controller,
        ..agent.clone()
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
