//! The chaosctl binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chaos_proto::api;
use chaosctl::client::{AgentAddress, connect};
use chaosctl::duration::parse_duration;
use chaosctl::{certs, output};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "chaosctl",
    version,
    about = "Chaos Control: inject faults through chaos-agents"
)]
struct Cli {
    /// The agent to talk to (HOST:PORT).
    #[arg(
        long,
        global = true,
        env = "CHAOS_AGENT",
        default_value = "127.0.0.1:7090"
    )]
    agent: String,
    /// Directory with ca.pem, client.pem and client-key.pem.
    #[arg(long, global = true, env = "CHAOS_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Talk to an agent started with --insecure-plaintext.
    #[arg(long, global = true)]
    insecure_plaintext: bool,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a development CA and agent + client certificates for mTLS.
    Certs {
        #[arg(long)]
        out: PathBuf,
        /// Extra names or IPs for the agent certificate (repeatable).
        #[arg(long = "agent-name")]
        agent_names: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Inject a fault.
    #[command(subcommand)]
    Inject(Inject),
    /// List the agent's faults.
    List {
        /// Also the recently ended faults.
        #[arg(long)]
        all: bool,
    },
    /// Show one fault.
    Get { id: String },
    /// Revert a fault, or all of them.
    Revert {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// What the agent's node offers.
    Capabilities,
    /// The containers on the agent's node.
    Targets {
        /// Only pods of this namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// pid:N, container:ID, pod:NS/NAME[/CONTAINER] or cgroup:PATH.
    #[arg(long)]
    target: String,
    /// Validate and resolve only; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum Inject {
    /// Send a signal to the target's processes (default: SIGKILL to the container's init).
    Kill {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "KILL")]
        signal: String,
        /// Only processes with this name (comm, or the file name of argv[0]).
        #[arg(long)]
        process: Option<String>,
        /// Repeat every INTERVAL (e.g. 10s) until --duration ends.
        #[arg(long, value_parser = parse_duration, requires = "duration")]
        interval: Option<Duration>,
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Turns a gRPC status into a message that names the code, for people and scripts.
fn agent_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("agent answered {:?}: {}", status.code(), status.message())
}

async fn run(cli: Cli) -> Result<()> {
    let address = AgentAddress {
        address: cli.agent.clone(),
        tls_dir: cli.tls_dir.clone(),
        plaintext: cli.insecure_plaintext,
    };
    let now_ms = || chrono_now_ms();
    match cli.command {
        Command::Certs {
            out,
            agent_names,
            force,
        } => {
            let mut names = certs::default_agent_names();
            names.extend(agent_names);
            let written = certs::generate(&out, &names, force)?;
            for path in written {
                println!("wrote {}", path.display());
            }
        }
        Command::Inject(Inject::Kill {
            common,
            signal,
            process,
            interval,
            duration,
        }) => {
            let request = api::InjectRequest {
                target: common.target,
                duration_ms: duration.map(|d| d.as_millis() as u64).unwrap_or(0),
                fault: Some(api::inject_request::Fault::Process(api::ProcessFault {
                    signal,
                    process: process.unwrap_or_default(),
                    interval_ms: interval.map(|d| d.as_millis() as u64).unwrap_or(0),
                })),
                dry_run: common.dry_run,
                ..Default::default()
            };
            let mut client = connect(&address).await?;
            let fault = client
                .inject(request)
                .await
                .map_err(agent_error)?
                .into_inner()
                .fault
                .context("the agent answered without a fault")?;
            match cli.output {
                Output::Json => print_json(&output::fault_json(&fault))?,
                Output::Table => {
                    print!(
                        "{}",
                        output::faults_table(std::slice::from_ref(&fault), now_ms())
                    );
                    for t in &fault.targets {
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

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[allow(dead_code)]
fn refuse(message: &str) -> Result<()> {
    bail!("{message}")
}
