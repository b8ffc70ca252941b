//! The gRPC service: translates requests to registry calls and errors to statuses.
//! Every call is made by a caller the client certificate names (see `authz`); every
//! mutating call and every refusal is one `audit` log line.

use std::sync::Arc;

use chaos_proto::api::{self, agent_server::Agent};
use tonic::{Request, Response, Status};

use crate::authz::{Access, Caller, audit, peer};
use crate::capabilities;
use crate::faults::{KINDS, missing_capabilities};
use crate::registry::Registry;
use crate::validate::{validate_fault_id, validate_pod_namespace_filter, validate_revert};

pub struct AgentService {
    pub registry: Arc<Registry>,
    pub node_name: String,
    pub version: String,
    pub cgroup_version: String,
    pub cgroup_controllers: Vec<String>,
    pub qdiscs: Vec<api::QdiscSupport>,
    pub access: Access,
}

impl AgentService {
    /// Every role may read; a refusal here is a caller without an identity.
    fn viewer<T>(&self, request: &Request<T>, method: &str) -> Result<Caller, Status> {
        self.access.caller(request).inspect_err(|status| {
            audit(&peer(request), None, method, "", "", Err(status));
        })
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn inject(
        &self,
        request: Request<api::InjectRequest>,
    ) -> Result<Response<api::InjectResponse>, Status> {
        let peer = peer(&request);
        let target = request.get_ref().target.clone();
        let caller = match self.access.caller(&request) {
            Ok(caller) => caller,
            Err(status) => {
                audit(&peer, None, "Inject", &target, "", Err(&status));
                return Err(status);
            }
        };
        let started = std::time::Instant::now();
        match self.registry.inject(request.into_inner(), &caller).await {
            Ok(fault) => {
                let injected_at = started.elapsed();
                audit(&peer, Some(&caller), "Inject", &target, &fault.id, Ok(()));
                tracing::info!(%peer, fault = %fault.id, %target, deadline_unix_ms = fault.deadline_unix_ms, "inject");
                // The whole request on the server, up to the answer's encoding: the
                // registry's part, then the audit and log lines.
                tracing::debug!(
                    registry_us = injected_at.as_micros() as u64,
                    log_us = (started.elapsed() - injected_at).as_micros() as u64,
                    "inject request phases"
                );
                Ok(Response::new(api::InjectResponse { fault: Some(fault) }))
            }
            Err(err) => {
                let status = Status::from(err);
                audit(&peer, Some(&caller), "Inject", &target, "", Err(&status));
                Err(status)
            }
        }
    }

    async fn revert(
        &self,
        request: Request<api::RevertRequest>,
    ) -> Result<Response<api::RevertResponse>, Status> {
        let peer = peer(&request);
        let asked = if request.get_ref().all {
            "all".to_string()
        } else {
            request.get_ref().id.clone()
        };
        let caller = match self.access.caller(&request) {
            Ok(caller) => caller,
            Err(status) => {
                audit(&peer, None, "Revert", "", &asked, Err(&status));
                return Err(status);
            }
        };
        let started = std::time::Instant::now();
        let result = match validate_revert(request.get_ref()) {
            Err(err) => Err(Status::from(err)),
            Ok(Some(id)) => self
                .registry
                .revert(&id, &caller)
                .await
                .map(|f| vec![f])
                .map_err(Status::from),
            Ok(None) => self
                .registry
                .revert_all_of(&caller)
                .await
                .map_err(Status::from),
        };
        let reverted_at = started.elapsed();
        match result {
            Ok(reverted) => {
                for fault in &reverted {
                    audit(
                        &peer,
                        Some(&caller),
                        "Revert",
                        &fault.target,
                        &fault.id,
                        Ok(()),
                    );
                }
                tracing::info!(%peer, count = reverted.len(), "revert");
                tracing::debug!(
                    registry_us = reverted_at.as_micros() as u64,
                    log_us = (started.elapsed() - reverted_at).as_micros() as u64,
                    "revert request phases"
                );
                Ok(Response::new(api::RevertResponse { reverted }))
            }
            Err(status) => {
                audit(&peer, Some(&caller), "Revert", "", &asked, Err(&status));
                Err(status)
            }
        }
    }

    async fn list(
        &self,
        request: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        self.viewer(&request, "List")?;
        let faults = self.registry.list(request.get_ref().include_ended);
        Ok(Response::new(api::ListResponse { faults }))
    }

    async fn get(&self, request: Request<api::GetRequest>) -> Result<Response<api::Fault>, Status> {
        self.viewer(&request, "Get")?;
        validate_fault_id(&request.get_ref().id, "id")?;
        Ok(Response::new(self.registry.get(&request.get_ref().id)?))
    }

    async fn capabilities(
        &self,
        request: Request<api::CapabilitiesRequest>,
    ) -> Result<Response<api::CapabilitiesResponse>, Status> {
        self.viewer(&request, "Capabilities")?;
        let policy = self.registry.policy();
        let limits = self.registry.limits();
        Ok(Response::new(api::CapabilitiesResponse {
            node_name: self.node_name.clone(),
            kernel_release: capabilities::kernel_release(),
            agent_version: self.version.clone(),
            cgroup_version: self.cgroup_version.clone(),
            cgroup_controllers: self.cgroup_controllers.clone(),
            qdiscs: self.qdiscs.clone(),
            runtime: Some(
                capabilities::runtime_info(self.registry.resolver().runtime.as_ref()).await,
            ),
            protection: Some(api::ProtectionPolicy {
                allow_kube_system: policy.allow_kube_system,
                allow_host_processes: policy.allow_host_processes,
                protected_process_names: policy.protected_processes.clone(),
                protected_namespaces: policy.protected_namespaces.clone(),
            }),
            supported_kinds: KINDS.iter().map(|info| info.kind as i32).collect(),
            max_duration_ms: limits.max_duration.as_millis() as u64,
            node_scope_allowed: limits.allow_node_scope,
            held_capabilities: capabilities::held_names(self.registry.capabilities()),
            kind_privileges: KINDS
                .iter()
                .map(|info| {
                    let missing = missing_capabilities(info.kind, self.registry.capabilities());
                    let unavailable =
                        (info.node_lacks)(&self.registry.resolver().cgroups).unwrap_or_default();
                    api::KindPrivilege {
                        kind: info.kind as i32,
                        usable: missing.is_empty() && unavailable.is_empty(),
                        missing_capabilities: missing,
                        unavailable,
                    }
                })
                .collect(),
        }))
    }

    async fn list_targets(
        &self,
        request: Request<api::ListTargetsRequest>,
    ) -> Result<Response<api::ListTargetsResponse>, Status> {
        self.viewer(&request, "ListTargets")?;
        let ns = &request.get_ref().pod_namespace;
        validate_pod_namespace_filter(ns)?;
        let targets = self.registry.resolver().list_targets(ns).await?;
        Ok(Response::new(api::ListTargetsResponse {
            targets,
            node_name: self.node_name.clone(),
        }))
    }

    async fn renew_lease(
        &self,
        request: Request<api::RenewLeaseRequest>,
    ) -> Result<Response<api::RenewLeaseResponse>, Status> {
        let peer = peer(&request);
        let holder = request.get_ref().holder.clone();
        let caller = match self.access.caller(&request) {
            Ok(caller) => caller,
            Err(status) => {
                audit(&peer, None, "RenewLease", &holder, "", Err(&status));
                return Err(status);
            }
        };
        // Renewals run every few seconds per run: only refusals are audited (a
        // renewal of another's lease is always one).
        match self
            .registry
            .renew_lease(&holder, request.get_ref().ttl_ms, &caller)
        {
            Ok(renewed) => Ok(Response::new(renewed)),
            Err(err) => {
                let status = Status::from(err);
                audit(
                    &peer,
                    Some(&caller),
                    "RenewLease",
                    &holder,
                    "",
                    Err(&status),
                );
                Err(status)
            }
        }
    }
}
