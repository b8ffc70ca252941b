//! A real chaos-agent process for integration tests: its own certificates, state
//! directory and loopback ports; stopped (SIGTERM, then SIGKILL) on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chaos_proto::api::agent_client::AgentClient;
use chaosctl::agents::client::{AgentAddress, connect};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tonic::transport::Channel;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where cargo put a workspace binary: next to the test executable's `deps/`
/// directory, or wherever `CHAOS_BIN_DIR` says.
pub fn binary(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("CHAOS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("locating the test executable")?;
            let deps = exe.parent().context("test executable has no directory")?;
            deps.parent().unwrap_or(deps).to_path_buf()
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first (`cargo build --workspace --bins`, as scripts/test does) or set CHAOS_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}

/// A free loopback port (bound and released; the agent binds it right after).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Certificates made by chaosctl's generator, as `chaosctl certs` writes them.
pub fn make_certs() -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("chaos-test-tls-")
        .tempdir()?;
    chaosctl::agents::certs::generate(
        dir.path(),
        &chaosctl::agents::certs::default_agent_names(),
        false,
    )?;
    Ok(dir)
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// None: start with --insecure-plaintext.
    pub tls_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub extra_args: Vec<String>,
    pub containerd_socket: String,
}

/// How the agent binary is started.
#[derive(Clone)]
enum Launcher {
    Direct,
    /// Through `prlimit`, with this RLIMIT_NOFILE.
    OpenFileLimit(u64),
    /// Through `setpriv`, holding only these capabilities.
    Capabilities(Vec<String>),
}

pub struct TestAgent {
    child: Option<Child>,
    pub options: AgentOptions,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub log_path: PathBuf,
}

impl TestAgent {
    /// Starts an agent with fresh certificates and state directory, searching both
    /// the `k8s.io` and `default` containerd namespaces.
    pub fn start_tls(tls_dir: &Path, state_dir: &Path) -> Result<TestAgent> {
        TestAgent::start(AgentOptions {
            tls_dir: Some(tls_dir.to_path_buf()),
            state_dir: state_dir.to_path_buf(),
            extra_args: Vec::new(),
            containerd_socket: crate::containerd::CONTAINERD_SOCKET.to_string(),
        })
    }

    pub fn start(options: AgentOptions) -> Result<TestAgent> {
        TestAgent::start_on(options, std::net::Ipv4Addr::LOCALHOST)
    }

    /// An agent whose gRPC port listens on `ip` (`0.0.0.0`: reachable from other network
    /// namespaces through their routes to this one). Metrics stay on loopback.
    pub fn start_on(options: AgentOptions, ip: std::net::Ipv4Addr) -> Result<TestAgent> {
        TestAgent::launch(options, ip, &[], Launcher::Direct)
    }

    /// An agent that starts inside the cgroups whose `cgroup.procs` files are given (it
    /// joins them between fork and exec), as a DaemonSet's agent runs in its pod's cgroup.
    pub fn start_in_cgroups(options: AgentOptions, cgroup_procs: &[PathBuf]) -> Result<TestAgent> {
        TestAgent::launch(
            options,
            std::net::Ipv4Addr::LOCALHOST,
            cgroup_procs,
            Launcher::Direct,
        )
    }

    /// An agent whose RLIMIT_NOFILE (soft and hard) is `limit`: started through
    /// util-linux's `prlimit`, which sets it and execs the agent (same pid).
    pub fn start_with_open_file_limit(options: AgentOptions, limit: u64) -> Result<TestAgent> {
        TestAgent::launch(
            options,
            std::net::Ipv4Addr::LOCALHOST,
            &[],
            Launcher::OpenFileLimit(limit),
        )
    }

    /// An agent (uid 0) holding only `capabilities` (setpriv names, e.g. `net_admin`) in
    /// its effective, permitted, inheritable, ambient and bounding sets: what
    /// `capabilities: {drop: [ALL], add: [...]}` gives a root container. Started through
    /// util-linux's `setpriv`, which sets them and execs the agent (same pid).
    pub fn start_with_capabilities(
        options: AgentOptions,
        capabilities: &[&str],
    ) -> Result<TestAgent> {
        TestAgent::launch(
            options,
            std::net::Ipv4Addr::LOCALHOST,
            &[],
            Launcher::Capabilities(capabilities.iter().map(|c| c.to_string()).collect()),
        )
    }

    /// Starts the agent on two free ports, again on two others if one was taken in the
    /// meantime: `free_port` releases its port before the agent binds it, so another test
    /// (nextest runs them as parallel processes) can take it first.
    fn launch(
        options: AgentOptions,
        ip: std::net::Ipv4Addr,
        cgroup_procs: &[PathBuf],
        launcher: Launcher,
    ) -> Result<TestAgent> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match TestAgent::launch_once(options.clone(), ip, cgroup_procs, launcher.clone()) {
                // EADDRINUSE: another process took the port between `free_port` and the
                // agent's bind. glibc says "Address already in use", musl (the image
                // binaries) "Address in use": matched by the errno.
                Err(e) if attempt < ATTEMPTS && format!("{e:#}").contains("(os error 98)") => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn launch_once(
        options: AgentOptions,
        ip: std::net::Ipv4Addr,
        cgroup_procs: &[PathBuf],
        launcher: Launcher,
    ) -> Result<TestAgent> {
        let grpc = SocketAddr::from((ip, free_port()?));
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log_path = options.state_dir.join(format!("agent-{}.log", grpc.port()));
        let log = std::fs::File::create(&log_path)?;
        let mut command = match launcher {
            Launcher::Direct => Command::new(binary("chaos-agent")?),
            Launcher::Capabilities(capabilities) => {
                let set: String = std::iter::once("-all".to_string())
                    .chain(capabilities.iter().map(|c| format!("+{c}")))
                    .collect::<Vec<_>>()
                    .join(",");
                let mut setpriv = Command::new("setpriv");
                setpriv
                    .arg(format!("--inh-caps={set}"))
                    .arg(format!("--ambient-caps={set}"))
                    .arg(format!("--bounding-set={set}"))
                    .arg("--")
                    .arg(binary("chaos-agent")?);
                setpriv
            }
            Launcher::OpenFileLimit(limit) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(binary("chaos-agent")?);
                prlimit
            }
        };
        command
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .arg("--state-dir")
            .arg(&options.state_dir)
            .arg("--node-name")
            .arg("test-node")
            // The node's namespaces, as PID 1 shows them on a real node: here the test's
            // own (PID 1 of this machine is a supervisor the agent may not read), unless
            // the test names a stand-in node of its own.
            .args(
                (!options.extra_args.iter().any(|arg| arg == "--node-pid"))
                    .then(|| ["--node-pid".to_string(), std::process::id().to_string()])
                    .into_iter()
                    .flatten(),
            )
            .arg("--containerd-socket")
            .arg(&options.containerd_socket)
            .arg("--containerd-namespace")
            .arg("k8s.io,default")
            .args(&options.extra_args)
            // The registry's phase times (debug) help read a failure and feed the bench.
            .env(
                "RUST_LOG",
                "info,chaos_agent::registry=debug,chaos_agent::faults::network=debug,chaos_agent::resolve=debug,chaos_agent::service=debug",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        match &options.tls_dir {
            Some(dir) => command.arg("--tls-dir").arg(dir),
            None => command.arg("--insecure-plaintext"),
        };
        if !cgroup_procs.is_empty() {
            let files = cgroup_procs.to_vec();
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe calls belong: this is
            // open, write and close (std puts a short path's C string on the stack).
            unsafe {
                command.pre_exec(move || {
                    for file in &files {
                        std::fs::write(file, b"0")?;
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().context("spawning chaos-agent")?;
        let mut agent = TestAgent {
            child: Some(child),
            options,
            grpc,
            metrics,
            log_path,
        };
        agent.wait_ready()?;
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Polls /readyz until the agent has replayed its journal and serves gRPC.
    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "chaos-agent exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if http_get(self.metrics, "/readyz").is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "chaos-agent not ready after {READY_TIMEOUT:?}:\n{}",
            self.log()
        )
    }

    pub fn address(&self) -> AgentAddress {
        AgentAddress {
            address: self.grpc.to_string(),
            tls_dir: self.options.tls_dir.clone(),
            plaintext: self.options.tls_dir.is_none(),
        }
    }

    pub async fn client(&self) -> Result<AgentClient<Channel>> {
        Ok(connect(&self.address()).await?)
    }

    pub fn scrape(&self) -> Result<String> {
        let (code, body) = http_get(self.metrics, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// SIGKILL, as a crash or an OOM kill would end it: no shutdown path runs.
    pub fn kill_hard(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("agent already stopped")?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                bail!("agent ignored SIGTERM for 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
    }
}

/// Injects `request` and returns the fault the agent answered with.
pub async fn inject_fault(
    client: &mut AgentClient<Channel>,
    request: chaos_proto::api::InjectRequest,
) -> Result<chaos_proto::api::Fault> {
    client
        .inject(request)
        .await?
        .into_inner()
        .fault
        .context("no fault in the answer")
}

/// After a restart on a journal that held a fault of `kind`: the agent lists it as
/// recovered (reverted at start).
pub async fn ensure_recovered(agent: &TestAgent, kind: chaos_proto::api::FaultKind) -> Result<()> {
    use chaos_proto::api;
    let faults = agent
        .client()
        .await?
        .list(api::ListRequest {
            include_ended: true,
        })
        .await?
        .into_inner()
        .faults;
    let recovered = faults
        .iter()
        .any(|f| f.state == api::FaultState::Recovered as i32 && f.kind == kind as i32);
    if !recovered {
        bail!("no recovered {kind:?} fault after the restart: {faults:?}");
    }
    Ok(())
}

/// Sends an Inject that must be refused; the status it was refused with.
pub async fn inject_refused(
    client: &AgentClient<Channel>,
    request: chaos_proto::api::InjectRequest,
) -> Result<tonic::Status> {
    let asked = format!("{request:?}");
    client
        .clone()
        .inject(request)
        .await
        .err()
        .with_context(|| format!("accepted: {asked}"))
}

/// Polls `Get` until fault `id` is in state `want`; fails after `within`, naming the
/// state it was in.
pub async fn wait_fault_state(
    agent: &TestAgent,
    id: &str,
    want: chaos_proto::api::FaultState,
    within: Duration,
) -> Result<chaos_proto::api::Fault> {
    let mut client = agent.client().await?;
    let started = Instant::now();
    loop {
        let fault = client
            .get(chaos_proto::api::GetRequest { id: id.into() })
            .await?
            .into_inner();
        if fault.state == want as i32 {
            return Ok(fault);
        }
        if started.elapsed() > within {
            bail!(
                "fault {id} is {:?}, not {want:?}, after {within:?}",
                fault.state
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.0 GET on loopback, returning status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A fresh agent state directory (journal and logs), removed when dropped.
pub fn state_dir() -> Result<TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("chaos-test-state-")
        .tempdir()?)
}

/// How many fault records the agent's journal under `state` holds.
pub fn journal_len(state: &Path) -> usize {
    std::fs::read_dir(state.join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Fails unless the agent reports a usable sch_netem: `vm_` tests need it, and on a kernel
/// without it they must fail, not pass by changing nothing.
pub async fn require_netem(agent: &TestAgent) -> Result<()> {
    let caps = agent
        .client()
        .await?
        .capabilities(chaos_proto::api::CapabilitiesRequest {})
        .await?
        .into_inner();
    let netem = caps.qdiscs.iter().find(|q| q.name == "netem");
    anyhow::ensure!(
        netem.is_some_and(|q| q.available),
        "this kernel has no usable sch_netem ({netem:?}): run vm_* tests in the Debian VM"
    );
    Ok(())
}
