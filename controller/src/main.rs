//! The chaosctl binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chaos_proto::api;
use chaosctl::client::{AgentAddress, connect};
use chaosctl::duration::parse_duration;
use chaosctl::experiment::{
    CpuModeSpec, DiskFillSpec, IoSpec, IoStressSpec, MIN_IO_STRESS_BPS, MIN_IO_STRESS_FILE_SIZE,
    NetworkSpec, TrafficDirection, TrafficProtocol, check_fill_path, parse_size,
};
use chaosctl::rate::parse_rate;
use chaosctl::{certs, output, remote_runs};
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

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Write a development CA and agent + client certificates for mTLS.
    Certs {
        #[arg(long)]
        out: PathBuf,
        /// Extra names or IPs for the agent certificate (repeatable).
        #[arg(long = "agent-name")]
        agent_names: Vec<String>,
        /// An extra client certificate NAME.pem (CN NAME, O ROLE: admin, operator or
        /// viewer), which the agents' default policy gives ROLE (repeatable).
        #[arg(long = "client", value_name = "NAME:ROLE")]
        clients: Vec<certs::ClientSpec>,
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
    /// Run an experiment file (docs/experiments.md). Exit status: 0 passed, 1 failed,
    /// 2 deviated, 3 aborted.
    Run {
        experiment: PathBuf,
        /// Also write an HTML report with a chart per probe.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Connect, select targets and print the plan; inject nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run against these agents (HOST:PORT, comma-separated) instead of the file's;
        /// --tls-dir / --insecure-plaintext then replace the file's TLS settings.
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// Kubeconfig for steps that select by labels or zone or delete pods (default:
        /// KUBECONFIG, ~/.kube/config, then the in-cluster service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Let the experiment target kube-system and chaos-control (explicit targets,
        /// selectors and delete_pod); refused by default.
        #[arg(long)]
        include_protected: bool,
    },
    /// Long-running controller: serves the Controller gRPC API (mTLS with the
    /// controller certificate of --tls-dir), runs the configured experiments on their
    /// schedule, watches the agents, serves /metrics and /healthz.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the Controller gRPC API listens.
        #[arg(long, default_value = "0.0.0.0:7093")]
        api_listen: std::net::SocketAddr,
        /// ca.pem, controller.pem, controller-key.pem for the API (default: --tls-dir).
        #[arg(long)]
        api_tls_dir: Option<PathBuf>,
        /// How often the API's TLS files are read again, in seconds: a renewed
        /// certificate is served from then on.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        tls_reload_secs: u64,
        /// Submitted runs beyond this many running at once are refused (ResourceExhausted).
        #[arg(long, default_value_t = 4)]
        max_concurrent_runs: usize,
        /// Finished runs remembered for `chaosctl runs` and GetRun.
        #[arg(long, default_value_t = 100)]
        keep_finished_runs: usize,
        /// Most connections to the API at once, counted from accept (TLS handshakes in
        /// progress count); one more is closed at once.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
        max_api_connections: u64,
        /// Let submitted experiments use exec probes (commands on this host).
        #[arg(long)]
        allow_exec_probes: bool,
        /// Let scheduled and submitted runs target kube-system and chaos-control
        /// (explicit targets, selectors and delete_pod); refused by default.
        #[arg(long)]
        include_protected: bool,
        /// Who may use the API (the agents' policy format); without it a caller's role
        /// is its client certificate's Subject O.
        #[arg(long, env = "CHAOS_AUTHZ_POLICY")]
        authz_policy: Option<PathBuf>,
        /// serve's log on stderr (the audit lines among it): `text` or `json`.
        #[arg(long, env = "CHAOS_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
        log_format: String,
    },
    /// Submit an experiment file to `chaosctl serve`; prints the run id. With --wait,
    /// follows the run and ends like `run` (report, exit status by verdict).
    Submit {
        experiment: PathBuf,
        #[command(flatten)]
        controller: ControllerArg,
        #[arg(long)]
        wait: bool,
    },
    /// The runs `chaosctl serve` knows: running and recently finished.
    Runs {
        #[command(flatten)]
        controller: ControllerArg,
    },
    /// Cancel a run on `chaosctl serve`: every fault it injected is reverted at once.
    Cancel {
        id: String,
        #[command(flatten)]
        controller: ControllerArg,
    },
}

#[derive(Debug, Args)]
struct ControllerArg {
    /// The controller's API (HOST:PORT of `chaosctl serve --api-listen`).
    #[arg(long, env = "CHAOS_CONTROLLER", default_value = "127.0.0.1:7093")]
    controller: String,
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
    /// Load the target's CPU to a percentage of its limit (of its cpuset when unlimited).
    Cpu {
        #[command(flatten)]
        common: Common,
        /// Percent of the container's CPU limit, 1..=100.
        #[arg(long)]
        load: u32,
        /// Stressor threads (default: enough whole cores for the load; starve: the most
        /// threads, default 16 per CPU of the limit).
        #[arg(long)]
        cores: Option<u32>,
        /// fill: drive the container's TOTAL use to the load; add: add the load on top;
        /// starve: take the load from a busy workload, leaving it at most 100 - load.
        #[arg(long, value_enum, default_value = "fill")]
        mode: CpuModeSpec,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// Hold resident memory in the target's cgroup.
    Memory {
        #[command(flatten)]
        common: Common,
        /// How much: 256MiB, 1GiB, ...
        #[arg(long, value_parser = parse_size, required_unless_present = "percent", conflicts_with = "percent")]
        size: Option<u64>,
        /// Percent of the container's memory limit (its own or its pod's).
        #[arg(long)]
        percent: Option<u32>,
        /// With --percent: of node memory when the container has no memory limit (the agent
        /// refuses a percent of an unlimited container otherwise).
        #[arg(long, requires = "percent")]
        allow_node_memory: bool,
        /// Reach the size linearly over this time.
        #[arg(long, value_parser = parse_duration)]
        ramp: Option<Duration>,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// Impair the target's traffic with netem (delay, loss, ...), in its netns.
    Network {
        #[command(flatten)]
        common: Common,
        /// Added delay, e.g. 100ms.
        #[arg(long, value_parser = parse_duration)]
        delay: Option<Duration>,
        /// Random variation of the delay, e.g. 10ms.
        #[arg(long, value_parser = parse_duration, requires = "delay")]
        jitter: Option<Duration>,
        /// Jitter shape: uniform, normal, pareto, paretonormal.
        #[arg(long, requires = "jitter")]
        distribution: Option<String>,
        /// Percent of packets dropped.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Percent of packets sent twice.
        #[arg(long, default_value_t = 0.0)]
        duplicate: f64,
        /// Percent of packets with a flipped bit.
        #[arg(long, default_value_t = 0.0)]
        corrupt: f64,
        /// Percent of packets sent without the delay (needs --delay).
        #[arg(long, default_value_t = 0.0)]
        reorder: f64,
        /// Bandwidth limit: 1mbit, 100kbit, 10MB/s, 512KiB/s, or bytes per second (125000).
        /// Alone it is a tbf (needs no netem module); with other impairments it is netem's
        /// rate. Bit units take any case; byte units end in B/s (kbps, 10mb: refused).
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        rate: Option<u64>,
        /// With a rate alone: the tbf's bucket, e.g. 32KiB (default 10 ms at the rate, at
        /// least 16KiB); at least one full frame of the interface.
        #[arg(long, value_name = "SIZE", value_parser = tbf_size, requires = "rate")]
        burst: Option<u64>,
        /// With a rate alone: the tbf's queue, bytes that may wait before packets drop,
        /// e.g. 256KiB (default the bucket plus 100 ms at the rate).
        #[arg(long, value_name = "SIZE", value_parser = tbf_size, requires = "rate")]
        queue: Option<u64>,
        /// Interface inside the target's namespace (default: the default route's).
        #[arg(long)]
        interface: Option<String>,
        /// Only traffic to this IPv4 CIDR (repeatable; with --direction ingress: from it).
        #[arg(long)]
        to: Vec<String>,
        /// Only traffic to this port (repeatable; with --direction ingress: from it).
        #[arg(long)]
        port: Vec<u32>,
        /// Only this protocol (ports without a protocol mean tcp and udp).
        #[arg(long, value_enum, default_value = "any")]
        protocol: TrafficProtocol,
        /// Keep traffic to this CIDR untouched (repeatable).
        #[arg(long)]
        exclude_to: Vec<String>,
        /// Keep traffic to this port untouched (repeatable), e.g. 53.
        #[arg(long)]
        exclude_port: Vec<u32>,
        /// egress, or ingress (through an ifb device made for the fault).
        #[arg(long, value_enum, default_value = "egress")]
        direction: TrafficDirection,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// Drop the target's outgoing traffic (all, or to CIDRs / ports) for the duration.
    Blackhole {
        #[command(flatten)]
        common: Common,
        /// Only traffic to this IPv4 CIDR (repeatable).
        #[arg(long)]
        to: Vec<String>,
        /// Only traffic to this port (repeatable).
        #[arg(long)]
        port: Vec<u32>,
        /// The node's own default-route interface instead of the target's (the agent
        /// needs --allow-node-scope; its gRPC port stays reachable).
        #[arg(long)]
        node_scope: bool,
        /// The interface to drop on instead of the default-route one.
        #[arg(long)]
        interface: Option<String>,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// Freeze every process of the target's containers (their cgroup freezer) for the
    /// duration; a pid: target is refused (stop one process with `inject process --signal STOP`).
    Pause {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// Throttle the block IO of the target's containers (their cgroup's io.max or blkio
    /// throttle) for the duration; at least one limit above 0, a pid: target is refused.
    Io {
        #[command(flatten)]
        common: Common,
        /// Read bytes per second: 1MiB, 512KiB, plain bytes.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        read_bps: Option<u64>,
        /// Write bytes per second: 1MiB, 512KiB, plain bytes.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        write_bps: Option<u64>,
        /// Read operations per second.
        #[arg(long, value_name = "N")]
        read_iops: Option<u64>,
        /// Write operations per second.
        #[arg(long, value_name = "N")]
        write_iops: Option<u64>,
        /// One disk: MAJ:MIN, a name (nvme0n1) or a path (/dev/loop3); a partition means
        /// its disk. Default: every whole disk.
        #[arg(long)]
        device: Option<String>,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// Fill a filesystem the target writes to with one file (.chaos-disk-fill-<hex>, a
    /// name unique to the fault, in --path, allocated at once) for the duration, removed at every end; never beyond
    /// what df shows available, nor below the agent's free floor of a node filesystem. A
    /// cgroup: target is refused.
    #[command(group(clap::ArgGroup::new("amount").args(["size", "percent"]).required(true)))]
    DiskFill {
        #[command(flatten)]
        common: Common,
        /// The file's size: 1GiB, 500MiB, plain bytes.
        #[arg(long, value_name = "SIZE", value_parser = fill_size)]
        size: Option<u64>,
        /// Fill until the filesystem is this much used, as df counts it: 1 to 99.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=99))]
        percent: Option<u32>,
        /// A directory inside the container, whose filesystem is filled (a volume's mount
        /// path for that volume). Default: /, the container's writable root.
        #[arg(long, value_name = "DIR", value_parser = fill_path)]
        path: Option<String>,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// Run workers in the target's cgroup that write and read back a file each
    /// (.chaos-io-stress-<id>-<n> in --path, direct IO where the filesystem takes it) for
    /// the duration, charged to the container; the files are removed at every end. A
    /// cgroup: target is refused.
    IoStress {
        #[command(flatten)]
        common: Common,
        /// Worker processes per target: 1 to 8 (default 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8))]
        workers: Option<u32>,
        /// Read plus write bytes per second, shared by a target's workers: 10MiB, at least
        /// 64KiB. Default: as fast as the device allows.
        #[arg(long, value_name = "SIZE", value_parser = stress_bps)]
        bps: Option<u64>,
        /// Each worker's file: 64MiB (the default), at least 1MiB.
        #[arg(long, value_name = "SIZE", value_parser = stress_file_size)]
        file_size: Option<u64>,
        /// A directory inside the container (a volume's mount path stresses that
        /// volume). Default: /tmp where the container has one, else /.
        #[arg(long, value_name = "DIR", value_parser = fill_path)]
        path: Option<String>,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
}

/// `inject io-stress --bps`: at least 64KiB (the agent's bound).
fn stress_bps(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        bps if bps < MIN_IO_STRESS_BPS => Err("must be at least 64KiB".into()),
        bps => Ok(bps),
    }
}

/// `inject io-stress --file-size`: at least 1MiB (the agent's bound).
fn stress_file_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        size if size < MIN_IO_STRESS_FILE_SIZE => Err("must be at least 1MiB".into()),
        size => Ok(size),
    }
}

/// `inject network --burst`, `--queue`: a size above 0 (0 is the agent's default in the
/// API), as the experiment's `network.burst` and `queue`.
fn tbf_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err("must be above 0 (leave it out for the default)".into()),
        bytes => Ok(bytes),
    }
}

/// `inject disk-fill --size`: a size above 0 (0 is "no size" in the API).
fn fill_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err("must be above 0".into()),
        bytes => Ok(bytes),
    }
}

/// `inject disk-fill --path`: absolute, without `..` steps, as the experiment's
/// `disk_fill.path`.
fn fill_path(text: &str) -> Result<String, String> {
    check_fill_path(text).map(|()| text.to_string())
}

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
            chaosctl::serve::serve(chaosctl::serve::ServeOptions {
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
            let code = chaosctl::run_command::run(chaosctl::run_command::RunArgs {
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
        Command::Inject(Inject::Kill {
            common,
            signal,
            process,
            interval,
            duration,
        }) => {
            let request = inject_request(
                common,
                duration.unwrap_or_default(),
                api::inject_request::Fault::Process(api::ProcessFault {
                    signal,
                    process: process.unwrap_or_default(),
                    interval_ms: interval.map(|d| d.as_millis() as u64).unwrap_or(0),
                }),
            );
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
        Command::Inject(Inject::Cpu {
            common,
            load,
            cores,
            mode,
            duration,
        }) => {
            let request = inject_request(
                common,
                duration,
                api::inject_request::Fault::Cpu(api::CpuFault {
                    load_percent: load,
                    cores: cores.unwrap_or(0),
                    mode: mode.to_api() as i32,
                }),
            );
            inject_and_print(&address, cli.output, request).await?;
        }
        Command::Inject(Inject::Memory {
            common,
            size,
            percent,
            allow_node_memory,
            ramp,
            duration,
        }) => {
            let request = inject_request(
                common,
                duration,
                api::inject_request::Fault::Memory(api::MemoryFault {
                    size_bytes: size.unwrap_or(0),
                    percent: percent.unwrap_or(0),
                    ramp_ms: ramp.map_or(0, |r| r.as_millis() as u64),
                    allow_node_memory,
                }),
            );
            inject_and_print(&address, cli.output, request).await?;
        }
        Command::Inject(Inject::Network {
            common,
            delay,
            jitter,
            distribution,
            loss,
            duplicate,
            corrupt,
            reorder,
            rate,
            burst,
            queue,
            interface,
            to,
            port,
            protocol,
            exclude_to,
            exclude_port,
            direction,
            duration,
        }) => {
            let spec = NetworkSpec {
                interface,
                delay,
                jitter,
                loss,
                duplicate,
                corrupt,
                rate,
                burst,
                queue,
                to,
                ports: port,
                protocol,
                direction,
                exclude_to,
                exclude_ports: exclude_port,
            };
            let fault = network_fault(&spec, distribution.as_deref(), reorder)?;
            let request =
                inject_request(common, duration, api::inject_request::Fault::Network(fault));
            inject_and_print(&address, cli.output, request).await?;
        }
        Command::Inject(Inject::Blackhole {
            common,
            to,
            port,
            node_scope,
            interface,
            duration,
        }) => {
            let request = inject_request(
                common,
                duration,
                api::inject_request::Fault::Blackhole(api::BlackholeFault {
                    destinations: to,
                    ports: port,
                    node_scope,
                    interface: interface.unwrap_or_default(),
                }),
            );
            inject_and_print(&address, cli.output, request).await?;
        }
        Command::Inject(Inject::Pause { common, duration }) => {
            let request = inject_request(
                common,
                duration,
                api::inject_request::Fault::Pause(api::PauseFault {}),
            );
            inject_and_print(&address, cli.output, request).await?;
        }
        Command::Inject(Inject::Io {
            common,
            read_bps,
            write_bps,
            read_iops,
            write_iops,
            device,
            duration,
        }) => {
            let io = IoSpec {
                read_bps,
                write_bps,
                read_iops,
                write_iops,
                device,
            };
            check_io_limits(&io)?;
            let request = inject_request(
                common,
                duration,
                api::inject_request::Fault::Io(chaosctl::request::io_fault(&io)),
            );
            inject_and_print(&address, cli.output, request).await?;
        }
        Command::Inject(Inject::DiskFill {
            common,
            size,
            percent,
            path,
            duration,
        }) => {
            let fill = DiskFillSpec {
                size,
                percent,
                path,
            };
            let request = inject_request(
                common,
                duration,
                api::inject_request::Fault::DiskFill(chaosctl::request::disk_fill_fault(&fill)),
            );
            inject_and_print(&address, cli.output, request).await?;
        }
        Command::Inject(Inject::IoStress {
            common,
            workers,
            bps,
            file_size,
            path,
            duration,
        }) => {
            let stress = IoStressSpec {
                workers,
                bps,
                file_size,
                path,
            };
            let request = inject_request(
                common,
                duration,
                api::inject_request::Fault::IoStress(chaosctl::request::io_stress_fault(&stress)),
            );
            inject_and_print(&address, cli.output, request).await?;
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

/// The fault of `chaosctl inject network`: what an experiment's network step maps to
/// (`request::network_fault`, so a flag and a field mean the same), and the options only
/// the command line has.
fn network_fault(
    spec: &NetworkSpec,
    distribution: Option<&str>,
    reorder: f64,
) -> Result<api::NetworkFault> {
    let distribution = match distribution {
        None => api::Distribution::Unspecified,
        Some(name) => {
            api::Distribution::from_str_name(&format!("DISTRIBUTION_{}", name.to_ascii_uppercase()))
                .with_context(|| {
                    format!("--distribution {name}: use uniform, normal, pareto or paretonormal")
                })?
        }
    };
    Ok(api::NetworkFault {
        distribution: distribution as i32,
        reorder_percent: reorder,
        ..chaosctl::request::network_fault(spec)
    })
}

/// Refused here rather than by the agent: an IO fault without a limit would throttle
/// nothing, and the flags are the user's to fix (0 is no limit, as in the API).
fn check_io_limits(io: &IoSpec) -> Result<()> {
    if !io.has_limit() {
        anyhow::bail!(
            "inject io needs at least one of --read-bps, --write-bps, --read-iops, --write-iops \
             above 0"
        );
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
async fn inject_and_print(
    address: &AgentAddress,
    format: Output,
    request: api::InjectRequest,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("chaosctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    fn inject_network(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec!["inject", "network", "--target", "pod:dev/db-0"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--duration", "1m"]);
        parse(&args)
    }

    /// The fault `chaosctl inject network` with these options would send.
    fn network_fault_of(extra: &[&str]) -> api::NetworkFault {
        match inject_network(extra).unwrap().command {
            Command::Inject(Inject::Network {
                delay,
                jitter,
                distribution,
                loss,
                duplicate,
                corrupt,
                reorder,
                rate,
                burst,
                queue,
                interface,
                to,
                port,
                protocol,
                exclude_to,
                exclude_port,
                direction,
                ..
            }) => {
                let spec = NetworkSpec {
                    interface,
                    delay,
                    jitter,
                    loss,
                    duplicate,
                    corrupt,
                    rate,
                    burst,
                    queue,
                    to,
                    ports: port,
                    protocol,
                    direction,
                    exclude_to,
                    exclude_ports: exclude_port,
                };
                network_fault(&spec, distribution.as_deref(), reorder).unwrap()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inject_network_reads_a_rate_as_people_write_it() {
        for (rate, bytes) in [
            ("1mbit", 125_000),
            ("100kbit", 12_500),
            ("10MB/s", 10_000_000),
            ("1MiB/s", 1 << 20),
            ("125000", 125_000),
        ] {
            assert_eq!(
                network_fault_of(&["--rate", rate]),
                api::NetworkFault {
                    rate_bytes_per_second: bytes,
                    direction: api::Direction::Egress as i32,
                    ..Default::default()
                },
                "{rate}"
            );
        }
        // The options only the command line has still reach the fault beside the rate.
        let fault = network_fault_of(&[
            "--delay",
            "100ms",
            "--jitter",
            "10ms",
            "--distribution",
            "normal",
            "--reorder",
            "25",
            "--rate",
            "2mbit",
            "--to",
            "10.0.0.0/8",
            "--port",
            "5432",
        ]);
        assert_eq!(fault.rate_bytes_per_second, 250_000);
        assert_eq!((fault.delay_us, fault.jitter_us), (100_000, 10_000));
        assert_eq!(fault.distribution, api::Distribution::Normal as i32);
        assert_eq!(fault.reorder_percent, 25.0);
        assert_eq!(fault.destinations, vec!["10.0.0.0/8"]);
        assert_eq!(fault.ports, vec![5432]);
        let sized = network_fault_of(&["--rate", "1mbit", "--burst", "32K", "--queue", "100KB"]);
        assert_eq!(
            (
                sized.rate_bytes_per_second,
                sized.rate_burst_bytes,
                sized.rate_queue_bytes
            ),
            (125_000, 32 << 10, 100_000)
        );
        assert_eq!(network_fault_of(&["--rate", "1mbit"]).rate_burst_bytes, 0);
        for (args, kind, text) in [
            (
                &["--delay", "10ms", "--burst", "32KiB"][..],
                clap::error::ErrorKind::MissingRequiredArgument,
                "--rate",
            ),
            (
                &["--delay", "10ms", "--queue", "32KiB"][..],
                clap::error::ErrorKind::MissingRequiredArgument,
                "--rate",
            ),
            (
                &["--rate", "1mbit", "--burst", "0"][..],
                clap::error::ErrorKind::ValueValidation,
                "must be above 0",
            ),
            (
                &["--rate", "1mbit", "--queue", "1.5M"][..],
                clap::error::ErrorKind::ValueValidation,
                "--queue",
            ),
        ] {
            let error = inject_network(args).unwrap_err();
            assert_eq!(error.kind(), kind, "{args:?}: {error}");
            assert!(error.to_string().contains(text), "{args:?}: {error}");
        }
        for (rate, text) in [
            ("10mb", "`10mbit` (bits per second) or `10MB/s`"),
            ("100kbps", "ambiguous"),
            ("0", "above 0"),
            ("1.5", "a fraction needs a prefixed unit"),
        ] {
            let error = inject_network(&["--rate", rate]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{rate}: {error}"
            );
            let message = error.to_string();
            assert!(
                message.contains("--rate") && message.contains(text),
                "{rate}: {message}"
            );
        }
    }

    #[test]
    fn inject_io_reads_sizes_iops_and_the_device() {
        let cli = parse(&[
            "inject",
            "io",
            "--target",
            "pod:dev/db-0",
            "--read-bps",
            "1MiB",
            "--write-bps",
            "512KiB",
            "--read-iops",
            "100",
            "--write-iops",
            "50",
            "--device",
            "/dev/loop3",
            "--duration",
            "30s",
        ])
        .unwrap();
        match cli.command {
            Command::Inject(Inject::Io {
                common,
                read_bps,
                write_bps,
                read_iops,
                write_iops,
                device,
                duration,
            }) => {
                assert_eq!(common.target, "pod:dev/db-0");
                assert_eq!(read_bps, Some(1 << 20));
                assert_eq!(write_bps, Some(512 << 10));
                assert_eq!(read_iops, Some(100));
                assert_eq!(write_iops, Some(50));
                assert_eq!(device.as_deref(), Some("/dev/loop3"));
                assert_eq!(duration, Duration::from_secs(30));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inject_io_refuses_bad_sizes_and_no_limit() {
        let error = parse(&[
            "inject",
            "io",
            "--target",
            "pod:dev/db-0",
            "--write-bps",
            "1.5M",
            "--duration",
            "30s",
        ])
        .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(error.to_string().contains("--write-bps"), "{error}");

        let no_limit = IoSpec {
            device: Some("8:0".into()),
            ..Default::default()
        };
        let error = check_io_limits(&no_limit).unwrap_err().to_string();
        assert!(error.contains("at least one of --read-bps"), "{error}");
        let zeros = IoSpec {
            read_bps: Some(0),
            write_iops: Some(0),
            ..Default::default()
        };
        assert!(check_io_limits(&zeros).is_err());
        let writes = IoSpec {
            write_iops: Some(10),
            ..Default::default()
        };
        assert!(check_io_limits(&writes).is_ok());
    }

    fn inject_disk_fill(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec!["inject", "disk-fill", "--target", "pod:dev/db-0"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--duration", "1m"]);
        parse(&args)
    }

    #[test]
    fn inject_disk_fill_reads_a_size_or_a_percent_and_the_path() {
        match inject_disk_fill(&["--size", "1GiB"]).unwrap().command {
            Command::Inject(Inject::DiskFill {
                common,
                size,
                percent,
                path,
                duration,
            }) => {
                assert_eq!(common.target, "pod:dev/db-0");
                assert_eq!(size, Some(1 << 30));
                assert_eq!(percent, None);
                assert_eq!(path, None);
                assert_eq!(duration, Duration::from_secs(60));
                let fault = chaosctl::request::disk_fill_fault(&DiskFillSpec {
                    size,
                    percent,
                    path,
                });
                assert_eq!(
                    fault,
                    api::DiskFillFault {
                        size_bytes: 1 << 30,
                        percent: 0,
                        path: String::new(),
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        match inject_disk_fill(&["--percent", "90", "--path", "/data"])
            .unwrap()
            .command
        {
            Command::Inject(Inject::DiskFill {
                size,
                percent,
                path,
                ..
            }) => {
                assert_eq!(size, None);
                assert_eq!(percent, Some(90));
                assert_eq!(path.as_deref(), Some("/data"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inject_disk_fill_refuses_both_amounts_none_and_bad_values() {
        use clap::error::ErrorKind;
        let cases: [(&[&str], ErrorKind, &str); 8] = [
            (
                &[],
                ErrorKind::MissingRequiredArgument,
                "--size <SIZE>|--percent <PERCENT>",
            ),
            (
                &["--size", "1GiB", "--percent", "50"],
                ErrorKind::ArgumentConflict,
                "--percent",
            ),
            (&["--percent", "0"], ErrorKind::ValueValidation, "--percent"),
            (
                &["--percent", "100"],
                ErrorKind::ValueValidation,
                "--percent",
            ),
            (&["--size", "1.5G"], ErrorKind::ValueValidation, "--size"),
            (
                &["--size", "0"],
                ErrorKind::ValueValidation,
                "must be above 0",
            ),
            (
                &["--size", "1GiB", "--path", "data"],
                ErrorKind::ValueValidation,
                "is not absolute",
            ),
            (
                &["--percent", "90", "--path", "/data/../etc"],
                ErrorKind::ValueValidation,
                "has a `..` step",
            ),
        ];
        for (args, kind, text) in cases {
            let error = inject_disk_fill(args).unwrap_err();
            assert_eq!(error.kind(), kind, "{args:?}: {error}");
            assert!(error.to_string().contains(text), "{args:?}: {error}");
        }
    }

    fn inject_io_stress(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec!["inject", "io-stress", "--target", "pod:dev/db-0"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--duration", "1m"]);
        parse(&args)
    }

    #[test]
    fn inject_io_stress_reads_its_options_and_refuses_out_of_bounds() {
        let all = [
            "--workers",
            "2",
            "--bps",
            "1MiB",
            "--file-size",
            "8MiB",
            "--path",
            "/data",
        ];
        match inject_io_stress(&all).unwrap().command {
            Command::Inject(Inject::IoStress {
                common,
                workers,
                bps,
                file_size,
                path,
                duration,
            }) => {
                assert_eq!(common.target, "pod:dev/db-0");
                assert_eq!(duration, Duration::from_secs(60));
                let fault = chaosctl::request::io_stress_fault(&IoStressSpec {
                    workers,
                    bps,
                    file_size,
                    path,
                });
                assert_eq!(
                    fault,
                    api::IoStressFault {
                        workers: 2,
                        bytes_per_second: 1 << 20,
                        file_bytes: 8 << 20,
                        path: "/data".into(),
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        match inject_io_stress(&[]).unwrap().command {
            Command::Inject(Inject::IoStress {
                workers,
                bps,
                file_size,
                path,
                ..
            }) => assert_eq!((workers, bps, file_size, path), (None, None, None, None)),
            other => panic!("{other:?}"),
        }
        for (args, text) in [
            (&["--workers", "9"][..], "--workers"),
            (&["--workers", "0"][..], "--workers"),
            (&["--bps", "1000"][..], "must be at least 64KiB"),
            (&["--file-size", "4KiB"][..], "must be at least 1MiB"),
            (&["--path", "data"][..], "is not absolute"),
        ] {
            let error = inject_io_stress(args).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}: {error}"
            );
            assert!(error.to_string().contains(text), "{args:?}: {error}");
        }
    }
}
