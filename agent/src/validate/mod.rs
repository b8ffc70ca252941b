//! Full validation of requests before anything on the node is touched. Pure: every
//! check here is unit-tested without root. A refused field is named in the error.
//!
//! Here is what every request shares: the agent's [`Limits`], the [`FaultPlan`] a valid
//! Inject carries, leases, labels, fault ids, Revert and the pod-namespace filter, and
//! [`validate_inject`], which hands each kind's fields to that kind's validator. Each
//! kind's plan, its validator and their tests are in the kind's module: `process`
//! ([`ProcessPlan`]), `cpu` ([`CpuPlan`]), `memory` ([`MemoryPlan`]), `network`
//! ([`NetworkPlan`]), `blackhole` ([`BlackholePlan`]) and `pause` ([`PausePlan`]); `targeting` holds what network
//! and blackhole share (destinations, ports, interface, the filter count, and
//! [`NodeNetworkPolicy`]). Every public item is re-exported here, as `validate::NAME`.
//! A new kind adds its module, its variant of [`FaultPlan`] and its arm in
//! [`validate_inject`].

mod blackhole;
mod cpu;
mod disk_fill;
mod dns;
mod io;
mod io_stress;
mod memory;
mod network;
mod pause;
mod process;
mod targeting;
#[cfg(test)]
mod tests;

pub use blackhole::BlackholePlan;
pub use cpu::CpuPlan;
pub use disk_fill::{DEFAULT_DISK_FILL_MIN_FREE_PERCENT, DiskFillPlan, FillAmount};
pub use dns::DnsPlan;
pub use io::{IoDevices, IoPlan, MIN_BYTES_PER_SECOND, validate_io};
pub use io_stress::{
    DEFAULT_IO_STRESS_FILE_BYTES, IoStressPlan, MAX_IO_STRESS_WORKERS,
    MIN_IO_STRESS_BYTES_PER_SECOND, MIN_IO_STRESS_FILE_BYTES,
};
pub use memory::{MemoryAmount, MemoryPlan};
pub use network::{MAX_RATE_BYTES_PER_SECOND, NetworkPlan};
pub use pause::PausePlan;
pub use process::{ProcessPlan, is_stop_signal, parse_signal, signal_name};
pub use targeting::{Cidr, NodeNetworkPolicy};

use std::collections::HashMap;
use std::time::Duration;

use chaos_proto::api;

use crate::error::AgentError;
use crate::target::TargetSpec;

use blackhole::validate_blackhole;
use cpu::validate_cpu;
use memory::validate_memory;
use network::validate_network;
use pause::validate_pause;
use process::validate_process;

/// Agent-wide limits that validation enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_duration: Duration,
    pub allow_node_scope: bool,
    /// The agent's own gRPC port: a node-scope blackhole always leaves it reachable.
    pub agent_port: u16,
    /// Stressor threads (CPU workers, memory stressors) all faults together may run.
    pub max_stressor_threads: u32,
    /// The most of the node's MemAvailable a memory fault may hold (percent).
    pub max_memory_fill_percent_of_available: u32,
    /// What a disk fill leaves available of a filesystem the node has mounted (percent).
    pub disk_fill_min_free_percent: u32,
    /// The process whose mount namespace is the node's (1 with hostPID).
    pub node_pid: u32,
}

/// `--max-memory-fill-percent-of-available`'s default: half of what the node has free
/// leaves the other half to the workloads and the kernel while a fault holds its memory.
pub const DEFAULT_MAX_MEMORY_FILL_PERCENT_OF_AVAILABLE: u32 = 50;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_duration: Duration::from_secs(3600),
            allow_node_scope: false,
            agent_port: 7090,
            max_stressor_threads: 64,
            max_memory_fill_percent_of_available: DEFAULT_MAX_MEMORY_FILL_PERCENT_OF_AVAILABLE,
            disk_fill_min_free_percent: DEFAULT_DISK_FILL_MIN_FREE_PERCENT,
            node_pid: 1,
        }
    }
}

/// Shortest lease (as `process::MIN_INTERVAL` is the shortest repeat interval); anything
/// tighter is a busy loop, not a fault.
const MIN_LEASE_TTL: Duration = Duration::from_millis(500);
const MAX_LABELS: usize = 32;

/// What a valid request asks for, per fault kind.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultPlan {
    Process(ProcessPlan),
    Cpu(CpuPlan),
    Memory(MemoryPlan),
    Network(NetworkPlan),
    Blackhole(BlackholePlan),
    Pause(PausePlan),
    Io(IoPlan),
    DiskFill(DiskFillPlan),
    IoStress(IoStressPlan),
    Dns(DnsPlan),
}

impl FaultPlan {
    /// A stressor in the target's cgroup: its load is bounded by that cgroup's limits.
    pub fn is_resource_stress(&self) -> bool {
        matches!(
            self,
            FaultPlan::Cpu(_) | FaultPlan::Memory(_) | FaultPlan::IoStress(_)
        )
    }

    pub fn kind(&self) -> api::FaultKind {
        match self {
            FaultPlan::Process(_) => api::FaultKind::Process,
            FaultPlan::Cpu(_) => api::FaultKind::Cpu,
            FaultPlan::Memory(_) => api::FaultKind::Memory,
            FaultPlan::Network(_) => api::FaultKind::Network,
            FaultPlan::Blackhole(_) => api::FaultKind::Blackhole,
            FaultPlan::Pause(_) => api::FaultKind::Pause,
            FaultPlan::Io(_) => api::FaultKind::Io,
            FaultPlan::DiskFill(_) => api::FaultKind::DiskFill,
            FaultPlan::IoStress(_) => api::FaultKind::IoStress,
            FaultPlan::Dns(_) => api::FaultKind::Dns,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseSpec {
    pub holder: String,
    pub ttl: Duration,
}

/// An Inject request that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidInject {
    pub target: TargetSpec,
    /// Zero only for one-shot actions (a single kill).
    pub duration: Duration,
    pub plan: FaultPlan,
    pub lease: Option<LeaseSpec>,
    pub dry_run: bool,
    pub labels: HashMap<String, String>,
}

pub fn validate_inject(
    req: &api::InjectRequest,
    limits: &Limits,
) -> Result<ValidInject, AgentError> {
    let target = TargetSpec::parse(&req.target)?;
    let duration = Duration::from_millis(req.duration_ms);
    if duration > limits.max_duration {
        return Err(AgentError::invalid(
            "duration_ms",
            format!(
                "{} ms exceeds this agent's maximum of {} ms",
                req.duration_ms,
                limits.max_duration.as_millis()
            ),
        ));
    }
    let Some(fault) = &req.fault else {
        return Err(AgentError::invalid(
            "fault",
            "is missing; set one of cpu, memory, network, process, blackhole, pause, io, disk_fill, io_stress, dns",
        ));
    };
    let plan = match fault {
        api::inject_request::Fault::Process(p) => {
            FaultPlan::Process(validate_process(p, duration)?)
        }
        api::inject_request::Fault::Cpu(c) => {
            require_duration(duration)?;
            FaultPlan::Cpu(validate_cpu(c)?)
        }
        api::inject_request::Fault::Memory(m) => {
            require_duration(duration)?;
            FaultPlan::Memory(validate_memory(m, duration, limits)?)
        }
        api::inject_request::Fault::Network(n) => {
            require_duration(duration)?;
            FaultPlan::Network(validate_network(n, limits)?)
        }
        api::inject_request::Fault::Blackhole(b) => {
            require_duration(duration)?;
            FaultPlan::Blackhole(validate_blackhole(b, limits)?)
        }
        api::inject_request::Fault::Pause(_) => {
            require_duration(duration)?;
            FaultPlan::Pause(validate_pause(&target)?)
        }
        api::inject_request::Fault::DiskFill(fill) => {
            require_duration(duration)?;
            FaultPlan::DiskFill(disk_fill::validate_disk_fill(fill, &target, limits)?)
        }
        api::inject_request::Fault::Io(io) => {
            require_duration(duration)?;
            FaultPlan::Io(validate_io(io, &target)?)
        }
        api::inject_request::Fault::IoStress(stress) => {
            require_duration(duration)?;
            FaultPlan::IoStress(io_stress::validate_io_stress(stress, &target, limits)?)
        }
        api::inject_request::Fault::Dns(dns) => {
            require_duration(duration)?;
            FaultPlan::Dns(dns::validate_dns(dns)?)
        }
    };
    let lease = req
        .lease
        .as_ref()
        .map(|l| validate_lease(&l.holder, l.ttl_ms, limits, "lease"))
        .transpose()?;
    validate_labels(&req.labels)?;
    Ok(ValidInject {
        target,
        duration,
        plan,
        lease,
        dry_run: req.dry_run,
        labels: req.labels.clone(),
    })
}

fn require_duration(duration: Duration) -> Result<(), AgentError> {
    if duration.is_zero() {
        Err(AgentError::invalid(
            "duration_ms",
            "is required for this fault kind (every fault holding state ends at a deadline)",
        ))
    } else {
        Ok(())
    }
}

/// Lease holders name the controller instance; keep them printable and short.
pub fn validate_lease(
    holder: &str,
    ttl_ms: u64,
    limits: &Limits,
    field_prefix: &'static str,
) -> Result<LeaseSpec, AgentError> {
    let (holder_field, ttl_field) = match field_prefix {
        "lease" => ("lease.holder", "lease.ttl_ms"),
        _ => ("holder", "ttl_ms"),
    };
    if holder.is_empty() || holder.len() > 128 || !holder.chars().all(|c| c.is_ascii_graphic()) {
        return Err(AgentError::invalid(
            holder_field,
            "must be 1 to 128 printable ASCII characters",
        ));
    }
    let ttl = Duration::from_millis(ttl_ms);
    if ttl < MIN_LEASE_TTL || ttl > limits.max_duration {
        return Err(AgentError::invalid(
            ttl_field,
            format!(
                "must be between {} ms and {} ms",
                MIN_LEASE_TTL.as_millis(),
                limits.max_duration.as_millis()
            ),
        ));
    }
    Ok(LeaseSpec {
        holder: holder.to_string(),
        ttl,
    })
}

fn validate_labels(labels: &HashMap<String, String>) -> Result<(), AgentError> {
    if labels.len() > MAX_LABELS {
        return Err(AgentError::invalid(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (key, value) in labels {
        if key.is_empty()
            || key.len() > 63
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        {
            return Err(AgentError::invalid(
                "labels",
                format!("key `{key}` must be 1 to 63 of [A-Za-z0-9_-./]"),
            ));
        }
        if value.len() > 256 || value.contains('\0') {
            return Err(AgentError::invalid(
                "labels",
                format!("value of `{key}` must be at most 256 characters"),
            ));
        }
    }
    Ok(())
}

/// Fault ids are the agent's own (`f-` and 16 hex digits); anything else cannot name a fault.
pub fn validate_fault_id(id: &str, field: &'static str) -> Result<(), AgentError> {
    let valid = id.len() == 18
        && id.starts_with("f-")
        && id[2..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if valid {
        Ok(())
    } else {
        Err(AgentError::invalid(
            field,
            format!("`{id}` is not a fault id (f-<16 hex digits>)"),
        ))
    }
}

pub fn validate_revert(req: &api::RevertRequest) -> Result<Option<String>, AgentError> {
    match (req.all, req.id.is_empty()) {
        (true, true) => Ok(None),
        (true, false) => Err(AgentError::invalid("id", "set either id or all, not both")),
        (false, true) => Err(AgentError::invalid(
            "id",
            "is empty; name a fault or set all",
        )),
        (false, false) => {
            validate_fault_id(&req.id, "id")?;
            Ok(Some(req.id.clone()))
        }
    }
}

pub fn validate_pod_namespace_filter(ns: &str) -> Result<(), AgentError> {
    if ns.is_empty() {
        return Ok(());
    }
    // A `/` would be read as the pod target's next part: `a/b` made `pod:a/b/x`, a valid
    // target, and was accepted as a namespace (found by fuzz/fuzz_targets/agent_requests.rs).
    if ns.contains('/') {
        return Err(AgentError::invalid(
            "pod_namespace",
            format!("`{ns}` is not a valid namespace"),
        ));
    }
    TargetSpec::parse(&format!("pod:{ns}/x"))
        .map(|_| ())
        .map_err(|_| {
            AgentError::invalid("pod_namespace", format!("`{ns}` is not a valid namespace"))
        })
}

/// Request builders the validation tests of every kind share.
#[cfg(test)]
mod test_support {
    use chaos_proto::api;
    use chaos_proto::api::inject_request::Fault;

    pub(super) fn req(target: &str, duration_ms: u64, fault: Fault) -> api::InjectRequest {
        api::InjectRequest {
            target: target.into(),
            duration_ms,
            fault: Some(fault),
            ..Default::default()
        }
    }

    pub(super) fn kill() -> Fault {
        Fault::Process(api::ProcessFault::default())
    }
}
