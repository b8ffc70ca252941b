//! Fan-out benchmark: N simulated agents (in-process tonic servers on loopback,
//! plaintext, Inject answers a Fault at once); the controller's Fleet injects into all
//! of them per round and the wall time of each round is printed with p50/p99.
//! `cargo run --release -p chaosctl --example fanout -- [AGENTS] [ROUNDS] [PARALLELISM]`

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chaos_proto::api;
use chaos_proto::api::agent_server::{Agent, AgentServer};
use chaosctl::agents::fleet::{Fleet, FleetConfig};
use tonic::{Request, Response, Status};

/// Answers every call at once; Inject echoes a fault.
struct SimulatedAgent;

#[tonic::async_trait]
impl Agent for SimulatedAgent {
    async fn inject(
        &self,
        request: Request<api::InjectRequest>,
    ) -> Result<Response<api::InjectResponse>, Status> {
        let request = request.into_inner();
        let fault = api::Fault {
            id: "simulated".into(),
            target: request.target.clone(),
            state: api::FaultState::Active as i32,
            request: Some(request),
            ..Default::default()
        };
        Ok(Response::new(api::InjectResponse { fault: Some(fault) }))
    }
    async fn revert(
        &self,
        _: Request<api::RevertRequest>,
    ) -> Result<Response<api::RevertResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn list(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn get(&self, _: Request<api::GetRequest>) -> Result<Response<api::Fault>, Status> {
        Err(Status::not_found("simulated agent"))
    }
    async fn capabilities(
        &self,
        _: Request<api::CapabilitiesRequest>,
    ) -> Result<Response<api::CapabilitiesResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn list_targets(
        &self,
        _: Request<api::ListTargetsRequest>,
    ) -> Result<Response<api::ListTargetsResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn renew_lease(
        &self,
        _: Request<api::RenewLeaseRequest>,
    ) -> Result<Response<api::RenewLeaseResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
}

fn arg(index: usize, default: usize) -> Result<usize> {
    match std::env::args().nth(index) {
        Some(text) => text
            .parse()
            .with_context(|| format!("argument {index}: `{text}`")),
        None => Ok(default),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<()> {
    let (agents, rounds, parallelism) = (arg(1, 500)?, arg(2, 10)?, arg(3, 64)?);
    let mut addresses = Vec::with_capacity(agents);
    for _ in 0..agents {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addresses.push(listener.local_addr()?.to_string());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(SimulatedAgent))
                .serve_with_incoming(incoming),
        );
    }
    let config = FleetConfig {
        addresses,
        tls_dir: None,
        plaintext: true,
        parallelism,
    };
    let connect_started = Instant::now();
    let fleet = Fleet::connect(&config).await?;
    println!(
        "connected {agents} agents in {:?}",
        connect_started.elapsed()
    );

    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let requests = (0..fleet.len())
            .map(|agent| {
                (
                    agent,
                    api::InjectRequest {
                        target: format!("pid:{}", agent + 1),
                        duration_ms: 1_000,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let started = Instant::now();
        let answers = fleet.inject_all(requests).await;
        let took = started.elapsed();
        let failed = answers.iter().filter(|a| a.is_err()).count();
        anyhow::ensure!(failed == 0, "round {round}: {failed} injects failed");
        println!("round {round}: {agents} injects in {took:?}");
        times.push(took);
    }
    times.sort();
    println!(
        "agents={agents} rounds={rounds} parallelism={parallelism} p50={:?} p99={:?} max={:?}",
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times[times.len() - 1]
    );
    Ok(())
}
