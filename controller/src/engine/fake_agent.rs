//! An agent inside the test process, for the runner's lifecycle tests: a real tonic
//! server on loopback (plain text) that answers from a [`Script`] and records every call,
//! beside a TCP service standing in for the system under test, whose port a scripted
//! kill closes for a while. The runner, its fleet client and its probes are the real
//! ones; only what happens on a node is played.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos_proto::api;
use chaos_proto::api::agent_server::{Agent, AgentServer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::engine::task::AbortOnDrop;

/// How the fake agent answers.
#[derive(Default)]
pub struct Script {
    /// What ListTargets reports (pods in namespace `shop` by [`pod_target`]).
    pub targets: Vec<api::TargetInfo>,
    /// Injects into these targets are refused with FailedPrecondition.
    pub refuse_inject: Vec<String>,
    /// Reverts of faults on these targets fail with Internal.
    pub refuse_revert: Vec<String>,
    /// A process fault (a kill) closes the service's port for this long.
    pub kill_outage: Duration,
    /// What Get reports for a CPU fault (what the agent measured).
    pub cpu_status: Option<api::CpuStatus>,
}

/// A call the runner made, as the agent saw it.
#[derive(Debug, Clone)]
pub enum Call {
    Inject {
        target: String,
        kind: &'static str,
        lease: Option<api::Lease>,
        at: Instant,
    },
    Revert {
        id: String,
    },
    Get,
    RenewLease {
        holder: String,
        ttl_ms: u64,
        at: Instant,
    },
    ListTargets,
    Capabilities,
    List,
}

/// A container of pod `shop/NAME`, as an agent's ListTargets reports it.
pub fn pod_target(name: &str) -> api::TargetInfo {
    api::TargetInfo {
        container: Some(api::ContainerRef {
            id: format!("{name}-id"),
            runtime_namespace: "k8s.io".into(),
            pod_namespace: "shop".into(),
            pod_name: name.into(),
            container_name: "web".into(),
        }),
        init_pid: 4242,
        pids: vec![4242],
        state: "running".into(),
        cgroup: format!("/kubepods/{name}"),
        target: format!("container:{name}-id"),
        ..Default::default()
    }
}

struct State {
    script: Script,
    calls: Vec<Call>,
    faults: HashMap<String, api::Fault>,
    next_id: u64,
}

#[derive(Clone)]
struct FakeAgentService {
    state: Arc<Mutex<State>>,
    outages: mpsc::UnboundedSender<Duration>,
}

impl FakeAgentService {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A test thread that panicked while holding it leaves nothing worth guarding.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn kind_of(fault: Option<&api::inject_request::Fault>) -> (&'static str, api::FaultKind) {
    use api::inject_request::Fault;
    match fault {
        Some(Fault::Cpu(_)) => ("cpu", api::FaultKind::Cpu),
        Some(Fault::Memory(_)) => ("memory", api::FaultKind::Memory),
        Some(Fault::Network(_)) => ("network", api::FaultKind::Network),
        Some(Fault::Process(_)) => ("process", api::FaultKind::Process),
        Some(Fault::Blackhole(_)) => ("blackhole", api::FaultKind::Blackhole),
        Some(_) => ("other", api::FaultKind::Unspecified),
        None => ("none", api::FaultKind::Unspecified),
    }
}

#[tonic::async_trait]
impl Agent for FakeAgentService {
    async fn inject(
        &self,
        request: Request<api::InjectRequest>,
    ) -> Result<Response<api::InjectResponse>, Status> {
        let request = request.into_inner();
        let (kind, fault_kind) = kind_of(request.fault.as_ref());
        let mut state = self.state();
        state.calls.push(Call::Inject {
            target: request.target.clone(),
            kind,
            lease: request.lease.clone(),
            at: Instant::now(),
        });
        if state.script.refuse_inject.contains(&request.target) {
            return Err(Status::failed_precondition(format!(
                "scripted refusal of {}",
                request.target
            )));
        }
        state.next_id += 1;
        let id = format!("fake-{}", state.next_id);
        let status = match kind {
            "cpu" => state.script.cpu_status.map(api::fault::Status::Cpu),
            _ => None,
        };
        let fault = api::Fault {
            id: id.clone(),
            kind: fault_kind as i32,
            target: request.target.clone(),
            state: api::FaultState::Active as i32,
            lease_holder: request
                .lease
                .as_ref()
                .map(|l| l.holder.clone())
                .unwrap_or_default(),
            request: Some(request),
            status,
            ..Default::default()
        };
        if kind == "process" && !state.script.kill_outage.is_zero() {
            let _ = self.outages.send(state.script.kill_outage);
        }
        state.faults.insert(id, fault.clone());
        Ok(Response::new(api::InjectResponse { fault: Some(fault) }))
    }

    async fn revert(
        &self,
        request: Request<api::RevertRequest>,
    ) -> Result<Response<api::RevertResponse>, Status> {
        let id = request.into_inner().id;
        let mut state = self.state();
        state.calls.push(Call::Revert { id: id.clone() });
        let refused = state.script.refuse_revert.clone();
        let fault = state
            .faults
            .get_mut(&id)
            .ok_or_else(|| Status::not_found(format!("no fault {id}")))?;
        if refused.contains(&fault.target) {
            return Err(Status::internal(format!(
                "scripted revert failure on {}",
                fault.target
            )));
        }
        fault.state = api::FaultState::Reverted as i32;
        Ok(Response::new(api::RevertResponse {
            reverted: vec![fault.clone()],
        }))
    }

    async fn list(
        &self,
        _request: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        let mut state = self.state();
        state.calls.push(Call::List);
        Ok(Response::new(api::ListResponse {
            faults: state.faults.values().cloned().collect(),
        }))
    }

    async fn get(&self, request: Request<api::GetRequest>) -> Result<Response<api::Fault>, Status> {
        let id = request.into_inner().id;
        let mut state = self.state();
        state.calls.push(Call::Get);
        state
            .faults
            .get(&id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no fault {id}")))
    }

    async fn capabilities(
        &self,
        _request: Request<api::CapabilitiesRequest>,
    ) -> Result<Response<api::CapabilitiesResponse>, Status> {
        self.state().calls.push(Call::Capabilities);
        Ok(Response::new(api::CapabilitiesResponse::default()))
    }

    async fn list_targets(
        &self,
        _request: Request<api::ListTargetsRequest>,
    ) -> Result<Response<api::ListTargetsResponse>, Status> {
        let mut state = self.state();
        state.calls.push(Call::ListTargets);
        Ok(Response::new(api::ListTargetsResponse {
            targets: state.script.targets.clone(),
            node_name: "fake-node".into(),
        }))
    }

    async fn renew_lease(
        &self,
        request: Request<api::RenewLeaseRequest>,
    ) -> Result<Response<api::RenewLeaseResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state();
        state.calls.push(Call::RenewLease {
            holder: request.holder.clone(),
            ttl_ms: request.ttl_ms,
            at: Instant::now(),
        });
        let active = api::FaultState::Active as i32;
        let held = state
            .faults
            .values()
            .filter(|f| f.lease_holder == request.holder && f.state == active)
            .count();
        Ok(Response::new(api::RenewLeaseResponse {
            faults: held as u32,
            expires_unix_ms: 0,
        }))
    }
}

/// The fake agent and its service; both stop when it is dropped.
pub struct FakeAgent {
    /// HOST:PORT of the gRPC server.
    pub address: String,
    /// HOST:PORT of the service that a kill takes down.
    pub service: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: AbortOnDrop,
    _service: AbortOnDrop,
}

impl FakeAgent {
    pub async fn start(script: Script) -> std::io::Result<FakeAgent> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let service_listener = TcpListener::bind("127.0.0.1:0").await?;
        let service = service_listener.local_addr()?;
        let (outages, outage_orders) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(State {
            script,
            calls: Vec::new(),
            faults: HashMap::new(),
            next_id: 0,
        }));
        let agent = FakeAgentService {
            state: state.clone(),
            outages,
        };
        let server = AbortOnDrop::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AgentServer::new(agent))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        let service_task = AbortOnDrop::spawn(run_service(service_listener, outage_orders));
        Ok(FakeAgent {
            address,
            service,
            state,
            _server: server,
            _service: service_task,
        })
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The faults still active on this agent.
    pub fn active_faults(&self) -> Vec<api::Fault> {
        let active = api::FaultState::Active as i32;
        self.lock()
            .faults
            .values()
            .filter(|f| f.state == active)
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Accepts connections (and drops them: a TCP probe only connects) until told to go
/// down; then the port is closed for that long and bound again.
async fn run_service(mut listener: TcpListener, mut outages: mpsc::UnboundedReceiver<Duration>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if accepted.is_err() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            order = outages.recv() => {
                let Some(down_for) = order else { return };
                let Ok(address) = listener.local_addr() else { return };
                drop(listener);
                tokio::time::sleep(down_for).await;
                listener = match rebind(address) {
                    Ok(listener) => listener,
                    Err(_) => return,
                };
            }
        }
    }
}

fn rebind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // The closed listener's accepted connections may linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(128)
}
