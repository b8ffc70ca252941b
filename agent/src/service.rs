//! The gRPC service: translates requests to registry calls and errors to statuses.
//! Every mutating call is logged with the caller's address.

use std::sync::Arc;

use chaos_proto::api::{self, agent_server::Agent};
use tonic::{Request, Response, Status};

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
}

fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn inject(
        &self,
        request: Request<api::InjectRequest>,
    ) -> Result<Response<api::InjectResponse>, Status> {
        let peer = peer(&request);
        let inner = request.into_inner();
        let target = inner.target.clone();
        match self.registry.inject(inner).await {
            Ok(fault) => {
                tracing::info!(%peer, fault = %fault.id, %target, deadline_unix_ms = fault.deadline_unix_ms, "inject");
                Ok(Response::new(api::InjectResponse { fault: Some(fault) }))
            }
            Err(err) => {
                tracing::info!(%peer, %target, error = %err, "inject refused");
                Err(err.into())
            }
        }
    }

    async fn revert(
        &self,
        request: Request<api::RevertRequest>,
    ) -> Result<Response<api::RevertResponse>, Status> {
        let peer = peer(&request);
        let reverted = match validate_revert(request.get_ref())? {
            Some(id) => vec![self.registry.revert(&id).await?],
            None => {
                self.registry
                    .revert_all(crate::registry::EndReason::Requested)
                    .await
            }
        };
        tracing::info!(%peer, count = reverted.len(), "revert");
        Ok(Response::new(api::RevertResponse { reverted }))
    }

    async fn list(
        &self,
        request: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        let faults = self.registry.list(request.get_ref().include_ended);
        Ok(Response::new(api::ListResponse { faults }))
    }

    async fn get(&self, request: Request<api::GetRequest>) -> Result<Response<api::Fault>, Status> {
        validate_fault_id(&request.get_ref().id, "id")?;
        Ok(Response::new(self.registry.get(&request.get_ref().id)?))
    }

    async fn capabilities(
        &self,
        _request: Request<api::CapabilitiesRequest>,
    ) -> Result<Response<api::CapabilitiesResponse>, Status> {
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
            supported_kinds: vec![
                api::FaultKind::Process as i32,
                api::FaultKind::Network as i32,
                api::FaultKind::Cpu as i32,
                api::FaultKind::Memory as i32,
            ],
            max_duration_ms: limits.max_duration.as_millis() as u64,
            node_scope_allowed: limits.allow_node_scope,
            held_capabilities: capabilities::held_names(self.registry.capabilities()),
            kind_privileges: KINDS
                .iter()
                .map(|kind| {
                    let missing = missing_capabilities(*kind, self.registry.capabilities());
                    api::KindPrivilege {
                        kind: *kind as i32,
                        usable: missing.is_empty(),
                        missing_capabilities: missing,
                    }
                })
                .collect(),
        }))
    }

    async fn list_targets(
        &self,
        request: Request<api::ListTargetsRequest>,
    ) -> Result<Response<api::ListTargetsResponse>, Status> {
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
        let r = request.get_ref();
        Ok(Response::new(
            self.registry.renew_lease(&r.holder, r.ttl_ms)?,
        ))
    }
}
