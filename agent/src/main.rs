//! The chaos-agent binary: flags, logging, start-up recovery, serving, shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chaos_agent::capabilities;
use chaos_agent::journal::Journal;
use chaos_agent::metrics::{self, Metrics};
use chaos_agent::procfs::Procfs;
use chaos_agent::protect::ProtectionPolicy;
use chaos_agent::registry::{EndReason, Registry};
use chaos_agent::resolve::Resolver;
use chaos_agent::runtime::Containerd;
use chaos_agent::service::AgentService;
use chaos_agent::validate::Limits;
use chaos_cgroup::CgroupFs;
use chaos_proto::api::agent_server::AgentServer;
use chaos_tls::ReloadingTls;
use clap::Parser;
use tonic::transport::Server;

// musl's allocator (the image's binaries are static musl) is slow under the many small,
// short-lived allocations of TLS, HTTP/2 and protobuf on every request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Parser)]
#[command(name = "chaos-agent", version, about = "Chaos Control node agent")]
struct Args {
    /// gRPC address (mTLS unless --insecure-plaintext).
    #[arg(long, env = "CHAOS_AGENT_LISTEN", default_value = "0.0.0.0:7090")]
    listen: SocketAddr,
    /// Plain-HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "CHAOS_METRICS_LISTEN", default_value = "0.0.0.0:7091")]
    metrics_listen: SocketAddr,
    /// Directory with ca.pem, agent.pem and agent-key.pem (`chaosctl certs --out DIR`).
    #[arg(long, env = "CHAOS_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Serve gRPC without TLS. Anyone who can reach the port can then kill processes
    /// on this node: for local experiments only.
    #[arg(long)]
    insecure_plaintext: bool,
    /// How often the TLS files are read again, in seconds: a renewed certificate (from
    /// cert-manager, through the kubelet's secret volume) is served from then on.
    #[arg(long, env = "CHAOS_TLS_RELOAD_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    tls_reload_secs: u64,
    /// Where the journal lives; must survive agent restarts (a hostPath in Kubernetes).
    #[arg(
        long,
        env = "CHAOS_STATE_DIR",
        default_value = "/var/lib/chaos-control"
    )]
    state_dir: PathBuf,
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    #[arg(
        long,
        env = "CHAOS_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    containerd_socket: PathBuf,
    /// containerd namespaces to search for containers (repeat or comma-separate).
    #[arg(
        long,
        env = "CHAOS_CONTAINERD_NAMESPACE",
        value_delimiter = ',',
        default_value = "k8s.io"
    )]
    containerd_namespace: Vec<String>,
    /// Permit targets in kube-system.
    #[arg(long)]
    allow_kube_system: bool,
    /// Permit faults on the node's own interfaces (blackhole with node scope).
    #[arg(long)]
    allow_node_scope: bool,
    /// Permit targets that belong to no container (processes of the node itself).
    #[arg(long)]
    allow_host_processes: bool,
    /// Longest fault this agent accepts, in seconds.
    #[arg(long, default_value_t = 3600)]
    max_duration_secs: u64,
    #[arg(long, env = "CHAOS_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[arg(
        long,
        env = "CHAOS_CGROUP_ROOT",
        default_value = "/sys/fs/cgroup",
        hide = true
    )]
    cgroup_root: PathBuf,
    #[command(subcommand)]
    command: Option<AgentCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Runs a stressor; the agent starts these itself inside target cgroups.
    #[command(hide = true)]
    Stress {
        #[command(subcommand)]
        kind: StressKind,
    },
}

#[derive(Debug, clap::Subcommand)]
enum StressKind {
    Cpu {
        #[arg(long)]
        percent: f64,
        #[arg(long, value_parser = ["fill", "add"], default_value = "fill")]
        mode: String,
        #[arg(long, default_value_t = 0)]
        workers: usize,
        #[arg(long)]
        duration_ms: u64,
        /// The agent's pid: the stressor dies with it.
        #[arg(long)]
        parent: i32,
    },
    Memory {
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 0)]
        ramp_ms: u64,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long)]
        parent: i32,
    },
}

/// The stressor child: no runtime, no logging set-up, no listeners.
fn run_stressor(cgroup_root: &std::path::Path, kind: StressKind) -> Result<()> {
    use chaos_agent::stressor::{ChildStressor, run_child};
    let (parent, stressor) = match kind {
        StressKind::Cpu {
            percent,
            mode,
            workers,
            duration_ms,
            parent,
        } => (
            parent,
            ChildStressor::Cpu {
                percent,
                mode: if mode == "add" {
                    chaos_stress::cpu::CpuMode::Add
                } else {
                    chaos_stress::cpu::CpuMode::Fill
                },
                workers,
                duration: Duration::from_millis(duration_ms),
            },
        ),
        StressKind::Memory {
            bytes,
            ramp_ms,
            duration_ms,
            parent,
        } => (
            parent,
            ChildStressor::Memory {
                bytes,
                ramp: Duration::from_millis(ramp_ms),
                duration: Duration::from_millis(duration_ms),
            },
        ),
    };
    run_child(parent, cgroup_root, &stressor).context("stressor")
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal: a pod's log (and a test's log file) gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// In a pod the agent may get its own cgroup namespace, which would make every
/// /proc/PID/cgroup path relative to it. With hostPID, /proc/1 is the host's init:
/// join its cgroup namespace before any thread starts, so paths are the host's.
fn join_host_cgroup_namespace() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mine = std::fs::metadata("/proc/self/ns/cgroup").context("reading /proc/self/ns/cgroup")?;
    let host = match std::fs::metadata("/proc/1/ns/cgroup") {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if mine.ino() == host.ino() {
        return Ok(());
    }
    let fd =
        std::fs::File::open("/proc/1/ns/cgroup").context("opening the host's cgroup namespace")?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .context("joining the host's cgroup namespace")?;
    Ok(())
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if let Some(AgentCommand::Stress { kind }) = args.command.take() {
        return run_stressor(&args.cgroup_root, kind);
    }
    init_logging(&args.log_format);
    if args.tls_dir.is_none() && !args.insecure_plaintext {
        bail!(
            "no --tls-dir given: the agent serves mTLS only (create certificates with `chaosctl certs --out DIR`), or pass --insecure-plaintext for a local experiment"
        );
    }
    join_host_cgroup_namespace()?;
    // Two single-threaded runtimes. Requests run on this thread. The faults' lifetimes
    // (deadlines, periodic work, lease expiries, reverts) run on a thread of their own,
    // so no request, however long a /proc read or a disk write blocks it, can hold back
    // a revert. One thread each because a request is a few syscalls: a pool of workers
    // only added wake-ups between threads on every request (BENCHMARKS.md, session 5).
    let lifetimes = start_lifetimes_runtime()?;
    let requests = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the request runtime")?;
    requests.block_on(run(args, lifetimes))
}

/// Starts the runtime that drives the faults, on a thread that runs until the process
/// exits, and returns its handle.
fn start_lifetimes_runtime() -> Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the fault runtime")?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("chaos-faults".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .context("starting the fault thread")?;
    Ok(handle)
}

async fn run(args: Args, lifetimes: tokio::runtime::Handle) -> Result<()> {
    let node_name = args.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into())
    });
    let cgroups = CgroupFs::at(&args.cgroup_root);
    let layout = cgroups.layout().context("detecting the cgroup layout")?;
    let journal = Journal::open(&args.state_dir).context("opening the journal")?;
    let metrics = Metrics::new(VERSION);
    let resolver = Resolver {
        procfs: Procfs::default(),
        cgroups,
        layout: layout.clone(),
        runtime: Some(Containerd::new(
            &args.containerd_socket,
            args.containerd_namespace.clone(),
        )),
    };
    let policy = ProtectionPolicy::new(std::process::id(), args.allow_kube_system);
    let limits = Limits {
        max_duration: Duration::from_secs(args.max_duration_secs),
        allow_node_scope: args.allow_node_scope,
        agent_port: args.listen.port(),
    };
    let registry = Registry::new(
        journal,
        metrics.clone(),
        resolver,
        policy,
        limits,
        lifetimes.clone(),
    );

    let ready = Arc::new(AtomicBool::new(false));
    let metrics_listener = metrics::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(metrics::serve_http(
        metrics_listener,
        metrics.clone(),
        Arc::clone(&ready),
    ));

    // Whatever a previous run left behind is reverted before anything new is accepted.
    let (reverted, failed) = registry.recover();
    tracing::info!(reverted, failed, "journal replayed");
    lifetimes.spawn(Arc::clone(&registry).reap());

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServer<AgentService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(chaos_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    // Network faults need sch_netem & co.: load what is loadable now, so Capabilities
    // reports what a request will find (and a missing module is logged at start).
    for (module, error) in
        capabilities::load_qdisc_modules(&chaos_netem::capabilities::ModuleTree::host())
    {
        tracing::warn!(module, error, "traffic-control module not available");
    }
    let service = AgentService {
        registry: Arc::clone(&registry),
        node_name: node_name.clone(),
        version: VERSION.to_string(),
        cgroup_version: capabilities::cgroup_version(&layout).to_string(),
        cgroup_controllers: layout.controllers.clone(),
        qdiscs: capabilities::qdiscs(),
    };

    let tls = match (&args.tls_dir, args.insecure_plaintext) {
        (Some(dir), _) => {
            let tls = ReloadingTls::load(chaos_agent::tls::files(dir)).context(
                "loading the agent's TLS files (create them with `chaosctl certs --out DIR`)",
            )?;
            tracing::info!(
                tls_dir = %dir.display(),
                reload_secs = args.tls_reload_secs,
                "gRPC with mTLS (client certificates required)"
            );
            Some(Arc::new(tls))
        }
        (None, true) => {
            tracing::warn!(
                "!!! gRPC WITHOUT TLS (--insecure-plaintext): anyone who reaches {} can inject faults on this node !!!",
                args.listen
            );
            None
        }
        (None, false) => unreachable!("checked in main"),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, node = %node_name, version = VERSION, "chaos-agent serving");
    ready.store(true, Ordering::Release);

    let shutdown_registry = Arc::clone(&registry);
    let shutdown = async move {
        wait_for_termination().await;
        ready.store(false, Ordering::Release);
        let reverted = shutdown_registry.revert_all(EndReason::Shutdown).await;
        tracing::info!(
            count = reverted.len(),
            "shutting down: reverted every active fault"
        );
    };
    let router = Server::builder()
        .timeout(Duration::from_secs(60))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AgentServer::new(service));
    let served = match tls {
        Some(tls) => {
            tokio::spawn(chaos_tls::keep_reloading(
                Arc::clone(&tls),
                Duration::from_secs(args.tls_reload_secs),
                move |result| metrics.tls_reloaded(result),
            ));
            let incoming = chaos_tls::incoming(listener, tls, chaos_tls::HANDSHAKE_TIMEOUT);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            // TCP_NODELAY, as tonic's own `serve` sets it (an incoming stream of our own
            // gets none): a response's last frames must not wait for the ACK of its
            // first (Nagle).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    served.context("serving gRPC")?;
    Ok(())
}

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; shutdown only by SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
