//! Full validation of requests before anything on the node is touched. Pure: every
//! check here is unit-tested without root. A refused field is named in the error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use chaos_proto::api;
use nix::sys::signal::Signal;

use crate::error::AgentError;
use crate::target::TargetSpec;

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
        }
    }
}

/// Shortest repeat interval and lease; anything tighter is a busy loop, not a fault.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MIN_LEASE_TTL: Duration = Duration::from_millis(500);
const MAX_LABELS: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessPlan {
    pub signal: Signal,
    pub process_filter: Option<String>,
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CpuPlan {
    pub load_percent: u32,
    pub cores: Option<u32>,
    pub mode: api::CpuMode,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MemoryAmount {
    Bytes(u64),
    PercentOfLimit(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub amount: MemoryAmount,
    pub ramp: Duration,
    /// A percent of a container without a memory limit is of node memory (asked for).
    pub allow_node_memory: bool,
    /// The agent's bound on the memory a fill may take from the node, in percent of
    /// MemAvailable when it is prepared ([`Limits::max_memory_fill_percent_of_available`]).
    pub max_percent_of_available: u32,
}

/// An IP network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has an invalid prefix length"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// What this agent permits when a network fault's namespace turns out to be the node's
/// (a hostNetwork pod, a process of the node, a node-scope blackhole). Only `prepare`
/// can tell, once it has the target's namespace; validation hands it the agent's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeNetworkPolicy {
    /// `--allow-node-scope`.
    pub allowed: bool,
    /// The agent's gRPC port: a fault on the node's namespace leaves it reachable, as
    /// source and destination port.
    pub agent_port: u16,
}

impl NodeNetworkPolicy {
    pub fn of(limits: &Limits) -> NodeNetworkPolicy {
        NodeNetworkPolicy {
            allowed: limits.allow_node_scope,
            agent_port: limits.agent_port,
        }
    }
}

impl Default for NodeNetworkPolicy {
    fn default() -> Self {
        NodeNetworkPolicy::of(&Limits::default())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPlan {
    pub request: api::NetworkFault,
    pub destinations: Vec<Cidr>,
    pub exclude_destinations: Vec<Cidr>,
    pub node: NodeNetworkPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlackholePlan {
    pub destinations: Vec<Cidr>,
    pub ports: Vec<u16>,
    pub node_scope: bool,
    pub node: NodeNetworkPolicy,
    /// Empty: the interface carrying the default route.
    pub interface: String,
}

/// What a valid request asks for, per fault kind.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultPlan {
    Process(ProcessPlan),
    Cpu(CpuPlan),
    Memory(MemoryPlan),
    Network(NetworkPlan),
    Blackhole(BlackholePlan),
}

impl FaultPlan {
    /// A stressor in the target's cgroup: its load is bounded by that cgroup's limits.
    pub fn is_resource_stress(&self) -> bool {
        matches!(self, FaultPlan::Cpu(_) | FaultPlan::Memory(_))
    }

    pub fn kind(&self) -> api::FaultKind {
        match self {
            FaultPlan::Process(_) => api::FaultKind::Process,
            FaultPlan::Cpu(_) => api::FaultKind::Cpu,
            FaultPlan::Memory(_) => api::FaultKind::Memory,
            FaultPlan::Network(_) => api::FaultKind::Network,
            FaultPlan::Blackhole(_) => api::FaultKind::Blackhole,
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
            "is missing; set one of cpu, memory, network, process, blackhole",
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
        api::inject_request::Fault::Io(_) => {
            return Err(AgentError::Unimplemented(
                "io faults are reserved in the API but not implemented by this agent".into(),
            ));
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

pub fn parse_signal(text: &str) -> Result<Signal, AgentError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Signal::SIGKILL);
    }
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| {
            AgentError::invalid("process.signal", format!("{number} is not a signal number"))
        });
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| {
        AgentError::invalid("process.signal", format!("`{text}` is not a signal name"))
    })
}

fn validate_process(p: &api::ProcessFault, duration: Duration) -> Result<ProcessPlan, AgentError> {
    let signal = parse_signal(&p.signal)?;
    let filter = p.process.trim();
    if filter.len() > 256 || filter.contains('\0') {
        return Err(AgentError::invalid(
            "process.process",
            "must be at most 256 characters without NUL",
        ));
    }
    if crate::faults::process::is_stop_signal(signal) {
        // A stopped process stays stopped: the fault holds the stop and continues the
        // processes at its end, so it needs an end and has nothing to repeat.
        if duration.is_zero() {
            return Err(AgentError::invalid(
                "duration_ms",
                format!(
                    "is required with {}: the processes stay stopped until the fault ends, when the agent continues them (SIGCONT)",
                    crate::faults::process::signal_name(signal)
                ),
            ));
        }
        if p.interval_ms > 0 {
            return Err(AgentError::invalid(
                "process.interval_ms",
                "must be 0 with a stop signal: the stop holds until the fault ends, and repeating it stops nothing more",
            ));
        }
    }
    let interval = match p.interval_ms {
        0 => None,
        ms => {
            let interval = Duration::from_millis(ms);
            if interval < MIN_INTERVAL {
                return Err(AgentError::invalid(
                    "process.interval_ms",
                    format!("must be at least {} ms", MIN_INTERVAL.as_millis()),
                ));
            }
            if duration.is_zero() {
                return Err(AgentError::invalid(
                    "duration_ms",
                    "is required when process.interval_ms repeats the signal",
                ));
            }
            if interval > duration {
                return Err(AgentError::invalid(
                    "process.interval_ms",
                    "is longer than duration_ms, so it would never repeat",
                ));
            }
            Some(interval)
        }
    };
    Ok(ProcessPlan {
        signal,
        process_filter: (!filter.is_empty()).then(|| filter.to_string()),
        interval,
    })
}

fn validate_cpu(c: &api::CpuFault) -> Result<CpuPlan, AgentError> {
    if !(1..=100).contains(&c.load_percent) {
        return Err(AgentError::invalid(
            "cpu.load_percent",
            format!(
                "{} is outside 1..=100 (percent of the container's CPU limit)",
                c.load_percent
            ),
        ));
    }
    if c.cores > 1024 {
        return Err(AgentError::invalid("cpu.cores", "must be at most 1024"));
    }
    let mode = api::CpuMode::try_from(c.mode)
        .map_err(|_| AgentError::invalid("cpu.mode", format!("{} is not a CPU mode", c.mode)))?;
    Ok(CpuPlan {
        load_percent: c.load_percent,
        cores: (c.cores > 0).then_some(c.cores),
        mode,
    })
}

/// The request's own consistency. What depends on the target (its limit) and the node
/// (MemAvailable) is decided when the fault is prepared (`faults::memory`).
fn validate_memory(
    m: &api::MemoryFault,
    duration: Duration,
    limits: &Limits,
) -> Result<MemoryPlan, AgentError> {
    const MAX_BYTES: u64 = 1 << 40;
    let amount = match (m.size_bytes, m.percent) {
        (0, 0) => {
            return Err(AgentError::invalid(
                "memory.size_bytes",
                "set either memory.size_bytes or memory.percent",
            ));
        }
        (size, 0) if size > MAX_BYTES => {
            return Err(AgentError::invalid(
                "memory.size_bytes",
                "must be at most 1 TiB",
            ));
        }
        (size, 0) => MemoryAmount::Bytes(size),
        (0, pct) if pct > 100 => {
            return Err(AgentError::invalid(
                "memory.percent",
                format!("{pct} is outside 1..=100 (percent of the container's memory limit)"),
            ));
        }
        (0, pct) => MemoryAmount::PercentOfLimit(pct),
        _ => {
            return Err(AgentError::invalid(
                "memory.percent",
                "set only one of memory.size_bytes and memory.percent",
            ));
        }
    };
    if m.allow_node_memory && !matches!(amount, MemoryAmount::PercentOfLimit(_)) {
        return Err(AgentError::invalid(
            "memory.allow_node_memory",
            "applies to memory.percent only (it lets a percent be of node memory)",
        ));
    }
    let ramp = Duration::from_millis(m.ramp_ms);
    if ramp >= duration {
        return Err(AgentError::invalid(
            "memory.ramp_ms",
            "must be shorter than duration_ms",
        ));
    }
    Ok(MemoryPlan {
        amount,
        ramp,
        allow_node_memory: m.allow_node_memory,
        max_percent_of_available: limits.max_memory_fill_percent_of_available,
    })
}

fn check_percent(field: &'static str, value: f64) -> Result<(), AgentError> {
    if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
        return Err(AgentError::invalid(
            field,
            format!("{value} is outside 0..=100"),
        ));
    }
    // The kernel holds a probability as a fraction of 2^32 - 1: a percentage above 0
    // that rounds to 0 there would be installed as "never", not as asked.
    if value > 0.0 && chaos_netem::codec::percent_to_probability(value) == 0 {
        return Err(AgentError::invalid(
            field,
            format!("{value} % is below the kernel's resolution (100 / (2^32 - 1) %)"),
        ));
    }
    Ok(())
}

fn parse_cidrs(field: &'static str, items: &[String]) -> Result<Vec<Cidr>, AgentError> {
    items
        .iter()
        .map(|text| {
            text.parse::<Cidr>()
                .map_err(|reason| AgentError::invalid(field, reason))
        })
        .collect()
}

/// Targeting filters are u32 matches on the IPv4 header; IPv6 networks are refused
/// rather than silently not matched.
fn parse_ipv4_cidrs(field: &'static str, items: &[String]) -> Result<Vec<Cidr>, AgentError> {
    let cidrs = parse_cidrs(field, items)?;
    if let Some(v6) = cidrs.iter().find(|c| c.addr.is_ipv6()) {
        return Err(AgentError::Unimplemented(format!(
            "{field}: {}/{} is IPv6; targeting by destination is implemented for IPv4 only",
            v6.addr, v6.prefix
        )));
    }
    Ok(cidrs)
}

/// Each combination of destination, port and protocol is one kernel filter.
const MAX_FILTERS: usize = 256;

/// The product of list lengths, saturated: the count only needs to say "too many".
fn filter_product(counts: &[usize]) -> usize {
    counts
        .iter()
        .fold(1, |product, count| product.saturating_mul(*count))
}

fn check_filter_count(field: &'static str, count: usize) -> Result<(), AgentError> {
    if count > MAX_FILTERS {
        return Err(AgentError::invalid(
            field,
            format!(
                "needs {count} filters (destinations x ports x protocols); at most {MAX_FILTERS}"
            ),
        ));
    }
    Ok(())
}

fn check_ports(field: &'static str, ports: &[u32]) -> Result<Vec<u16>, AgentError> {
    ports
        .iter()
        .map(|p| {
            u16::try_from(*p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| AgentError::invalid(field, format!("{p} is not a port (1..=65535)")))
        })
        .collect()
}

/// Linux interface names: at most 15 bytes, no `/`, no whitespace.
fn check_interface_name(field: &'static str, name: &str) -> Result<(), AgentError> {
    if name.is_empty() {
        return Ok(());
    }
    if name.len() > 15
        || name.contains('/')
        || name.chars().any(|c| c.is_whitespace() || c == '\0')
        || name == "."
        || name == ".."
    {
        return Err(AgentError::invalid(
            field,
            format!("`{name}` is not a valid interface name"),
        ));
    }
    Ok(())
}

/// The highest bandwidth limit: its bit rate (how tc and the fault's status show rates)
/// must fit 64 bits. The kernel takes any 64-bit byte rate (`TCA_*_RATE64`).
pub const MAX_RATE_BYTES_PER_SECOND: u64 = u64::MAX / 8;

fn validate_network(n: &api::NetworkFault, limits: &Limits) -> Result<NetworkPlan, AgentError> {
    const MAX_DELAY_US: u64 = 60_000_000;
    check_interface_name("network.interface", &n.interface)?;
    api::Direction::try_from(n.direction).map_err(|_| {
        AgentError::invalid(
            "network.direction",
            format!("{} is not a direction", n.direction),
        )
    })?;
    let distribution = api::Distribution::try_from(n.distribution).map_err(|_| {
        AgentError::invalid(
            "network.distribution",
            format!("{} is not a distribution", n.distribution),
        )
    })?;
    api::Protocol::try_from(n.protocol).map_err(|_| {
        AgentError::invalid(
            "network.protocol",
            format!("{} is not a protocol", n.protocol),
        )
    })?;
    if n.delay_us > MAX_DELAY_US {
        return Err(AgentError::invalid(
            "network.delay_us",
            "must be at most 60 s",
        ));
    }
    if n.jitter_us > chaos_netem::codec::MAX_JITTER_US {
        return Err(AgentError::invalid(
            "network.jitter_us",
            format!(
                "must be at most {} us (2^31 - 1 ns): the kernel cuts a larger jitter to that",
                chaos_netem::codec::MAX_JITTER_US
            ),
        ));
    }
    if n.jitter_us > 0 && n.delay_us == 0 {
        return Err(AgentError::invalid(
            "network.jitter_us",
            "needs network.delay_us",
        ));
    }
    if distribution != api::Distribution::Unspecified && n.jitter_us == 0 {
        return Err(AgentError::invalid(
            "network.distribution",
            "needs network.jitter_us (a distribution shapes the jitter)",
        ));
    }
    check_percent("network.delay_correlation", n.delay_correlation)?;
    check_percent("network.loss_percent", n.loss_percent)?;
    check_percent("network.loss_correlation", n.loss_correlation)?;
    check_percent("network.duplicate_percent", n.duplicate_percent)?;
    check_percent("network.corrupt_percent", n.corrupt_percent)?;
    check_percent("network.reorder_percent", n.reorder_percent)?;
    if n.reorder_percent > 0.0 && n.delay_us == 0 {
        return Err(AgentError::invalid(
            "network.reorder_percent",
            "needs network.delay_us (netem reorders by sending some packets without the delay)",
        ));
    }
    if n.reorder_gap > 0 && n.reorder_percent == 0.0 {
        return Err(AgentError::invalid(
            "network.reorder_gap",
            "needs network.reorder_percent",
        ));
    }
    if n.rate_bytes_per_second > MAX_RATE_BYTES_PER_SECOND {
        return Err(AgentError::invalid(
            "network.rate_bytes_per_second",
            format!(
                "{} is above the highest rate, {MAX_RATE_BYTES_PER_SECOND} bytes/s (its bit rate must fit 64 bits)",
                n.rate_bytes_per_second
            ),
        ));
    }
    let impairs = n.delay_us > 0
        || n.loss_percent > 0.0
        || n.duplicate_percent > 0.0
        || n.corrupt_percent > 0.0
        || n.rate_bytes_per_second > 0;
    if !impairs {
        return Err(AgentError::invalid(
            "network",
            "sets no impairment; give at least one of delay_us, loss_percent, duplicate_percent, corrupt_percent, rate_bytes_per_second",
        ));
    }
    let destinations = parse_ipv4_cidrs("network.destinations", &n.destinations)?;
    let exclude_destinations =
        parse_ipv4_cidrs("network.exclude_destinations", &n.exclude_destinations)?;
    check_ports("network.ports", &n.ports)?;
    check_ports("network.exclude_ports", &n.exclude_ports)?;
    if n.protocol == api::Protocol::Icmp as i32 && !n.ports.is_empty() {
        return Err(AgentError::invalid(
            "network.ports",
            "ICMP has no ports; use protocol tcp, udp or any with ports",
        ));
    }
    let protocols = if n.protocol == api::Protocol::Any as i32 && !n.ports.is_empty() {
        2 // tcp and udp
    } else {
        1
    };
    check_filter_count(
        "network.destinations",
        filter_product(&[n.destinations.len().max(1), n.ports.len().max(1), protocols]),
    )?;
    check_filter_count(
        "network.exclude_destinations",
        n.exclude_destinations
            .len()
            .saturating_add(filter_product(&[2, n.exclude_ports.len()])),
    )?;
    Ok(NetworkPlan {
        request: n.clone(),
        destinations,
        exclude_destinations,
        node: NodeNetworkPolicy::of(limits),
    })
}

fn validate_blackhole(
    b: &api::BlackholeFault,
    limits: &Limits,
) -> Result<BlackholePlan, AgentError> {
    if b.node_scope && !limits.allow_node_scope {
        return Err(AgentError::PermissionDenied(
            "node-scope blackholes are disabled on this agent (start it with --allow-node-scope)"
                .into(),
        ));
    }
    check_interface_name("blackhole.interface", &b.interface)?;
    let plan = BlackholePlan {
        destinations: parse_ipv4_cidrs("blackhole.destinations", &b.destinations)?,
        ports: check_ports("blackhole.ports", &b.ports)?,
        node_scope: b.node_scope,
        node: NodeNetworkPolicy::of(limits),
        interface: b.interface.clone(),
    };
    check_filter_count(
        "blackhole.destinations",
        filter_product(&[b.destinations.len().max(1), b.ports.len().max(1), 2]),
    )?;
    Ok(plan)
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

#[cfg(test)]
mod tests {
    use super::*;
    use api::inject_request::Fault;

    fn req(target: &str, duration_ms: u64, fault: Fault) -> api::InjectRequest {
        api::InjectRequest {
            target: target.into(),
            duration_ms,
            fault: Some(fault),
            ..Default::default()
        }
    }

    fn kill() -> Fault {
        Fault::Process(api::ProcessFault::default())
    }

    /// The field an invalid request is refused for.
    fn refused_field(r: &api::InjectRequest) -> &'static str {
        match validate_inject(r, &Limits::default()) {
            Err(AgentError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_kill_defaults_to_sigkill_once() {
        let v = validate_inject(&req("pid:10", 0, kill()), &Limits::default()).unwrap();
        assert_eq!(
            v.plan,
            FaultPlan::Process(ProcessPlan {
                signal: Signal::SIGKILL,
                process_filter: None,
                interval: None
            })
        );
        assert_eq!(v.duration, Duration::ZERO);
    }

    #[test]
    fn signals_parse_by_name_number_and_prefix() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigstop").unwrap(), Signal::SIGSTOP);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("").unwrap(), Signal::SIGKILL);
        assert!(matches!(
            parse_signal("NOPE"),
            Err(AgentError::InvalidArgument {
                field: "process.signal",
                ..
            })
        ));
        assert!(matches!(
            parse_signal("99"),
            Err(AgentError::InvalidArgument {
                field: "process.signal",
                ..
            })
        ));
    }

    #[test]
    fn a_stop_signal_needs_a_duration_and_no_interval() {
        let stop = |signal: &str, duration_ms, interval_ms| {
            validate_inject(
                &req(
                    "pod:dev/db-0/db",
                    duration_ms,
                    Fault::Process(api::ProcessFault {
                        signal: signal.into(),
                        interval_ms,
                        ..Default::default()
                    }),
                ),
                &Limits::default(),
            )
        };
        for signal in ["STOP", "TSTP", "TTIN", "TTOU", "19"] {
            match stop(signal, 0, 0) {
                Err(AgentError::InvalidArgument { field, reason }) => {
                    assert_eq!(field, "duration_ms", "{signal}");
                    assert!(reason.contains("SIGCONT"), "{reason}");
                }
                other => panic!("{signal}: {other:?}"),
            }
            assert!(matches!(
                stop(signal, 10_000, 1_000),
                Err(AgentError::InvalidArgument {
                    field: "process.interval_ms",
                    ..
                })
            ));
            assert!(stop(signal, 10_000, 0).is_ok(), "{signal}");
        }
        // Other signals stay one-shot without a duration.
        assert!(stop("TERM", 0, 0).is_ok());
        assert!(stop("CONT", 0, 0).is_ok());
    }

    #[test]
    fn every_invalid_inject_field_is_named() {
        let process = |signal: &str, process: &str, interval_ms| {
            Fault::Process(api::ProcessFault {
                signal: signal.into(),
                process: process.into(),
                interval_ms,
            })
        };
        assert_eq!(refused_field(&req("", 0, kill())), "target");
        assert_eq!(
            refused_field(&req("pid:1", 4_000_000, kill())),
            "duration_ms"
        );
        assert_eq!(
            refused_field(&api::InjectRequest {
                target: "pid:1".into(),
                ..Default::default()
            }),
            "fault"
        );
        assert_eq!(
            refused_field(&req("pid:2", 0, process("BOGUS", "", 0))),
            "process.signal"
        );
        assert_eq!(
            refused_field(&req("pid:2", 0, process("", &"x".repeat(300), 0))),
            "process.process"
        );
        assert_eq!(
            refused_field(&req("pid:2", 10_000, process("", "", 5))),
            "process.interval_ms"
        );
        assert_eq!(
            refused_field(&req("pid:2", 0, process("", "", 1000))),
            "duration_ms"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, process("", "", 2000))),
            "process.interval_ms"
        );

        let cpu = |load_percent, cores, mode| {
            Fault::Cpu(api::CpuFault {
                load_percent,
                cores,
                mode,
            })
        };
        assert_eq!(
            refused_field(&req("pid:2", 0, cpu(50, 0, 0))),
            "duration_ms"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, cpu(0, 0, 0))),
            "cpu.load_percent"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, cpu(101, 0, 0))),
            "cpu.load_percent"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, cpu(50, 5000, 0))),
            "cpu.cores"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, cpu(50, 0, 7))),
            "cpu.mode"
        );

        let mem = |size_bytes, percent, ramp_ms| {
            Fault::Memory(api::MemoryFault {
                size_bytes,
                percent,
                ramp_ms,
                allow_node_memory: false,
            })
        };
        assert_eq!(
            refused_field(&req("pid:2", 1000, mem(0, 0, 0))),
            "memory.size_bytes"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, mem(1 << 41, 0, 0))),
            "memory.size_bytes"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, mem(0, 101, 0))),
            "memory.percent"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, mem(10, 10, 0))),
            "memory.percent"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, mem(10, 0, 1000))),
            "memory.ramp_ms"
        );
        let size_with_node_memory = Fault::Memory(api::MemoryFault {
            size_bytes: 4096,
            allow_node_memory: true,
            ..Default::default()
        });
        assert_eq!(
            refused_field(&req("pid:2", 1000, size_with_node_memory)),
            "memory.allow_node_memory"
        );

        let net = |f: fn(&mut api::NetworkFault)| {
            let mut n = api::NetworkFault {
                delay_us: 1000,
                ..Default::default()
            };
            f(&mut n);
            Fault::Network(n)
        };
        type Mutation = fn(&mut api::NetworkFault);
        let cases: Vec<(Mutation, &str)> = vec![
            (|n| n.interface = "a/b".into(), "network.interface"),
            (|n| n.interface = "x".repeat(16), "network.interface"),
            (|n| n.direction = 9, "network.direction"),
            (|n| n.distribution = 9, "network.distribution"),
            (
                |n| n.distribution = api::Distribution::Normal as i32,
                "network.distribution",
            ),
            (|n| n.protocol = 9, "network.protocol"),
            (|n| n.delay_us = 61_000_000, "network.delay_us"),
            (|n| n.jitter_us = 61_000_000, "network.jitter_us"),
            (
                |n| {
                    n.delay_us = 0;
                    n.loss_percent = 1.0;
                    n.jitter_us = 5
                },
                "network.jitter_us",
            ),
            (|n| n.delay_correlation = 101.0, "network.delay_correlation"),
            (|n| n.loss_percent = -1.0, "network.loss_percent"),
            (|n| n.loss_percent = f64::NAN, "network.loss_percent"),
            (|n| n.loss_correlation = 200.0, "network.loss_correlation"),
            (|n| n.duplicate_percent = 101.0, "network.duplicate_percent"),
            (|n| n.corrupt_percent = 101.0, "network.corrupt_percent"),
            (|n| n.reorder_percent = 101.0, "network.reorder_percent"),
            (
                |n| {
                    n.delay_us = 0;
                    n.loss_percent = 1.0;
                    n.reorder_percent = 5.0
                },
                "network.reorder_percent",
            ),
            (|n| n.reorder_gap = 5, "network.reorder_gap"),
            (|n| n.delay_us = 0, "network"),
            (
                |n| n.destinations = vec!["10.0.0.0/33".into()],
                "network.destinations",
            ),
            (
                |n| n.destinations = vec!["nope".into()],
                "network.destinations",
            ),
            (
                |n| n.exclude_destinations = vec!["::1/129".into()],
                "network.exclude_destinations",
            ),
            (|n| n.ports = vec![0], "network.ports"),
            (
                |n| {
                    n.protocol = api::Protocol::Icmp as i32;
                    n.ports = vec![80]
                },
                "network.ports",
            ),
            (
                |n| {
                    n.destinations = (0..20).map(|i| format!("10.0.{i}.0/24")).collect();
                    n.ports = (1..=20).collect()
                },
                "network.destinations",
            ),
            (|n| n.exclude_ports = vec![70000], "network.exclude_ports"),
        ];
        for (mutate, field) in cases {
            assert_eq!(refused_field(&req("pid:2", 1000, net(mutate))), field);
        }
        assert_eq!(refused_field(&req("pid:2", 0, net(|_| {}))), "duration_ms");

        let blackhole = |destinations: Vec<String>, ports| {
            Fault::Blackhole(api::BlackholeFault {
                destinations,
                ports,
                ..Default::default()
            })
        };
        assert_eq!(
            refused_field(&req("pid:2", 1000, blackhole(vec!["x".into()], vec![]))),
            "blackhole.destinations"
        );
        assert_eq!(
            refused_field(&req("pid:2", 1000, blackhole(vec![], vec![0]))),
            "blackhole.ports"
        );
        let bad_interface = Fault::Blackhole(api::BlackholeFault {
            interface: "eth0/../x".into(),
            ..Default::default()
        });
        assert_eq!(
            refused_field(&req("pid:2", 1000, bad_interface)),
            "blackhole.interface"
        );

        let mut with_lease = req("pid:2", 1000, kill());
        with_lease.lease = Some(api::Lease {
            holder: "".into(),
            ttl_ms: 1000,
        });
        assert_eq!(refused_field(&with_lease), "lease.holder");
        with_lease.lease = Some(api::Lease {
            holder: "ctl".into(),
            ttl_ms: 10,
        });
        assert_eq!(refused_field(&with_lease), "lease.ttl_ms");

        let mut with_labels = req("pid:2", 0, kill());
        with_labels.labels.insert("bad key".into(), "v".into());
        assert_eq!(refused_field(&with_labels), "labels");
    }

    #[test]
    fn node_scope_needs_the_agent_flag() {
        let r = req(
            "pid:2",
            1000,
            Fault::Blackhole(api::BlackholeFault {
                node_scope: true,
                ..Default::default()
            }),
        );
        assert!(matches!(
            validate_inject(&r, &Limits::default()),
            Err(AgentError::PermissionDenied(_))
        ));
        let allowed = Limits {
            allow_node_scope: true,
            ..Limits::default()
        };
        assert!(validate_inject(&r, &allowed).is_ok());
    }

    #[test]
    fn ipv6_targets_are_refused_by_name_not_ignored() {
        let r = req(
            "pid:2",
            1000,
            Fault::Network(api::NetworkFault {
                delay_us: 1000,
                exclude_destinations: vec!["fd00::/8".into()],
                ..Default::default()
            }),
        );
        match validate_inject(&r, &Limits::default()) {
            Err(AgentError::Unimplemented(message)) => {
                assert!(
                    message.contains("network.exclude_destinations"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn node_scope_keeps_the_agent_port() {
        let r = req(
            "pid:2",
            1000,
            Fault::Blackhole(api::BlackholeFault {
                node_scope: true,
                ports: vec![80],
                ..Default::default()
            }),
        );
        let limits = Limits {
            allow_node_scope: true,
            agent_port: 7443,
            ..Limits::default()
        };
        let kept = NodeNetworkPolicy {
            allowed: true,
            agent_port: 7443,
        };
        match validate_inject(&r, &limits).unwrap().plan {
            FaultPlan::Blackhole(plan) => {
                assert_eq!(plan.node, kept);
                assert_eq!(plan.ports, vec![80]);
            }
            other => panic!("{other:?}"),
        }
        // Network faults carry the same rule: prepare applies it to a target that
        // shares the node's namespace.
        let network = req(
            "pid:2",
            1000,
            Fault::Network(api::NetworkFault {
                delay_us: 1000,
                ..Default::default()
            }),
        );
        match validate_inject(&network, &limits).unwrap().plan {
            FaultPlan::Network(plan) => assert_eq!(plan.node, kept),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn network_numbers_the_kernel_cannot_hold_are_refused_at_the_boundary() {
        let network = |fault: api::NetworkFault| {
            validate_inject(
                &req("pid:2", 1000, Fault::Network(fault)),
                &Limits::default(),
            )
        };
        let rate = |rate_bytes_per_second| api::NetworkFault {
            rate_bytes_per_second,
            ..Default::default()
        };
        assert!(network(rate(MAX_RATE_BYTES_PER_SECOND)).is_ok());
        for too_high in [MAX_RATE_BYTES_PER_SECOND + 1, u64::MAX] {
            match network(rate(too_high)) {
                Err(AgentError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "network.rate_bytes_per_second")
                }
                other => panic!("{too_high}: {other:?}"),
            }
        }
        // The smallest loss the kernel holds is 1 / (2^32 - 1); half of it rounds to 0.
        let one_step = 100.0 / f64::from(u32::MAX);
        let loss = |loss_percent| api::NetworkFault {
            loss_percent,
            ..Default::default()
        };
        assert!(network(loss(one_step)).is_ok());
        match network(loss(one_step / 4.0)) {
            Err(AgentError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "network.loss_percent");
                assert!(reason.contains("resolution"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let correlated = api::NetworkFault {
            loss_correlation: 1e-12,
            ..loss(5.0)
        };
        assert!(matches!(
            network(correlated),
            Err(AgentError::InvalidArgument {
                field: "network.loss_correlation",
                ..
            })
        ));
        // The widest jitter the kernel keeps, and one microsecond more.
        let jitter = |jitter_us| api::NetworkFault {
            delay_us: 5_000_000,
            jitter_us,
            ..Default::default()
        };
        assert!(network(jitter(chaos_netem::codec::MAX_JITTER_US)).is_ok());
        assert!(matches!(
            network(jitter(chaos_netem::codec::MAX_JITTER_US + 1)),
            Err(AgentError::InvalidArgument {
                field: "network.jitter_us",
                ..
            })
        ));
        // Lists whose product would overflow are counted, not multiplied.
        assert_eq!(filter_product(&[usize::MAX, 2]), usize::MAX);
        assert_eq!(filter_product(&[3, 2, 2]), 12);
    }

    #[test]
    fn io_is_reserved_but_unimplemented() {
        let r = req("pid:2", 1000, Fault::Io(api::IoFault {}));
        assert!(matches!(
            validate_inject(&r, &Limits::default()),
            Err(AgentError::Unimplemented(_))
        ));
    }

    #[test]
    fn valid_requests_of_every_kind_pass() {
        let ok =
            |f| validate_inject(&req("pod:dev/db-0/db", 30_000, f), &Limits::default()).unwrap();
        assert_eq!(
            ok(Fault::Cpu(api::CpuFault {
                load_percent: 80,
                cores: 2,
                mode: 2
            }))
            .plan
            .kind(),
            api::FaultKind::Cpu
        );
        assert_eq!(
            ok(Fault::Memory(api::MemoryFault {
                size_bytes: 256 << 20,
                percent: 0,
                ramp_ms: 10_000,
                allow_node_memory: false,
            }))
            .plan,
            FaultPlan::Memory(MemoryPlan {
                amount: MemoryAmount::Bytes(256 << 20),
                ramp: Duration::from_secs(10),
                allow_node_memory: false,
                max_percent_of_available: DEFAULT_MAX_MEMORY_FILL_PERCENT_OF_AVAILABLE,
            })
        );
        // A percent of node memory, asked for; the agent's bound travels with the plan.
        let limits = Limits {
            max_memory_fill_percent_of_available: 20,
            ..Limits::default()
        };
        let node_percent = Fault::Memory(api::MemoryFault {
            percent: 10,
            allow_node_memory: true,
            ..Default::default()
        });
        assert_eq!(
            validate_inject(&req("pod:dev/db-0/db", 30_000, node_percent), &limits)
                .unwrap()
                .plan,
            FaultPlan::Memory(MemoryPlan {
                amount: MemoryAmount::PercentOfLimit(10),
                ramp: Duration::ZERO,
                allow_node_memory: true,
                max_percent_of_available: 20,
            })
        );
        let n = ok(Fault::Network(api::NetworkFault {
            delay_us: 100_000,
            jitter_us: 10_000,
            distribution: api::Distribution::Normal as i32,
            loss_percent: 5.0,
            destinations: vec!["10.0.0.0/8".into(), "192.168.1.7".into()],
            ports: vec![5432],
            ..Default::default()
        }));
        match n.plan {
            FaultPlan::Network(p) => assert_eq!(
                p.destinations[1],
                Cidr {
                    addr: "192.168.1.7".parse().unwrap(),
                    prefix: 32
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_kind_a_request_can_ask_for_is_implemented_or_refused_as_unimplemented() {
        let requests = [
            Fault::Process(api::ProcessFault {
                signal: "SIGKILL".into(),
                ..Default::default()
            }),
            Fault::Cpu(api::CpuFault {
                load_percent: 50,
                ..Default::default()
            }),
            Fault::Memory(api::MemoryFault {
                size_bytes: 1 << 20,
                ..Default::default()
            }),
            Fault::Network(api::NetworkFault {
                delay_us: 1_000,
                ..Default::default()
            }),
            Fault::Blackhole(api::BlackholeFault::default()),
        ];
        let mut planned = Vec::new();
        for fault in requests {
            let kind = fault.kind();
            let valid = validate_inject(&req("pod:dev/db-0/db", 30_000, fault), &Limits::default())
                .unwrap_or_else(|e| panic!("{}: {e}", kind.label()));
            assert_eq!(valid.plan.kind(), kind);
            planned.push(kind);
        }
        let implemented: Vec<api::FaultKind> =
            crate::faults::KINDS.iter().map(|info| info.kind).collect();
        planned.sort_by_key(|kind| *kind as i32);
        let mut sorted = implemented.clone();
        sorted.sort_by_key(|kind| *kind as i32);
        assert_eq!(
            planned, sorted,
            "every plan has its kind entry, and no entry lacks a plan"
        );
        let io = req(
            "pod:dev/db-0/db",
            30_000,
            Fault::Io(api::IoFault::default()),
        );
        assert!(matches!(
            validate_inject(&io, &Limits::default()),
            Err(AgentError::Unimplemented(_))
        ));
        assert!(!implemented.contains(&api::FaultKind::Io));
    }

    #[test]
    fn other_requests_name_their_fields() {
        let revert = |id: &str, all| validate_revert(&api::RevertRequest { id: id.into(), all });
        assert_eq!(revert("", true).unwrap(), None);
        assert_eq!(
            revert("f-0123456789abcdef", false).unwrap(),
            Some("f-0123456789abcdef".into())
        );
        for (id, all) in [
            ("", false),
            ("f-1", false),
            ("f-0123456789ABCDEF", false),
            ("f-0123456789abcdef", true),
        ] {
            assert!(
                matches!(
                    revert(id, all),
                    Err(AgentError::InvalidArgument { field: "id", .. })
                ),
                "{id} {all}"
            );
        }
        assert!(matches!(
            validate_fault_id("../x", "id"),
            Err(AgentError::InvalidArgument { field: "id", .. })
        ));
        assert!(validate_pod_namespace_filter("").is_ok());
        assert!(validate_pod_namespace_filter("dev").is_ok());
        // Found by fuzz/fuzz_targets/agent_requests.rs: `ns/name` made a valid pod target.
        for with_slash in ["sod-syst-system/node-x", "dev/web", "dev/"] {
            assert!(
                matches!(
                    validate_pod_namespace_filter(with_slash),
                    Err(AgentError::InvalidArgument {
                        field: "pod_namespace",
                        ..
                    })
                ),
                "{with_slash}"
            );
        }
        assert!(matches!(
            validate_pod_namespace_filter("Dev"),
            Err(AgentError::InvalidArgument {
                field: "pod_namespace",
                ..
            })
        ));
        let limits = Limits::default();
        assert!(matches!(
            validate_lease("", 1000, &limits, ""),
            Err(AgentError::InvalidArgument {
                field: "holder",
                ..
            })
        ));
        assert!(matches!(
            validate_lease("c", 1, &limits, ""),
            Err(AgentError::InvalidArgument {
                field: "ttl_ms",
                ..
            })
        ));
        assert!(validate_lease("ctl-1", 5000, &limits, "").is_ok());
    }
}
