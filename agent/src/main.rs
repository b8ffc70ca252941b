//! The chaos-agent binary: flags, logging, start-up recovery, serving, shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chaos_agent::capabilities;
use chaos_agent::descriptors::{self, DescriptorBudget};
use chaos_agent::journal::Journal;
use chaos_agent::metrics::{self, Metrics};
use chaos_agent::procfs::Procfs;
use chaos_agent::protect::{PolicyOptions, ProtectionPolicy};
use chaos_agent::registry::{Registry, Runtimes};
use chaos_agent::resolve::Resolver;
use chaos_agent::runtime::Containerd;
use chaos_agent::service::AgentService;
use chaos_agent::validate::{
    DEFAULT_DISK_FILL_MIN_FREE_PERCENT, DEFAULT_MAX_MEMORY_FILL_PERCENT_OF_AVAILABLE, Limits,
};
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

/// How long SIGTERM's drain may revert before the agent exits anyway: below the
/// DaemonSet's 30 s terminationGracePeriodSeconds, so the kubelet never has to SIGKILL.
const DRAIN_BOUND: Duration = Duration::from_secs(20);

/// Stressor threads allowed by default: sixteen per online CPU of the node, so that one CPU
/// starve of a container limited to every CPU fits with its default ceiling (16 threads per
/// CPU of its limit). The threads burn only inside their targets' cgroups and quotas; the
/// budget bounds how many the agent makes, not how much CPU they take.
fn default_stressor_threads() -> u32 {
    let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .unwrap_or(1);
    u32::try_from(online.max(1))
        .unwrap_or(1)
        .saturating_mul(chaos_stress::cpu::STARVE_THREADS_PER_CPU as u32)
}

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
    /// Permit targets that belong to no container (processes and cgroups of the node
    /// itself: host daemons, login shells). Refused by default, whatever the target form.
    #[arg(long)]
    allow_host_processes: bool,
    /// Also protect processes with this name (the start of the kernel's 15-byte process
    /// name, or of the executable's name); repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    protect_process: Vec<String>,
    /// Also protect pods in this namespace; repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    protect_namespace: Vec<String>,
    /// Permit faults on the node's own interfaces (blackhole with node scope).
    #[arg(long)]
    allow_node_scope: bool,
    /// Stressor threads (CPU workers, one per memory stressor) all faults together may
    /// run on this node; default: sixteen per online CPU.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_stressor_threads: Option<u32>,
    /// Longest fault this agent accepts, in seconds.
    #[arg(long, default_value_t = 3600)]
    max_duration_secs: u64,
    /// Most gRPC connections held at once, counted from accept (TLS handshakes in
    /// progress count); one more is closed at once.
    #[arg(long, env = "CHAOS_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Most connections to the metrics port (/metrics, /healthz, /readyz) at once.
    #[arg(long, env = "CHAOS_MAX_METRICS_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    max_metrics_connections: u64,
    /// File descriptors that connections can never take: kept for injecting and
    /// reverting faults. The agent does not start unless RLIMIT_NOFILE holds the
    /// descriptors open at start, both caps and this reserve.
    #[arg(long, env = "CHAOS_FD_RESERVE", default_value_t = descriptors::DEFAULT_RESERVE)]
    fd_reserve: u64,
    /// The most a memory fault may hold, in percent of the node's MemAvailable when it is
    /// injected (all its targets together). A larger fill is refused, not shrunk.
    #[arg(
        long,
        env = "CHAOS_MAX_MEMORY_FILL_PERCENT_OF_AVAILABLE",
        default_value_t = DEFAULT_MAX_MEMORY_FILL_PERCENT_OF_AVAILABLE,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    max_memory_fill_percent_of_available: u32,
    /// What a disk fill must leave available of a filesystem the node has mounted (its
    /// root, containerd's, the kubelet's volumes), in percent of it. The default stays
    /// above the kubelet's default hard eviction thresholds (10 % and 15 %).
    #[arg(
        long,
        env = "CHAOS_DISK_FILL_MIN_FREE_PERCENT",
        default_value_t = DEFAULT_DISK_FILL_MIN_FREE_PERCENT,
        value_parser = clap::value_parser!(u32).range(0..=99)
    )]
    disk_fill_min_free_percent: u32,
    /// The process whose mount and network namespaces are the node's: a disk fill reads
    /// the node's filesystems and finds a volume's files again through its /proc/PID/root
    /// and mountinfo; a network fault in its network namespace is node scope. 1 for a
    /// DaemonSet with hostPID (which then needs CAP_SYS_PTRACE).
    #[arg(long, env = "CHAOS_NODE_PID", default_value_t = 1)]
    node_pid: u32,
    #[arg(long, env = "CHAOS_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// Who may do what (YAML: rules of identity or `*` pattern -> role, namespaces).
    /// Without it a caller's role is its client certificate's Subject O (admin,
    /// operator, viewer; anything else: viewer), in every namespace.
    #[arg(long, env = "CHAOS_AUTHZ_POLICY")]
    authz_policy: Option<PathBuf>,
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
        #[arg(long, default_value = "fill", value_parser = clap::builder::PossibleValuesParser::new(
            chaos_stress::cpu::CpuMode::ALL.map(chaos_stress::cpu::CpuMode::arg)
        ))]
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
    Io {
        /// The target's init and its start time: the directory is in its root.
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        start_time: u64,
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        file_bytes: u64,
        #[arg(long, default_value_t = 0)]
        bytes_per_second: u64,
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
                mode: chaos_stress::cpu::CpuMode::from_arg(&mode)
                    .ok_or_else(|| anyhow::anyhow!("unknown CPU mode {mode:?}"))?,
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
        StressKind::Io {
            pid,
            start_time,
            path,
            name,
            file_bytes,
            bytes_per_second,
            duration_ms,
            parent,
        } => (
            parent,
            ChildStressor::Io {
                pid,
                start_time,
                path,
                name,
                file_bytes,
                bytes_per_second,
                duration: Duration::from_millis(duration_ms),
            },
        ),
    };
    run_child(parent, cgroup_root, &stressor).context("stressor")
}

/// How callers are known: by certificate and policy, or (plaintext) not at all.
fn access(args: &Args) -> Result<chaos_agent::authz::Access> {
    use chaos_agent::authz::Access;
    use chaos_agent::authz::Policy;
    if args.tls_dir.is_none() && args.insecure_plaintext {
        tracing::warn!(
            "--insecure-plaintext: callers have no identity; every caller is `insecure-plaintext` with role admin"
        );
        return Ok(Access::Plaintext);
    }
    let policy = match &args.authz_policy {
        Some(path) => {
            let policy = Policy::load(path)?;
            tracing::info!(policy = %path.display(), rules = policy.rules.len(), "authorization policy loaded");
            policy
        }
        None => Policy::default(),
    };
    Ok(Access::Certificates(policy))
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
    let open_file_limit =
        descriptors::raise_soft_limit_to_hard().context("raising the descriptor limit")?;
    // Three single-threaded runtimes. Requests run on this thread. The faults' lifetimes
    // (deadlines, lease expiries, reverts) run on a thread of their own, so no request,
    // however long a /proc read or a disk write blocks it, can hold back a revert; and
    // periodic work that may block (finding a container again through containerd and
    // /proc for a repeating kill) runs on a third, so it cannot either. One thread each
    // because a request is a few syscalls: a pool of workers only added wake-ups between
    // threads on every request (BENCHMARKS.md, session 5).
    let lifetimes = start_runtime_thread("chaos-faults")?;
    let periodic = start_runtime_thread("chaos-periodic")?;
    let requests = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the request runtime")?;
    requests.block_on(run(
        args,
        Runtimes {
            lifetimes,
            periodic,
        },
        open_file_limit,
    ))
}

/// Starts a single-threaded runtime on a thread of its own that runs until the process
/// exits, and returns its handle.
fn start_runtime_thread(name: &str) -> Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .with_context(|| format!("starting the {name} thread"))?;
    Ok(handle)
}

async fn run(args: Args, runtimes: Runtimes, open_file_limit: u64) -> Result<()> {
    let lifetimes = runtimes.lifetimes.clone();
    let node_name = args.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into())
    });
    let cgroups = CgroupFs::at(&args.cgroup_root);
    let layout = cgroups.layout().context("detecting the cgroup layout")?;
    let journal = Journal::open(&args.state_dir).context("opening the journal")?;
    let metrics = Metrics::new(
        VERSION,
        chaos_agent::faults::KINDS.iter().map(|info| info.kind),
    );
    let resolver = Resolver {
        procfs: Procfs::default(),
        node_pid: args.node_pid,
        cgroups,
        layout: layout.clone(),
        runtime: Some(Containerd::new(
            &args.containerd_socket,
            args.containerd_namespace.clone(),
        )),
    };
    let agent_pid = std::process::id();
    let policy = ProtectionPolicy::new(PolicyOptions {
        agent_pid,
        agent_cgroup: Some(
            chaos_cgroup::ProcessCgroup::of_pid(std::path::Path::new("/proc"), agent_pid)
                .context("reading the agent's own cgroup")?,
        ),
        allow_kube_system: args.allow_kube_system,
        allow_host_processes: args.allow_host_processes,
        extra_processes: args.protect_process.clone(),
        extra_namespaces: args.protect_namespace.clone(),
    });
    let limits = Limits {
        max_duration: Duration::from_secs(args.max_duration_secs),
        allow_node_scope: args.allow_node_scope,
        agent_port: args.listen.port(),
        max_stressor_threads: args
            .max_stressor_threads
            .unwrap_or_else(default_stressor_threads),
        max_memory_fill_percent_of_available: args.max_memory_fill_percent_of_available,
        disk_fill_min_free_percent: args.disk_fill_min_free_percent,
        node_pid: args.node_pid,
    };
    // Read once: each kind's needs are checked against it at inject, and Capabilities
    // reports it, so a DaemonSet without a capability shows which kinds it disables.
    let held = capabilities::CapabilitySet::of_this_process()
        .context("reading the agent's own capabilities")?;
    for info in chaos_agent::faults::KINDS {
        let missing = chaos_agent::faults::missing_capabilities(info.kind, &held);
        if !missing.is_empty() {
            tracing::warn!(
                kind = info.kind.label(),
                missing = missing.join(","),
                "fault kind unusable: capabilities missing"
            );
        }
    }
    let registry = Registry::new(
        journal,
        metrics.clone(),
        resolver,
        policy,
        limits,
        held,
        runtimes,
    );

    let ready = Arc::new(AtomicBool::new(false));
    let metrics_listener = metrics::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    // Bound now, served once the journal is replayed: the descriptor budget is counted
    // with both listeners open.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let budget = DescriptorBudget {
        limit: open_file_limit,
        in_use: descriptors::open_descriptors(std::path::Path::new("/proc/self/fd"))?,
        grpc_connections: args.max_connections,
        metrics_connections: args.max_metrics_connections,
        reserve: args.fd_reserve,
    };
    budget.check()?;
    tracing::info!(
        limit = budget.limit,
        in_use = budget.in_use,
        max_connections = budget.grpc_connections,
        max_metrics_connections = budget.metrics_connections,
        reserve = budget.reserve,
        "file descriptors"
    );
    tracing::info!(addr = %metrics_listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(metrics::serve_http(
        metrics_listener,
        metrics.clone(),
        Arc::clone(&ready),
        metrics.connection_limit("metrics", cap(args.max_metrics_connections)),
    ));

    // Whatever a previous run left behind is reverted before anything new is accepted.
    let (reverted, failed) = registry.recover();
    tracing::info!(reverted, failed, "journal replayed");
    lifetimes.spawn(Arc::clone(&registry).reap());

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServer<AgentService>>()
        .await;
    // Reflection in both versions: grpcurl and current clients ask for v1; Python's
    // grpcio-reflection and older grpcurl builds ask for v1alpha only.
    let reflection = reflection_builder()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("building the v1alpha reflection service")?;
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
        access: access(&args)?,
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
    tracing::info!(addr = %listener.local_addr()?, node = %node_name, version = VERSION, "chaos-agent serving");
    ready.store(true, Ordering::Release);

    let shutdown_registry = Arc::clone(&registry);
    let shutdown = async move {
        wait_for_termination().await;
        ready.store(false, Ordering::Release);
        // No new inject from here on (Unavailable); the ones under way finish and are
        // reverted with the rest. Bounded below the pod's grace period, so the agent
        // exits itself; what could not be reverted stays in the journal.
        let (reverted, left) = shutdown_registry.drain(DRAIN_BOUND).await;
        if left == 0 {
            tracing::info!(reverted, "shutting down: reverted every fault");
        } else {
            tracing::error!(
                reverted,
                left,
                "shutting down with faults whose revert keeps failing: their journal records stay for the next start"
            );
        }
    };
    let router = Server::builder()
        .timeout(Duration::from_secs(60))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(AgentServer::new(service));
    let grpc_limit = metrics.connection_limit("grpc", cap(args.max_connections));
    let served = match tls {
        Some(tls) => {
            tokio::spawn(chaos_tls::keep_reloading(
                Arc::clone(&tls),
                Duration::from_secs(args.tls_reload_secs),
                move |result| metrics.tls_reloaded(result),
            ));
            let incoming =
                chaos_tls::incoming(listener, tls, chaos_tls::HANDSHAKE_TIMEOUT, grpc_limit);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            let incoming = chaos_tls::plain_incoming(listener, grpc_limit);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    served.context("serving gRPC")?;
    Ok(())
}

/// The agent's API, tonic-health's and reflection's own, for a reflection service.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(chaos_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// A cap from a flag (checked against the descriptor limit, so it fits in memory).
fn cap(flag: u64) -> usize {
    usize::try_from(flag).unwrap_or(usize::MAX)
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
