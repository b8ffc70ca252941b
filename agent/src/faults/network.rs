//! The network fault: netem on a target's interface, inside the target's network
//! namespace, over rtnetlink (chaos-netem; no `tc` binary). A bandwidth limit alone is
//! a tbf instead (see `impairment`). Also the blackhole fault, which is the same
//! machinery with 100 % loss (see `blackhole_request`).
//!
//! - egress, all traffic: netem (or tbf) as the root qdisc;
//! - egress, targeted (destinations / ports / protocol / exclusions): a prio root with
//!   an untouched band, netem (or tbf) under a second band, u32 filters (exclusions first);
//! - ingress: an ifb device made for the fault with the above on its root, and a
//!   match-all u32 filter with a mirred redirect on the interface's ingress hook; the
//!   targeting filters then look at the remote end (source address and port).
//!
//! - `prepare` opens each distinct namespace of the targets once and decides its scope
//!   from that descriptor: the node's namespace (PID 1's: a hostNetwork pod, a process of
//!   the node) is node scope, refused without `--allow-node-scope` and otherwise kept
//!   reachable on the agent's port; the agent's own namespace is refused. Then it finds
//!   the interface (named, or the one carrying the default route) and snapshots its
//!   qdiscs; it refuses an interface that already carries a fault of ours, or whose root
//!   could not be put back exactly. Nothing changes yet, and the snapshot (with the
//!   namespace's cookie) goes into the journal before `apply` runs.
//! - `apply` installs netem on every interface, or on none (a failure restores the
//!   ones already done), then reads back what the kernel installed.
//! - `revert` (and `undo` after a crash) restores the snapshot. A namespace that no
//!   longer exists took its qdiscs with it, and so did an interface that no longer
//!   exists: nothing is left to restore. A namespace is found again by its nsfs inode
//!   but is the fault's only if its cookie is the recorded one: the kernel hands a freed
//!   inode number to the next namespace, which may be another pod's.
//!
//! Netlink work uses one socket per namespace and request (`NetnsHandle`): chaos-netem's
//! socket-maker thread opens it inside the namespace, and the request's own task drives
//! it, so no tokio worker ever changes namespace. The socket is closed when the request
//! is done, because an open socket keeps its namespace alive after the pod is gone.
//! Every netlink operation ends within chaos-netem's `NETLINK_TIMEOUT`: reverts of all
//! faults run on one thread, which a request the kernel never answers must not hold.

mod restore;
pub(crate) mod scope;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use chaos_netem::capabilities::{ModuleState, ModuleTree};
use chaos_netem::filter::{FilterError, FilterView};
use chaos_netem::ingress::{IngressError, IngressRedirect};
use chaos_netem::tree::{Classifier, TreeError};
use chaos_netem::u32::{End, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Cidr, TrafficMatch};
use chaos_netem::{
    Distribution, Impairment, LinkKey, NetemSpec, NetnsError, NetnsHandle, NetnsId, OpenNetns,
    QdiscError, QdiscSnapshot, QdiscView, TbfSpec,
};
use chaos_proto::api;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::validate::{BlackholePlan, Cidr, NetworkPlan, NodeNetworkPolicy};

use restore::{Located, locate, restore_interface_async, restore_with};
pub use restore::{Reverted, restore_interface};
use scope::open_node_netns;
pub use scope::{NetnsScope, netns_scope};

/// What to tell an operator whose kernel lacks netem.
pub const NETEM_MISSING_HINT: &str = "the kernel module sch_netem is not available on this node; \
     install the kernel's extra modules (Amazon Linux 2023: `dnf install kernel-modules-extra`, \
     Debian/Ubuntu: linux-modules-extra-$(uname -r)) and run `modprobe sch_netem`, or use a \
     kernel built with CONFIG_NET_SCH_NETEM";

/// A network namespace as the journal records it: the process it was found through
/// (pid + start time, so a reused pid is not mistaken for it), its nsfs identity, which
/// finds it again through any other process or bind mount holding it, and its cookie,
/// which tells whether what is found there is still it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRef {
    pub pid: u32,
    pub start_time: u64,
    pub id: NetnsId,
    /// `SO_NETNS_COOKIE` of the namespace: never given to another namespace in this
    /// boot, where the inode in `id` is handed to the next namespace once this one is
    /// gone. Absent in records of agents before it was kept (and on kernels before
    /// 5.14): such a record is matched by `id` alone, the nsfs device and inode, as
    /// those agents did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
}

/// One interface to put back: the journal's content for network faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscRestore {
    pub netns: NetnsRef,
    pub ifindex: u32,
    pub snapshot: QdiscSnapshot,
    /// Ingress faults: the redirect and ifb to remove (the root is not touched then).
    /// Absent in records of agents before ingress existed, which were all egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressRedirect>,
}

/// Which way the impaired packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Egress,
    Ingress,
}

/// Whose interface: the targets' namespaces, or the node's own (host namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Targets,
    Node,
}

/// What a network or blackhole request asks of the kernel, decided from the plan. Pure.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRequest {
    /// Network or blackhole: the same machinery, each its own kind for lists and metrics.
    pub kind: api::FaultKind,
    pub impairment: Impairment,
    pub classifier: Classifier,
    pub direction: Direction,
    pub interface: Option<String>,
    pub scope: Scope,
    /// What the agent permits if a namespace turns out to be the node's.
    pub node: NodeNetworkPolicy,
}

impl NetworkRequest {
    /// Leaves TCP to and from `port` (the agent's gRPC port) alone: exclusions before
    /// every match, and, for a fault on all traffic, a match-all behind them. The fault
    /// then needs the targeted tree (sch_prio and cls_u32). Idempotent.
    pub fn keep_reachable(&mut self, port: u16) {
        if self.classifier.matches.is_empty() {
            self.classifier.matches.push(TrafficMatch::default());
        }
        for end in [End::Source, End::Destination] {
            let kept = TrafficMatch {
                protocol: Some(IPPROTO_TCP),
                port: Some((end, port)),
                ..Default::default()
            };
            if !self.classifier.exclusions.contains(&kept) {
                self.classifier.exclusions.push(kept);
            }
        }
    }

    /// Kernel modules this request needs, each with what it is for.
    pub fn required_modules(&self) -> Vec<&'static str> {
        let mut modules = vec![self.impairment.module()];
        if !self.classifier.is_empty() {
            modules.extend(["sch_prio", "cls_u32"]);
        }
        if self.direction == Direction::Ingress {
            for module in ["sch_ingress", "ifb", "act_mirred", "cls_u32"] {
                if !modules.contains(&module) {
                    modules.push(module);
                }
            }
        }
        modules
    }
}

fn ipv4(cidr: &Cidr) -> Option<Ipv4Cidr> {
    match cidr.addr {
        std::net::IpAddr::V4(addr) => Some(Ipv4Cidr {
            addr,
            prefix: cidr.prefix,
        }),
        // Validation refuses IPv6 targeting; never reached with a validated plan.
        std::net::IpAddr::V6(_) => None,
    }
}

/// The u32 classification of a request: every combination of destination, port and
/// protocol is one match (any of them sends a packet to netem); exclusions win. `end`
/// is the remote side of the packets: their destination on egress, their source on
/// ingress. Ports without a protocol mean TCP and UDP. No targeting and no exclusions
/// is the empty classifier (plain netem on everything).
pub fn classifier(
    end: End,
    destinations: &[Cidr],
    ports: &[u16],
    protocol: api::Protocol,
    exclude_destinations: &[Cidr],
    exclude_ports: &[u16],
) -> Classifier {
    let port_protocols: Vec<Option<u8>> = match protocol {
        api::Protocol::Any if ports.is_empty() => vec![None],
        api::Protocol::Any => vec![Some(IPPROTO_TCP), Some(IPPROTO_UDP)],
        api::Protocol::Tcp => vec![Some(IPPROTO_TCP)],
        api::Protocol::Udp => vec![Some(IPPROTO_UDP)],
        api::Protocol::Icmp => vec![Some(IPPROTO_ICMP)],
    };
    let addresses: Vec<Option<Ipv4Cidr>> = if destinations.is_empty() {
        vec![None]
    } else {
        destinations.iter().filter_map(ipv4).map(Some).collect()
    };
    let port_list: Vec<Option<u16>> = if ports.is_empty() {
        vec![None]
    } else {
        ports.iter().copied().map(Some).collect()
    };
    let mut matches = Vec::new();
    for address in &addresses {
        for port in &port_list {
            for protocol in &port_protocols {
                matches.push(TrafficMatch {
                    protocol: *protocol,
                    address: address.map(|a| (end, a)),
                    port: port.map(|p| (end, p)),
                });
            }
        }
    }
    let mut exclusions: Vec<TrafficMatch> = exclude_destinations
        .iter()
        .filter_map(ipv4)
        .map(|a| TrafficMatch {
            address: Some((end, a)),
            ..Default::default()
        })
        .collect();
    for port in exclude_ports {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            exclusions.push(TrafficMatch {
                protocol: Some(protocol),
                port: Some((end, *port)),
                ..Default::default()
            });
        }
    }
    let targeted = !destinations.is_empty() || !ports.is_empty() || protocol != api::Protocol::Any;
    if !targeted && exclusions.is_empty() {
        return Classifier::default();
    }
    Classifier {
        exclusions,
        matches,
    }
}

/// A network request as the kernel should see it.
pub fn network_request(plan: &NetworkPlan) -> NetworkRequest {
    let request = &plan.request;
    let direction = if request.direction == api::Direction::Ingress as i32 {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let end = match direction {
        Direction::Egress => End::Destination,
        Direction::Ingress => End::Source,
    };
    let ports: Vec<u16> = request.ports.iter().map(|p| *p as u16).collect();
    let exclude_ports: Vec<u16> = request.exclude_ports.iter().map(|p| *p as u16).collect();
    NetworkRequest {
        kind: api::FaultKind::Network,
        impairment: impairment(request),
        classifier: classifier(
            end,
            &plan.destinations,
            &ports,
            api::Protocol::try_from(request.protocol).unwrap_or(api::Protocol::Any),
            &plan.exclude_destinations,
            &exclude_ports,
        ),
        direction,
        interface: (!request.interface.is_empty()).then(|| request.interface.clone()),
        scope: Scope::Targets,
        node: plan.node,
    }
}

/// A blackhole: every matching packet dropped (netem loss 100 %, the same tree and
/// restore path as a network fault, so no extra kernel module is involved). Node scope
/// is the node's namespace, where `prepare` keeps the agent's port reachable.
pub fn blackhole_request(plan: &BlackholePlan) -> NetworkRequest {
    let classifier = classifier(
        End::Destination,
        &plan.destinations,
        &plan.ports,
        api::Protocol::Any,
        &[],
        &[],
    );
    NetworkRequest {
        kind: api::FaultKind::Blackhole,
        impairment: Impairment::Netem(NetemSpec {
            loss_pct: 100.0,
            ..NetemSpec::default()
        }),
        classifier,
        direction: Direction::Egress,
        interface: (!plan.interface.is_empty()).then(|| plan.interface.clone()),
        scope: if plan.node_scope {
            Scope::Node
        } else {
            Scope::Targets
        },
        node: plan.node,
    }
}

/// Interfaces (namespace, ifindex) that a fault of this agent holds, so that two
/// requests cannot stack netem on the same interface (the second would replace the
/// first's qdisc and the first's revert would remove the second's).
static CLAIMED: Mutex<Option<HashSet<ClaimKey>>> = Mutex::new(None);

/// (namespace, its cookie, ifindex, ingress?): egress and ingress use different qdiscs.
/// With the cookie, a namespace that took the inode of one that died under a fault is
/// not mistaken for it.
type ClaimKey = (NetnsId, Option<u64>, u32, bool);

/// Holds an interface for one fault; released when the fault is dropped.
#[derive(Debug)]
struct Claim {
    key: ClaimKey,
}

impl Claim {
    fn take(key: ClaimKey) -> Option<Claim> {
        let inserted = CLAIMED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashSet::new)
            .insert(key);
        // Built only after the lock is released: a Claim that is dropped locks CLAIMED.
        inserted.then(|| Claim { key })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = CLAIMED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = claimed.as_mut() {
            set.remove(&self.key);
        }
    }
}

/// What the request's qdisc does: a bandwidth limit alone is a tbf (a limit as a slow
/// link imposes it, and no need for sch_netem); anything else is netem, with the rate
/// (if any) among its impairments.
pub fn impairment(request: &api::NetworkFault) -> Impairment {
    let spec = netem_spec(request);
    let rate_only = NetemSpec {
        rate_bytes_per_sec: spec.rate_bytes_per_sec,
        ..NetemSpec::default()
    };
    if spec.rate_bytes_per_sec > 0 && spec == rate_only {
        Impairment::Tbf(TbfSpec::for_rate(spec.rate_bytes_per_sec))
    } else {
        Impairment::Netem(spec)
    }
}

/// The netem parameters a request asks for, in the units chaos-netem uses.
pub fn netem_spec(request: &api::NetworkFault) -> NetemSpec {
    let distribution = match api::Distribution::try_from(request.distribution) {
        Ok(api::Distribution::Normal) => Some(Distribution::Normal),
        Ok(api::Distribution::Pareto) => Some(Distribution::Pareto),
        Ok(api::Distribution::Paretonormal) => Some(Distribution::ParetoNormal),
        // Uniform is the kernel's built-in jitter shape: no table.
        _ => None,
    };
    NetemSpec {
        delay_us: request.delay_us,
        jitter_us: request.jitter_us,
        delay_correlation_pct: request.delay_correlation,
        distribution,
        loss_pct: request.loss_percent,
        loss_correlation_pct: request.loss_correlation,
        duplicate_pct: request.duplicate_percent,
        corrupt_pct: request.corrupt_percent,
        reorder_pct: request.reorder_percent,
        // As tc does: reordering without a gap means every packet is a candidate.
        reorder_gap: if request.reorder_percent > 0.0 {
            request.reorder_gap.max(1)
        } else {
            0
        },
        rate_bytes_per_sec: request.rate_bytes_per_second,
        ..NetemSpec::default()
    }
}

/// Fails with what is missing when this kernel cannot run netem now.
pub fn require_netem(modules: &ModuleTree) -> Result<(), AgentError> {
    // The common case, answered without reading the module index on every request.
    if modules.is_loaded("sch_netem") {
        return Ok(());
    }
    match modules.state("sch_netem") {
        Ok(ModuleState::BuiltIn | ModuleState::Loaded) => Ok(()),
        // Loadable: the kernel auto-loads qdisc modules on first use (request_module).
        // Unknown: no module index; it may be built in. The kernel's answer decides.
        Ok(ModuleState::Loadable { .. } | ModuleState::Unknown) => Ok(()),
        Ok(ModuleState::Missing) => Err(AgentError::FailedPrecondition(NETEM_MISSING_HINT.into())),
        Err(e) => Err(AgentError::FailedPrecondition(format!(
            "cannot tell whether this kernel has sch_netem ({e}); {NETEM_MISSING_HINT}"
        ))),
    }
}

/// Fails naming the first module this request needs that the kernel does not have.
/// Modules the index cannot tell about (or that are loadable) pass: the kernel's answer
/// decides, and a refusal there undoes every step.
pub fn require_modules(modules: &ModuleTree, request: &NetworkRequest) -> Result<(), AgentError> {
    if let Impairment::Netem(_) = request.impairment {
        require_netem(modules)?;
    }
    for module in request.required_modules() {
        if modules.is_loaded(module) {
            continue;
        }
        if let Ok(ModuleState::Missing) = modules.state(module) {
            return Err(AgentError::FailedPrecondition(format!(
                "the kernel module {module} is not available on this node, and this request needs it ({}); \
                 install the kernel's extra modules and run `modprobe {module}`",
                module_purpose(module)
            )));
        }
    }
    Ok(())
}

fn module_purpose(module: &str) -> &'static str {
    match module {
        "sch_prio" | "cls_u32" => "targeting by destination, port or protocol",
        "sch_ingress" | "ifb" | "act_mirred" => "the ingress direction",
        "sch_tbf" => "a bandwidth limit",
        _ => "netem",
    }
}

fn qdisc_error(ifname: &str, err: QdiscError) -> AgentError {
    match err {
        QdiscError::KindNotSupported { kind } if kind == "netem" => AgentError::FailedPrecondition(
            format!("interface {ifname}: the kernel refused netem: {NETEM_MISSING_HINT}"),
        ),
        QdiscError::KindNotSupported { kind } => AgentError::FailedPrecondition(format!(
            "interface {ifname}: the kernel refused the {kind} qdisc: module sch_{kind} is missing on this node; \
             nothing was changed (run `modprobe sch_{kind}` or install the kernel's extra modules)"
        )),
        QdiscError::NotRestorable { .. } | QdiscError::ChangedByOthers { .. } => {
            AgentError::FailedPrecondition(format!("interface {ifname}: {err}"))
        }
        other => AgentError::Internal(format!("interface {ifname}: {other}")),
    }
}

fn tree_error(ifname: &str, err: TreeError) -> AgentError {
    match err {
        TreeError::Qdisc(e) => qdisc_error(ifname, e),
        TreeError::Filter(FilterError::NotSupported) => AgentError::FailedPrecondition(format!(
            "interface {ifname}: the kernel refused the u32 filter: module cls_u32 (or act_mirred) \
             is missing on this node; nothing was changed"
        )),
        other => AgentError::Internal(format!("interface {ifname}: {other}")),
    }
}

fn ingress_error(ifname: &str, err: IngressError) -> AgentError {
    match err {
        IngressError::Tree(e) => tree_error(ifname, e),
        IngressError::Qdisc(e) => qdisc_error(ifname, e),
        IngressError::Filter(e) => tree_error(ifname, TreeError::Filter(e)),
        IngressError::IfbNotSupported(e) => AgentError::FailedPrecondition(format!(
            "interface {ifname}: the kernel cannot create ifb devices ({e}): module ifb is missing \
             on this node, and the ingress direction needs it; nothing was changed"
        )),
        IngressError::NoFreePriority { .. } | IngressError::NameTaken(_) => {
            AgentError::FailedPrecondition(format!("interface {ifname}: {err}"))
        }
        other => AgentError::Internal(format!("interface {ifname}: {other}")),
    }
}

/// A netlink operation that could not run or did not finish (chaos-netem's timeout).
fn netlink_failed(what: &str, err: NetnsError) -> AgentError {
    AgentError::Internal(format!("{what}: {err}"))
}

/// What `prepare` learns about one interface, inside its namespace.
struct Inspected {
    ifindex: u32,
    ifname: String,
    snapshot: QdiscSnapshot,
    ingress: Option<IngressRedirect>,
}

/// Whether every filter on the snapshot's ingress qdisc redirects to an ifb of ours.
async fn ingress_is_ours(
    handle: &chaos_netem::Handle,
    snapshot: &QdiscSnapshot,
) -> Result<bool, String> {
    let Some(record) = &snapshot.ingress else {
        return Ok(false);
    };
    let parent = if record.kind == "clsact" {
        chaos_netem::ingress::CLSACT_INGRESS_PARENT
    } else {
        record.handle
    };
    let filters = chaos_netem::filter::dump(handle, snapshot.ifindex, parent)
        .await
        .map_err(|e| e.to_string())?;
    if filters.is_empty() || record.kind == "clsact" {
        return Ok(false);
    }
    let links = chaos_netem::ingress::links(handle)
        .await
        .map_err(|e| e.to_string())?;
    Ok(filters.iter().all(|filter| {
        filter.redirect_to.is_some_and(|target| {
            links.iter().any(|l| {
                l.index == target
                    && l.is_ifb
                    && l.name.starts_with(chaos_netem::ingress::IFB_PREFIX)
            })
        })
    }))
}

/// Seeds ifb names: distinct across the faults of one agent, and across agents' runs.
fn ifb_seed() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    nanos ^ std::process::id().rotate_left(12) ^ COUNTER.fetch_add(0x9e37, Ordering::Relaxed)
}

async fn inspect(
    handle: &chaos_netem::Handle,
    wanted: Option<&str>,
    direction: Direction,
) -> Result<Inspected, AgentError> {
    let started = std::time::Instant::now();
    let internal = |e: chaos_netem::RouteError| AgentError::Internal(e.to_string());
    let key = match wanted {
        Some(name) => LinkKey::Name(name),
        None => LinkKey::Index(chaos_netem::default_route_interface(handle).await.map_err(
            |e| {
                AgentError::FailedPrecondition(format!(
                    "{e}: name the interface (network.interface)"
                ))
            },
        )?),
    };
    // The qdisc dump goes out together with the link get (a socket runs one dump at a
    // time, but a get may go alongside it): both answers come back in one pass.
    let (link, table) = futures::join!(
        chaos_netem::interface(handle, key),
        chaos_netem::qdisc::table(handle)
    );
    let (ifindex, ifname) = match (link.map_err(internal)?, key) {
        (Some(found), _) => found,
        (None, LinkKey::Index(ifindex)) => (ifindex, format!("ifindex {ifindex}")),
        (None, LinkKey::Name(name)) => {
            let links = chaos_netem::interfaces(handle).await.map_err(internal)?;
            return Err(AgentError::FailedPrecondition(format!(
                "the target's network namespace has no interface {name:?} (it has {})",
                links
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    let records = table.map_err(|e| qdisc_error(&ifname, e))?.of(ifindex);
    let located_at = started.elapsed();
    let mut snapshot = chaos_netem::qdisc::snapshot_of(handle, ifindex, records)
        .await
        .map_err(|e| qdisc_error(&ifname, e))?;
    tracing::debug!(
        locate_us = located_at.as_micros() as u64,
        snapshot_us = (started.elapsed() - located_at).as_micros() as u64,
        "network inspect phases"
    );
    // An ingress qdisc that only carries our own redirects belongs to an ingress fault,
    // which removes it itself: an egress fault must not re-create it on restore.
    if snapshot.ingress.is_some()
        && ingress_is_ours(handle, &snapshot)
            .await
            .map_err(|e| AgentError::Internal(format!("interface {ifname}: {e}")))?
    {
        snapshot.ingress = None;
    }
    let ingress = match direction {
        Direction::Egress => None,
        Direction::Ingress => {
            let mut attempt = 0;
            loop {
                let name = chaos_netem::ingress::ifb_name(ifb_seed());
                match chaos_netem::ingress::plan(handle, &snapshot, &name).await {
                    Ok(redirect) => break Some(redirect),
                    Err(IngressError::NameTaken(_)) if attempt < 3 => attempt += 1,
                    Err(e) => return Err(ingress_error(&ifname, e)),
                }
            }
        }
    };
    Ok(Inspected {
        ifindex,
        ifname,
        snapshot,
        ingress,
    })
}

/// One interface the fault acts on.
#[derive(Debug)]
struct InterfaceTarget {
    restore: QdiscRestore,
    /// Where the namespace was found at prepare time.
    path: PathBuf,
    /// The socket prepare opened in the namespace, reused by apply and closed after it.
    netlink: Option<NetnsHandle>,
    ifname: String,
    installed: bool,
    _claim: Claim,
}

/// The socket from prepare, or a new one in the fault's namespace if it still is there.
async fn connect<'a>(
    netlink: &'a mut Option<NetnsHandle>,
    netns: &NetnsRef,
    path: &Path,
) -> Result<&'a mut NetnsHandle, String> {
    if netlink.is_none() {
        match locate(netns, Some(path), Path::new("/proc")).await? {
            Located::Here(handle) => *netlink = Some(handle),
            Located::Gone(reason) => {
                return Err(format!("the network namespace is gone: {reason}"));
            }
        }
    }
    netlink
        .as_mut()
        .ok_or_else(|| "no netlink socket".to_string())
}

#[derive(Debug)]
pub struct NetworkFault {
    pub request: NetworkRequest,
    interfaces: Vec<InterfaceTarget>,
    status: api::NetworkStatus,
}

impl NetworkFault {
    /// Decides which interfaces, snapshots them, claims them. Changes nothing.
    pub async fn prepare(
        mut request: NetworkRequest,
        targets: &[Resolved],
        procfs: &Procfs,
        modules: &ModuleTree,
    ) -> Result<(NetworkFault, Vec<ProcessInfo>), AgentError> {
        request
            .impairment
            .validate()
            .map_err(|e| AgentError::invalid("network", e.to_string()))?;
        request
            .classifier
            .rules()
            .map_err(|e| AgentError::invalid("network.destinations", e.to_string()))?;

        // Each namespace is opened once: its scope is decided and its socket made through
        // the same descriptor, and the ones held here cannot vanish meanwhile, so equal
        // identities below are the same namespace.
        let (node, node_process) = open_node_netns(procfs)?;
        let agent = OpenNetns::open(&procfs.root().join("self/ns/net")).map_err(|e| {
            AgentError::Internal(format!(
                "cannot open the agent's own network namespace: {e}"
            ))
        })?;
        // (namespace, the process it was found through, what to call it)
        let mut namespaces: Vec<(OpenNetns, ProcessInfo, String)> = Vec::new();
        let mut seen = HashSet::new();
        match request.scope {
            Scope::Targets => {
                for target in targets {
                    let netns =
                        OpenNetns::open(&procfs.netns_path(target.init.pid)).map_err(|e| {
                            AgentError::FailedPrecondition(format!(
                                "cannot reach the network namespace of pid {}: {e}",
                                target.init.pid
                            ))
                        })?;
                    // Containers of one pod share the pod's namespace.
                    if seen.insert(netns.id()) {
                        namespaces.push((netns, target.init.clone(), target.spec.to_string()));
                    }
                }
            }
            Scope::Node => {
                // The process it was found through is not acted on, so it is not a
                // process the fault touches.
                let (netns, process) = open_node_netns(procfs)?;
                namespaces.push((netns, process, "the node".to_string()));
            }
        }
        if namespaces.is_empty() {
            return Err(AgentError::FailedPrecondition(
                "the target resolved to no network namespace".into(),
            ));
        }
        let mut node_scope = false;
        for (netns, _, label) in &namespaces {
            let scope = netns_scope(netns.id(), node.id(), agent.id(), request.node, label)?;
            node_scope |= scope == NetnsScope::Node;
        }
        if node_scope {
            // One classifier for every interface of the fault: the agent's port is then
            // also left alone on a pod's interface the same request names, which costs
            // that pod nothing.
            request.keep_reachable(request.node.agent_port);
        }
        drop((node, node_process, agent));
        require_modules(modules, &request).map_err(|e| match e {
            AgentError::FailedPrecondition(message) if node_scope => {
                AgentError::FailedPrecondition(format!(
                    "{message}; a fault on the node's network namespace keeps the agent's port {} \
                     reachable through prio and u32 filters",
                    request.node.agent_port
                ))
            }
            other => other,
        })?;

        let mut interfaces = Vec::new();
        let mut acts_on = Vec::new();
        for (netns, process, label) in namespaces {
            let started = std::time::Instant::now();
            let mut netlink = NetnsHandle::open_in(&netns)
                .await
                .map_err(|e| AgentError::FailedPrecondition(e.to_string()))?;
            let cookie = netlink.cookie();
            let opened_at = started.elapsed();
            let inspected = netlink
                .run(async |handle| {
                    inspect(handle, request.interface.as_deref(), request.direction).await
                })
                .await
                .map_err(|e| netlink_failed(&label, e))??;
            tracing::debug!(
                open_us = opened_at.as_micros() as u64,
                inspect_us = (started.elapsed() - opened_at).as_micros() as u64,
                "network prepare phases"
            );
            let ifname = inspected.ifname;
            if request.direction == Direction::Egress {
                if inspected.snapshot.root.is_ours() {
                    return Err(AgentError::FailedPrecondition(format!(
                        "interface {ifname} of {label} already carries a network fault; combine the impairments in one request"
                    )));
                }
                if let Some(reason) = inspected.snapshot.not_restorable_reason() {
                    return Err(AgentError::FailedPrecondition(format!(
                        "interface {ifname}: {reason}, which the agent could not restore exactly; refusing to replace it"
                    )));
                }
            }
            let ingress = request.direction == Direction::Ingress;
            let claim = Claim::take((netns.id(), cookie, inspected.ifindex, ingress))
                .ok_or_else(|| {
                    AgentError::FailedPrecondition(format!(
                        "interface {ifname} of {label} is already being faulted by another request; combine the impairments in one request"
                    ))
                })?;
            interfaces.push(InterfaceTarget {
                restore: QdiscRestore {
                    netns: NetnsRef {
                        pid: process.pid,
                        start_time: process.start_time,
                        id: netns.id(),
                        cookie,
                    },
                    ifindex: inspected.ifindex,
                    snapshot: inspected.snapshot,
                    ingress: inspected.ingress,
                },
                path: netns.path().to_path_buf(),
                netlink: Some(netlink),
                ifname,
                installed: false,
                _claim: claim,
            });
            if request.scope == Scope::Targets {
                acts_on.push(process);
            }
        }
        let status = api::NetworkStatus {
            interface: interface_names(&interfaces),
            installed: String::new(),
        };
        Ok((
            NetworkFault {
                request,
                interfaces,
                status,
            },
            acts_on,
        ))
    }

    /// For dry runs and logs.
    /// What prepare found, e.g. "would install netem on all traffic, egress, on 1
    /// interface(s): eth0" for `action` "install netem".
    pub fn summary(&self, action: &str) -> String {
        let what = if self.request.classifier.is_empty() {
            "on all traffic".to_string()
        } else {
            format!(
                "behind {} match and {} exclusion filter(s)",
                self.request.classifier.matches.len(),
                self.request.classifier.exclusions.len()
            )
        };
        let direction = match self.request.direction {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress (through an ifb)",
        };
        format!(
            "would {action} {what}, {direction}, on {} interface(s): {}",
            self.interfaces.len(),
            interface_names(&self.interfaces)
        )
    }

    /// Installs netem on every interface or on none.
    pub async fn apply(&mut self) -> Result<(), AgentError> {
        let applied = self.install_all().await;
        // Done with the namespaces until revert: let them go if their pods go.
        for target in &mut self.interfaces {
            target.netlink = None;
        }
        applied
    }

    async fn install_all(&mut self) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        for index in 0..self.interfaces.len() {
            if let Err(err) = self.install(index).await {
                if let Err(rollback) = self.revert().await {
                    tracing::error!(error = %rollback, "rollback of a partly applied network fault failed");
                    return Err(AgentError::Internal(format!(
                        "{err}; rolling back the interfaces already changed failed too: {rollback}"
                    )));
                }
                return Err(err);
            }
        }
        let installed_at = started.elapsed();
        self.read_back().await;
        tracing::debug!(
            install_us = installed_at.as_micros() as u64,
            read_back_us = (started.elapsed() - installed_at).as_micros() as u64,
            "network apply phases"
        );
        Ok(())
    }

    async fn install(&mut self, index: usize) -> Result<(), AgentError> {
        let target = &mut self.interfaces[index];
        let ifindex = target.restore.ifindex;
        let ifname = target.ifname.clone();
        let (impairment, classifier) = (&self.request.impairment, &self.request.classifier);
        let netlink = connect(&mut target.netlink, &target.restore.netns, &target.path)
            .await
            .map_err(|e| AgentError::FailedPrecondition(format!("interface {ifname}: {e}")))?;
        if let Some(redirect) = target.restore.ingress.as_mut() {
            let ifb = netlink
                .run(async |handle| {
                    chaos_netem::ingress::install(handle, ifindex, redirect, impairment, classifier)
                        .await
                })
                .await
                .map_err(|e| netlink_failed(&format!("interface {ifname}"), e))?
                .map_err(|e| ingress_error(&ifname, e))?;
            target.installed = true;
            // Journaled with the rest (see registry): tells our redirect from others'.
            redirect.ifb_index = Some(ifb);
            return Ok(());
        }
        let before = netlink
            .run(async |handle| {
                let mut before =
                    chaos_netem::tree::install(handle, ifindex, impairment, classifier).await?;
                // Same rule as in prepare: an ingress fault's own qdisc is not ours to
                // restore. Asked after the change, which did not touch the ingress side.
                if ingress_is_ours(handle, &before).await.unwrap_or(false) {
                    before.ingress = None;
                }
                Ok(before)
            })
            .await
            .map_err(|e| netlink_failed(&format!("interface {ifname}"), e))?
            .map_err(|e| tree_error(&ifname, e))?;
        target.installed = true;
        // The state right before our change is what must come back; if someone changed
        // the interface since prepare, the journal is rewritten with this (see registry).
        target.restore.snapshot = before;
        Ok(())
    }

    /// Reads what the kernel has now into the status (`installed`).
    pub async fn read_back(&mut self) {
        let mut described = Vec::new();
        let single = self.interfaces.len() == 1;
        for target in &mut self.interfaces {
            let ifindex = target.restore.ifindex;
            let redirect = target.restore.ingress.clone();
            let dump = match connect(&mut target.netlink, &target.restore.netns, &target.path).await
            {
                Ok(netlink) => netlink
                    .run(async |handle| read_installed(handle, ifindex, redirect.as_ref()).await)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|dumped| dumped),
                Err(e) => Err(e),
            };
            let text = dump.unwrap_or_else(|e| format!("dump failed: {e}"));
            described.push(if single {
                text
            } else {
                format!("{}: {text}", target.ifname)
            });
        }
        self.status.installed = described.join("; ");
    }

    /// Restores every interface this fault changed. A namespace or an interface that is
    /// gone took the qdisc with it and counts as restored; the status says which.
    pub async fn revert(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut notes = Vec::new();
        for target in self.interfaces.iter_mut().filter(|t| t.installed) {
            // A socket still open from this request (a rollback inside apply) is reused;
            // else the namespace is looked up again, as the journal replay does.
            let result = match target.netlink.as_mut() {
                Some(netlink) => {
                    let restore = &target.restore;
                    netlink
                        .run(async |handle| restore_with(handle, restore).await)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|restored| restored.map(Reverted::from))
                }
                None => {
                    restore_interface_async(&target.restore, Some(&target.path), Path::new("/proc"))
                        .await
                }
            };
            match result {
                Ok(reverted) => {
                    target.installed = false;
                    if reverted != Reverted::Restored {
                        notes.push(format!("{}: {}", target.ifname, reverted.describe()));
                    }
                }
                Err(e) => errors.push(format!("{}: {e}", target.ifname)),
            }
        }
        if errors.is_empty() {
            self.status.installed = if notes.is_empty() {
                "restored".into()
            } else {
                format!("restored; {}", notes.join("; "))
            };
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Whether an interface still carries what apply installed: after a failed apply,
    /// when its rollback failed too.
    pub fn holds_changes(&self) -> bool {
        self.interfaces.iter().any(|t| t.installed)
    }

    pub fn restores(&self) -> Vec<QdiscRestore> {
        self.interfaces.iter().map(|t| t.restore.clone()).collect()
    }

    pub fn status(&self) -> api::NetworkStatus {
        self.status.clone()
    }
}

fn interface_names(interfaces: &[InterfaceTarget]) -> String {
    interfaces
        .iter()
        .map(|t| t.ifname.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// What the kernel has installed for a fault on `ifindex`, decoded from dumps: the root
/// qdisc tree and its filters (egress), or the redirect filter and the ifb's tree (ingress).
async fn read_installed(
    handle: &chaos_netem::Handle,
    ifindex: u32,
    redirect: Option<&IngressRedirect>,
) -> Result<String, String> {
    let Some(redirect) = redirect else {
        return describe_tree(handle, ifindex).await;
    };
    let filters = chaos_netem::filter::dump(handle, ifindex, redirect.parent)
        .await
        .map_err(|e| e.to_string())?;
    let ours: Vec<String> = filters
        .iter()
        .filter(|f| f.pref == redirect.pref)
        .map(FilterView::describe)
        .collect();
    let links = chaos_netem::ingress::links(handle)
        .await
        .map_err(|e| e.to_string())?;
    let ifb = links
        .iter()
        .find(|l| l.name == redirect.ifb_name && l.is_ifb)
        .ok_or_else(|| format!("ifb {} is missing", redirect.ifb_name))?;
    Ok(format!(
        "{}: {}; {} (ifindex {}): {}",
        chaos_netem::ingress::describe_parent(redirect.parent),
        if ours.is_empty() {
            "redirect filter missing".to_string()
        } else {
            ours.join(", ")
        },
        ifb.name,
        ifb.index,
        describe_tree(handle, ifb.index).await?
    ))
}

/// The root qdisc, the impairing qdisc below it, and the root's filters, in words.
async fn describe_tree(handle: &chaos_netem::Handle, ifindex: u32) -> Result<String, String> {
    let views = chaos_netem::qdisc::dump(handle, ifindex)
        .await
        .map_err(|e| e.to_string())?;
    let mut text = describe_root(&views);
    let Some(root) = views
        .iter()
        .find(|v| v.record.parent == chaos_netem::qdisc::TC_H_ROOT)
    else {
        return Ok(text);
    };
    if root.record.kind != "prio" {
        return Ok(text);
    }
    if let Some(child) = views
        .iter()
        .find(|v| v.record.parent == chaos_netem::tree::NETEM_CLASS)
    {
        text += &format!(
            "; {}: {}",
            describe_handle(child.record.parent),
            describe_qdisc(child)
        );
    }
    let filters = chaos_netem::filter::dump(handle, ifindex, root.record.handle)
        .await
        .map_err(|e| e.to_string())?;
    if !filters.is_empty() {
        let described: Vec<String> = filters.iter().map(FilterView::describe).collect();
        text += &format!("; filters: {}", described.join(", "));
    }
    Ok(text)
}

fn describe_handle(handle: u32) -> String {
    format!("{:x}:{:x}", handle >> 16, handle & 0xffff)
}

/// The root qdisc in words, like `tc qdisc show` prints it.
pub fn describe_root(views: &[QdiscView]) -> String {
    let Some(root) = views
        .iter()
        .find(|v| v.record.parent == chaos_netem::qdisc::TC_H_ROOT)
    else {
        return "no root qdisc".into();
    };
    describe_qdisc(root)
}

fn describe_qdisc(view: &QdiscView) -> String {
    let handle = format!("{:x}:", view.record.handle >> 16);
    match (&view.netem, &view.tbf) {
        (Some(netem), _) => format!("netem {handle} {}", describe_netem(&netem.spec)),
        (None, Some(tbf)) => format!(
            "tbf {handle} rate {} burst {}b limit {}b",
            describe_rate(tbf.rate_bytes_per_sec),
            tbf.burst_bytes,
            tbf.limit_bytes
        ),
        (None, None) => format!("{} {handle}", view.record.kind),
    }
}

fn describe_netem(spec: &NetemSpec) -> String {
    let mut parts = vec![format!("limit {}", spec.limit_packets)];
    let ms = |us: u64| format!("{}ms", us as f64 / 1000.0);
    if spec.delay_us > 0 {
        let mut delay = format!("delay {}", ms(spec.delay_us));
        if spec.jitter_us > 0 {
            delay += &format!(" {}", ms(spec.jitter_us));
        }
        if spec.delay_correlation_pct > 0.0 {
            delay += &format!(" {:.4}%", spec.delay_correlation_pct);
        }
        parts.push(delay);
    }
    if let Some(distribution) = spec.distribution {
        parts.push(format!("distribution {distribution:?}").to_lowercase());
    }
    let percent = |name: &str, pct: f64, corr: f64| {
        if corr > 0.0 {
            format!("{name} {pct:.4}% {corr:.4}%")
        } else {
            format!("{name} {pct:.4}%")
        }
    };
    if spec.loss_pct > 0.0 {
        parts.push(percent("loss", spec.loss_pct, spec.loss_correlation_pct));
    }
    if spec.duplicate_pct > 0.0 {
        parts.push(percent(
            "duplicate",
            spec.duplicate_pct,
            spec.duplicate_correlation_pct,
        ));
    }
    if spec.reorder_pct > 0.0 {
        parts.push(format!(
            "{} gap {}",
            percent("reorder", spec.reorder_pct, spec.reorder_correlation_pct),
            spec.reorder_gap
        ));
    }
    if spec.corrupt_pct > 0.0 {
        parts.push(percent(
            "corrupt",
            spec.corrupt_pct,
            spec.corrupt_correlation_pct,
        ));
    }
    if spec.rate_bytes_per_sec > 0 {
        parts.push(format!("rate {}", describe_rate(spec.rate_bytes_per_sec)));
    }
    parts.join(" ")
}

/// A rate in bits per second as tc prints it; in bytes per second (tc's `Bps`) when the
/// bit rate does not fit 64 bits (validation refuses such requests, but a dump of a
/// qdisc someone else made may carry any rate).
fn describe_rate(bytes_per_second: u64) -> String {
    match bytes_per_second.checked_mul(8) {
        Some(bits) => format!("{bits}bit"),
        None => format!("{bytes_per_second}Bps"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> api::NetworkFault {
        api::NetworkFault {
            delay_us: 100_000,
            jitter_us: 10_000,
            distribution: api::Distribution::Normal as i32,
            loss_percent: 5.0,
            reorder_percent: 25.0,
            ..Default::default()
        }
    }

    #[test]
    fn the_request_maps_onto_a_netem_spec() {
        let spec = netem_spec(&request());
        assert_eq!(spec.delay_us, 100_000);
        assert_eq!(spec.jitter_us, 10_000);
        assert_eq!(spec.distribution, Some(Distribution::Normal));
        assert_eq!(spec.loss_pct, 5.0);
        // tc's rule: a reorder without gap reorders any packet (gap 1).
        assert_eq!(spec.reorder_gap, 1);
        assert_eq!(
            spec.limit_packets,
            chaos_netem::codec::DEFAULT_LIMIT_PACKETS
        );
        assert!(spec.validate().is_ok());
        let uniform = api::NetworkFault {
            distribution: api::Distribution::Uniform as i32,
            ..request()
        };
        assert_eq!(netem_spec(&uniform).distribution, None);
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn no_targeting_is_plain_netem() {
        let plan = NetworkPlan {
            request: request(),
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        let wanted = network_request(&plan);
        assert!(wanted.classifier.is_empty());
        assert_eq!(wanted.direction, Direction::Egress);
        assert_eq!(wanted.required_modules(), vec!["sch_netem"]);
    }

    #[test]
    fn targeting_is_a_product_of_destinations_ports_and_protocols() {
        let targeted = classifier(
            End::Destination,
            &[cidr("10.0.0.0/8"), cidr("192.168.1.1")],
            &[5432],
            api::Protocol::Any,
            &[cidr("10.9.0.0/16")],
            &[53],
        );
        // 2 destinations x 1 port x (tcp, udp)
        assert_eq!(targeted.matches.len(), 4);
        assert!(
            targeted
                .matches
                .iter()
                .all(|m| m.port == Some((End::Destination, 5432)))
        );
        // one network + port 53 over tcp and udp
        assert_eq!(targeted.exclusions.len(), 3);
        let rules = targeted.rules().unwrap();
        assert_eq!(rules[0].selector.describe(), "dst 10.9.0.0/16");
        assert_eq!(rules[1].selector.describe(), "proto 6 dport 53");
        assert_eq!(
            rules[3].selector.describe(),
            "proto 6 dst 10.0.0.0/8 dport 5432"
        );
        // A protocol alone, no ports: one match on the protocol.
        let icmp = classifier_for_protocol(api::Protocol::Icmp);
        assert_eq!(icmp.matches.len(), 1);
        assert_eq!(icmp.matches[0].protocol, Some(IPPROTO_ICMP));
        // Exclusions alone: everything else is impaired (one match-all).
        let only_exclusions =
            classifier(End::Destination, &[], &[], api::Protocol::Any, &[], &[7090]);
        assert_eq!(only_exclusions.matches, vec![TrafficMatch::default()]);
    }

    fn classifier_for_protocol(protocol: api::Protocol) -> Classifier {
        classifier(End::Destination, &[], &[], protocol, &[], &[])
    }

    #[test]
    fn ingress_matches_the_remote_end_and_needs_ifb_and_mirred() {
        let plan = NetworkPlan {
            request: api::NetworkFault {
                direction: api::Direction::Ingress as i32,
                ports: vec![5432],
                protocol: api::Protocol::Tcp as i32,
                destinations: vec!["10.1.2.3".into()],
                ..request()
            },
            destinations: vec![cidr("10.1.2.3")],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        let wanted = network_request(&plan);
        assert_eq!(wanted.direction, Direction::Ingress);
        assert_eq!(wanted.classifier.matches[0].port, Some((End::Source, 5432)));
        assert_eq!(
            wanted.required_modules(),
            vec![
                "sch_netem",
                "sch_prio",
                "cls_u32",
                "sch_ingress",
                "ifb",
                "act_mirred"
            ]
        );
    }

    #[test]
    fn blackholes_drop_everything_and_node_scope_keeps_the_agent_port() {
        let plain = blackhole_request(&BlackholePlan {
            destinations: vec![],
            ports: vec![],
            node_scope: false,
            node: NodeNetworkPolicy::default(),
            interface: String::new(),
        });
        assert_eq!(plain.interface, None);
        match &plain.impairment {
            Impairment::Netem(spec) => assert_eq!(spec.loss_pct, 100.0),
            other => panic!("a blackhole is netem loss, got {other:?}"),
        }
        assert!(plain.classifier.is_empty());
        assert_eq!(plain.scope, Scope::Targets);
        let mut node = blackhole_request(&BlackholePlan {
            destinations: vec![],
            ports: vec![],
            node_scope: true,
            node: NodeNetworkPolicy {
                allowed: true,
                agent_port: 7090,
            },
            interface: "ens6".into(),
        });
        assert_eq!(node.scope, Scope::Node);
        assert_eq!(node.interface.as_deref(), Some("ens6"));
        // What prepare does once it sees the node's namespace; twice changes nothing.
        node.keep_reachable(node.node.agent_port);
        node.keep_reachable(node.node.agent_port);
        assert_eq!(node.classifier.matches, vec![TrafficMatch::default()]);
        let kept: Vec<String> = node
            .classifier
            .rules()
            .unwrap()
            .iter()
            .filter(|r| r.classid == chaos_netem::tree::UNTOUCHED_CLASS)
            .map(|r| r.selector.describe())
            .collect();
        assert_eq!(kept, vec!["proto 6 sport 7090", "proto 6 dport 7090"]);
    }

    #[test]
    fn a_rate_alone_is_a_tbf_and_a_rate_among_other_impairments_is_netem() {
        let rate_only = api::NetworkFault {
            rate_bytes_per_second: 1_000_000,
            ..Default::default()
        };
        assert_eq!(
            impairment(&rate_only),
            Impairment::Tbf(TbfSpec::for_rate(1_000_000))
        );
        let with_delay = api::NetworkFault {
            delay_us: 1_000,
            ..rate_only.clone()
        };
        match impairment(&with_delay) {
            Impairment::Netem(spec) => {
                assert_eq!((spec.delay_us, spec.rate_bytes_per_sec), (1_000, 1_000_000))
            }
            other => panic!("expected netem, got {other:?}"),
        }
        assert!(matches!(impairment(&request()), Impairment::Netem(_)));
    }

    #[test]
    fn a_bandwidth_limit_needs_tbf_and_not_netem() {
        // A kernel like the build host's: tbf built in, no netem anywhere.
        let (_dir, tree) = module_tree("kernel/net/sched/sch_tbf.ko\n", "");
        let plan = |request: api::NetworkFault| NetworkPlan {
            request,
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        let rate_only = network_request(&plan(api::NetworkFault {
            rate_bytes_per_second: 125_000,
            ..Default::default()
        }));
        assert_eq!(rate_only.required_modules(), vec!["sch_tbf"]);
        assert_eq!(require_modules(&tree, &rate_only), Ok(()));
        let delayed = network_request(&plan(api::NetworkFault {
            delay_us: 1_000,
            rate_bytes_per_second: 125_000,
            ..Default::default()
        }));
        assert!(matches!(
            require_modules(&tree, &delayed),
            Err(AgentError::FailedPrecondition(message)) if message.contains("sch_netem")
        ));
        // Without tbf either, the limit names what it misses.
        let (_dir, bare) = module_tree("", "");
        match require_modules(&bare, &rate_only) {
            Err(AgentError::FailedPrecondition(message)) => {
                assert!(
                    message.contains("sch_tbf") && message.contains("bandwidth"),
                    "{message}"
                )
            }
            other => panic!("expected FailedPrecondition, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_prio_is_named_before_anything_changes() {
        let (_dir, tree) = module_tree(
            "",
            "kernel/net/sched/sch_netem.ko:\nkernel/net/sched/cls_u32.ko:\n",
        );
        let plan = NetworkPlan {
            request: api::NetworkFault {
                ports: vec![80],
                ..request()
            },
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        match require_modules(&tree, &network_request(&plan)) {
            Err(AgentError::FailedPrecondition(message)) => {
                assert!(message.contains("sch_prio"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            require_modules(
                &tree,
                &network_request(&NetworkPlan {
                    request: request(),
                    destinations: vec![],
                    exclude_destinations: vec![],
                    node: NodeNetworkPolicy::default(),
                })
            ),
            Ok(())
        );
    }

    #[test]
    fn loaded_modules_pass_without_reading_the_module_index() {
        let (_dir, tree) = module_tree("", "");
        for module in ["sch_netem", "sch_prio", "cls_u32"] {
            std::fs::create_dir(tree.sys_module_dir.join(module)).unwrap();
        }
        // An index that cannot be read: require_netem fails if it has to consult it.
        std::fs::remove_file(tree.lib_modules_dir.join("modules.builtin")).unwrap();
        std::fs::create_dir(tree.lib_modules_dir.join("modules.builtin")).unwrap();
        let targeted = NetworkPlan {
            request: api::NetworkFault {
                ports: vec![80],
                ..request()
            },
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        assert_eq!(require_modules(&tree, &network_request(&targeted)), Ok(()));
        // The same tree with netem not loaded consults the index, which fails.
        std::fs::remove_dir(tree.sys_module_dir.join("sch_netem")).unwrap();
        assert!(matches!(
            require_netem(&tree),
            Err(AgentError::FailedPrecondition(message)) if message.contains("cannot tell")
        ));
    }

    fn module_tree(builtin: &str, dep: &str) -> (tempfile::TempDir, ModuleTree) {
        let dir = tempfile::tempdir().unwrap();
        let tree = ModuleTree {
            sys_module_dir: dir.path().join("sys"),
            lib_modules_dir: dir.path().join("lib"),
        };
        std::fs::create_dir_all(&tree.sys_module_dir).unwrap();
        std::fs::create_dir_all(&tree.lib_modules_dir).unwrap();
        std::fs::write(tree.lib_modules_dir.join("modules.builtin"), builtin).unwrap();
        std::fs::write(tree.lib_modules_dir.join("modules.dep"), dep).unwrap();
        (dir, tree)
    }

    #[test]
    fn a_kernel_without_netem_is_a_failed_precondition_with_the_fix() {
        let (_dir, tree) = module_tree("kernel/net/sched/sch_tbf.ko\n", "");
        match require_netem(&tree) {
            Err(AgentError::FailedPrecondition(message)) => {
                assert!(message.contains("sch_netem"), "{message}");
                assert!(message.contains("kernel-modules-extra"), "{message}");
            }
            other => panic!("expected FailedPrecondition, got {other:?}"),
        }
        let (_dir, tree) = module_tree("", "kernel/net/sched/sch_netem.ko.xz:\n");
        assert_eq!(require_netem(&tree), Ok(()));
    }

    #[test]
    fn claims_are_exclusive_and_released_on_drop() {
        let key = (NetnsId { dev: 7, ino: 99 }, Some(41), 3, false);
        let first = Claim::take(key).unwrap();
        assert!(Claim::take(key).is_none());
        // A newer namespace at the same inode (another cookie) is another interface.
        let successor = Claim::take((NetnsId { dev: 7, ino: 99 }, Some(42), 3, false));
        assert!(successor.is_some());
        drop(first);
        assert!(Claim::take(key).is_some());
    }

    #[test]
    fn keeping_the_agent_reachable_puts_a_rate_behind_exclusions_that_need_prio() {
        let mut rate_only = network_request(&NetworkPlan {
            request: api::NetworkFault {
                rate_bytes_per_second: 125_000,
                ..Default::default()
            },
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        });
        assert_eq!(rate_only.required_modules(), vec!["sch_tbf"]);
        rate_only.keep_reachable(7443);
        assert_eq!(
            rate_only.required_modules(),
            vec!["sch_tbf", "sch_prio", "cls_u32"]
        );
        let rules: Vec<String> = rate_only
            .classifier
            .rules()
            .unwrap()
            .iter()
            .map(|r| r.selector.describe())
            .collect();
        assert_eq!(
            rules,
            vec!["proto 6 sport 7443", "proto 6 dport 7443", "all"]
        );
        // A targeted request keeps its matches; the exclusions go first.
        let mut targeted = network_request(&NetworkPlan {
            request: api::NetworkFault {
                ports: vec![5432],
                protocol: api::Protocol::Tcp as i32,
                ..request()
            },
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        });
        targeted.keep_reachable(7090);
        assert_eq!(targeted.classifier.matches.len(), 1);
        assert_eq!(targeted.classifier.exclusions.len(), 2);
    }

    #[test]
    fn rates_are_described_in_bits_unless_the_bits_overflow() {
        assert_eq!(describe_rate(1_000_000), "8000000bit");
        assert_eq!(
            describe_rate(u64::MAX / 8),
            format!("{}bit", u64::MAX / 8 * 8)
        );
        assert_eq!(describe_rate(u64::MAX), format!("{}Bps", u64::MAX));
        let netem = NetemSpec {
            rate_bytes_per_sec: u64::MAX,
            ..NetemSpec::default()
        };
        assert!(describe_netem(&netem).ends_with(&format!("rate {}Bps", u64::MAX)));
    }

    #[test]
    fn describes_netem_like_tc() {
        let spec = NetemSpec {
            delay_us: 100_000,
            jitter_us: 10_000,
            loss_pct: 5.0,
            ..NetemSpec::default()
        };
        assert_eq!(
            describe_netem(&spec),
            "limit 1000 delay 100ms 10ms loss 5.0000%"
        );
    }
}
