//! The agents of an experiment: a static list or every address behind a headless
//! Service's DNS name, called in bounded parallel; and, when an experiment needs it,
//! the cluster's Kubernetes API beside them.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use chaos_proto::api;
use chaos_proto::api::agent_client::AgentClient;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::agents::client::{AgentAddress, connect};
use crate::agents::kube_api::KubeApi;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no agents: list them under agents.static or agents.dns")]
    NoAgents,
    #[error("cannot resolve {name}: {message}")]
    Dns { name: String, message: String },
    #[error("{0}")]
    Connect(String),
}

/// Where the agents are, as the experiment file's (and the controller configuration's)
/// `agents` section says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsSpec {
    /// HOST:PORT of every agent.
    #[serde(default, rename = "static")]
    pub static_agents: Vec<String>,
    /// The agents behind a headless Service: every address the name resolves to.
    #[serde(default)]
    pub dns: Option<DnsAgents>,
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// How many agents are called at once.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
}

impl Default for AgentsSpec {
    fn default() -> Self {
        AgentsSpec {
            static_agents: Vec::new(),
            dns: None,
            tls_dir: None,
            insecure_plaintext: false,
            parallelism: default_parallelism(),
        }
    }
}

fn default_parallelism() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsAgents {
    pub name: String,
    #[serde(default = "default_agent_port")]
    pub port: u16,
}

fn default_agent_port() -> u16 {
    7090
}

/// A container some agent reported.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub agent: usize,
    /// The node the agent runs on, as it reports it.
    pub node: String,
    pub info: api::TargetInfo,
}

/// Where the agents are and how to authenticate to them.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub addresses: Vec<String>,
    pub tls_dir: Option<PathBuf>,
    pub plaintext: bool,
    pub parallelism: usize,
}

impl FleetConfig {
    /// The experiment's agents; DNS names are resolved to every address now.
    pub async fn resolve(spec: &AgentsSpec) -> Result<FleetConfig, FleetError> {
        let mut addresses = spec.static_agents.clone();
        if let Some(dns) = &spec.dns {
            let found = tokio::net::lookup_host((dns.name.as_str(), dns.port))
                .await
                .map_err(|e| FleetError::Dns {
                    name: dns.name.clone(),
                    message: e.to_string(),
                })?;
            let mut resolved: Vec<String> = found.map(|a| a.to_string()).collect();
            resolved.sort();
            resolved.dedup();
            addresses.extend(resolved);
        }
        Ok(FleetConfig {
            addresses,
            tls_dir: spec.tls_dir.clone(),
            plaintext: spec.insecure_plaintext,
            parallelism: spec.parallelism.max(1),
        })
    }
}

/// Connected agents; `clients[i]` talks to `addresses[i]`.
#[derive(Clone)]
pub struct Fleet {
    pub addresses: Vec<String>,
    clients: Vec<AgentClient<Channel>>,
    limit: Arc<Semaphore>,
    /// Kubernetes API access for label and zone selection and pod deletion.
    kube: Option<KubeApi>,
}

impl Fleet {
    /// Connects to every agent; any agent that cannot be reached fails the whole fleet,
    /// naming each.
    pub async fn connect(config: &FleetConfig) -> Result<Fleet, FleetError> {
        if config.addresses.is_empty() {
            return Err(FleetError::NoAgents);
        }
        let limit = Arc::new(Semaphore::new(config.parallelism));
        let results = fan_out(&limit, config.addresses.clone(), |address| {
            let target = AgentAddress {
                address,
                tls_dir: config.tls_dir.clone(),
                plaintext: config.plaintext,
            };
            async move { connect(&target).await }
        })
        .await;
        let mut clients = Vec::new();
        let mut problems = Vec::new();
        for result in results {
            match result {
                Ok(client) => clients.push(client),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(FleetError::Connect(problems.join("; ")));
        }
        Ok(Fleet {
            addresses: config.addresses.clone(),
            clients,
            limit,
            kube: None,
        })
    }

    /// The same agents, with Kubernetes API access.
    pub fn with_kube_api(mut self, kube: KubeApi) -> Fleet {
        self.kube = Some(kube);
        self
    }

    pub fn kube_api(&self) -> Option<&KubeApi> {
        self.kube.as_ref()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn client(&self, agent: usize) -> Option<AgentClient<Channel>> {
        self.clients.get(agent).cloned()
    }

    /// Every container of every agent.
    pub async fn candidates(&self) -> Result<Vec<Candidate>, FleetError> {
        let answers = fan_out(&self.limit, (0..self.len()).collect(), |agent| {
            let client = self.clients[agent].clone();
            async move {
                let mut client = client;
                client
                    .list_targets(api::ListTargetsRequest::default())
                    .await
                    .map(|r| (agent, r.into_inner()))
            }
        })
        .await;
        let mut candidates = Vec::new();
        for answer in answers {
            let (agent, listed) = answer.map_err(|s| {
                FleetError::Connect(format!("ListTargets: {:?}: {}", s.code(), s.message()))
            })?;
            let node = listed.node_name;
            candidates.extend(listed.targets.into_iter().map(|info| Candidate {
                agent,
                node: node.clone(),
                info,
            }));
        }
        Ok(candidates)
    }

    /// Sends each request to its agent, at most `parallelism` at once; answers in order.
    pub async fn inject_all(
        &self,
        requests: Vec<(usize, api::InjectRequest)>,
    ) -> Vec<Result<api::Fault, tonic::Status>> {
        fan_out(&self.limit, requests, |(agent, request)| {
            let client = self.client(agent);
            async move {
                let mut client = client.ok_or_else(|| tonic::Status::not_found("no such agent"))?;
                client
                    .inject(request)
                    .await?
                    .into_inner()
                    .fault
                    .ok_or_else(|| tonic::Status::internal("the agent answered without a fault"))
            }
        })
        .await
    }

    /// Reads each (agent, fault id) back: its state and what the agent measured.
    pub async fn get_all(&self, faults: Vec<(usize, String)>) -> Vec<Result<api::Fault, String>> {
        fan_out(&self.limit, faults, |(agent, id)| {
            let client = self.client(agent);
            async move {
                let mut client = client.ok_or("no such agent")?;
                client
                    .get(api::GetRequest { id: id.clone() })
                    .await
                    .map(|answer| answer.into_inner())
                    .map_err(|s| format!("get {id}: {:?}: {}", s.code(), s.message()))
            }
        })
        .await
    }

    /// Reverts each (agent, fault id); a fault that already ended counts as reverted.
    pub async fn revert_all(&self, faults: Vec<(usize, String)>) -> Vec<Result<(), String>> {
        fan_out(&self.limit, faults, |(agent, id)| {
            let client = self.client(agent);
            async move {
                let mut client = client.ok_or("no such agent")?;
                match client
                    .revert(api::RevertRequest {
                        id: id.clone(),
                        all: false,
                    })
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => Ok(()),
                    Err(s) => Err(format!("revert {id}: {:?}: {}", s.code(), s.message())),
                }
            }
        })
        .await
    }

    /// Renews the run's lease on the given agents; returns the failures.
    pub async fn renew_lease(&self, agents: &[usize], holder: &str, ttl_ms: u64) -> Vec<String> {
        let results = fan_out(&self.limit, agents.to_vec(), |agent| {
            let client = self.client(agent);
            let holder = holder.to_string();
            async move {
                let mut client = client.ok_or("no such agent".to_string())?;
                client
                    .renew_lease(api::RenewLeaseRequest { holder, ttl_ms })
                    .await
                    .map(drop)
                    .map_err(|s| format!("agent {agent}: {:?}: {}", s.code(), s.message()))
            }
        })
        .await;
        results.into_iter().filter_map(Result::err).collect()
    }
}

/// Runs `call` for every item, at most as many at once as the semaphore has permits;
/// the results keep the order of the items.
pub async fn fan_out<I, T, F, Fut>(limit: &Arc<Semaphore>, items: Vec<I>, call: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = T>,
{
    let calls = items.into_iter().map(|item| {
        let limit = Arc::clone(limit);
        let future = call(item);
        async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = limit.acquire_owned().await;
            future.await
        }
    });
    futures::future::join_all(calls).await
}
