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
//!
//! Where what is:
//! - this file: `NetworkFault`, its lifecycle (prepare, apply, read back, revert);
//! - `plan`: what a request asks of the kernel, decided from the validated plan (pure);
//! - `kernel_modules`: whether this kernel has the modules a request needs;
//! - `scope`: whose namespace it is (a pod's, the node's, the agent's own);
//! - `claim`: one fault per interface and direction, across this agent's faults;
//! - `install`: what an interface has now, inside its namespace, and the socket to it;
//! - `errors`: what the kernel's refusals mean to a client;
//! - `describe`: what is installed, read back and put in words;
//! - `kind`: the network kind as the agent holds it (its entry in `faults::KINDS`, the
//!   `Fault` implementation) and the journal form and replay shared with blackholes;
//! - `record`: what the journal records (`QdiscRestore`, `NetnsRef`);
//! - `restore`: putting an interface back, from a revert or the journal replay.

mod claim;
mod describe;
mod errors;
mod install;
mod kernel_modules;
mod kind;
mod plan;
mod record;
mod restore;
pub(crate) mod scope;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chaos_netem::capabilities::ModuleTree;
use chaos_netem::{NetnsHandle, OpenNetns};
use chaos_proto::api;

use crate::error::AgentError;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::Resolved;

use crate::resolve::{open_node_netns, open_node_netns_only};
use claim::Claim;
use describe::read_installed;
use errors::{ingress_error, netlink_failed, tree_error};
use install::{Interfaces, connect, ingress_is_ours, inspect};
use restore::{restore_interface_async, restore_with};

pub use describe::describe_root;
pub use kernel_modules::{NETEM_MISSING_HINT, require_modules, require_netem};
pub use kind::{CAPABILITIES, KIND, NetworkUndo, prepare, prepare_request, replay};
pub use plan::{
    AskedSizes, Direction, NetworkRequest, Scope, blackhole_request, classifier, impairment,
    netem_spec, network_request, rate_alone,
};
pub use record::{NetnsRef, QdiscRestore};
pub use restore::{Reverted, restore_interface};
pub use scope::{NetnsScope, netns_scope};

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
        node_pid: u32,
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
        let node = open_node_netns_only(procfs, node_pid)?;
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
                let (netns, process) = open_node_netns(procfs, node_pid)?;
                namespaces.push((netns, process, "the node".to_string()));
            }
        }
        if namespaces.is_empty() {
            return Err(AgentError::FailedPrecondition(
                "the target resolved to no network namespace".into(),
            ));
        }
        let mut scopes = Vec::with_capacity(namespaces.len());
        for (netns, _, label) in &namespaces {
            scopes.push(netns_scope(
                netns.id(),
                node.id(),
                agent.id(),
                request.node,
                label,
            )?);
        }
        let node_scope = scopes.contains(&NetnsScope::Node);
        if node_scope {
            // One classifier for every interface of the fault: the agent's port is then
            // also left alone on a pod's interface the same request names, which costs
            // that pod nothing.
            request.keep_reachable(request.node.agent_port);
        }
        drop((node, agent));
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
        for ((netns, process, label), scope) in namespaces.into_iter().zip(scopes) {
            let which = Interfaces::choose(request.interface.as_deref(), scope == NetnsScope::Node);
            let started = std::time::Instant::now();
            let mut netlink = NetnsHandle::open_in(&netns)
                .await
                .map_err(|e| AgentError::FailedPrecondition(e.to_string()))?;
            let cookie = netlink.cookie();
            let opened_at = started.elapsed();
            let direction = request.direction;
            let inspected = netlink
                .run(async |handle| inspect(handle, which, direction).await)
                .await
                .map_err(|e| netlink_failed(&label, e))??;
            tracing::debug!(
                open_us = opened_at.as_micros() as u64,
                inspect_us = (started.elapsed() - opened_at).as_micros() as u64,
                "network prepare phases"
            );
            // One socket per interface: each target drives its own in apply and revert.
            let mut netlink = Some(netlink);
            for found in inspected {
                let socket = match netlink.take() {
                    Some(socket) => socket,
                    None => NetnsHandle::open_in(&netns)
                        .await
                        .map_err(|e| AgentError::FailedPrecondition(e.to_string()))?,
                };
                let ifname = found.ifname;
                check_frame_fits(&request, found.mtu, &ifname, &label)?;
                if request.direction == Direction::Egress {
                    if found.snapshot.root.is_ours() {
                        return Err(AgentError::FailedPrecondition(format!(
                            "interface {ifname} of {label} already carries a network fault; combine the impairments in one request"
                        )));
                    }
                    if let Some(reason) = found.snapshot.not_restorable_reason() {
                        return Err(AgentError::FailedPrecondition(format!(
                            "interface {ifname}: {reason}, which the agent could not restore exactly; refusing to replace it"
                        )));
                    }
                }
                let ingress = request.direction == Direction::Ingress;
                let claim = Claim::take((netns.id(), cookie, found.ifindex, ingress))
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
                        ifindex: found.ifindex,
                        snapshot: found.snapshot,
                        ingress: found.ingress,
                    },
                    path: netns.path().to_path_buf(),
                    netlink: Some(socket),
                    ifname,
                    installed: false,
                    _claim: claim,
                });
            }
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
            // Kernel filters: a match without an address is one per IP family.
            let filters = |matches: &[chaos_netem::u32::TrafficMatch]| -> usize {
                matches.iter().map(|m| m.families().len()).sum()
            };
            format!(
                "behind {} match and {} exclusion filter(s)",
                filters(&self.request.classifier.matches),
                filters(&self.request.classifier.exclusions)
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

/// A tbf bucket or queue the request set must hold one full frame of the interface (its
/// MTU plus the link header, as the kernel's `psched_mtu` counts): tbf drops a packet
/// larger than its bucket that it cannot segment, and a packet larger than the queue
/// never enters it, so a smaller size would drop every full-size packet instead of
/// limiting the rate. On ingress the frames come from this interface through the ifb.
/// The agent's own defaults are not checked here: they are what they always were.
fn check_frame_fits(
    request: &NetworkRequest,
    mtu: Option<u32>,
    ifname: &str,
    label: &str,
) -> Result<(), AgentError> {
    let (chaos_netem::Impairment::Tbf(spec), Some(mtu)) = (&request.impairment, mtu) else {
        return Ok(());
    };
    let frame = u64::from(mtu) + u64::from(chaos_netem::tbf::LINK_HEADER_BYTES);
    let sizes = [
        (
            request.asked.burst,
            "network.rate_burst_bytes",
            spec.burst_bytes,
            "bucket",
        ),
        (
            request.asked.queue,
            "network.rate_queue_bytes",
            spec.limit_bytes,
            "queue",
        ),
    ];
    for (asked, field, bytes, what) in sizes {
        if asked && u64::from(bytes) < frame {
            return Err(AgentError::invalid(
                field,
                format!(
                    "{bytes} bytes is less than one full frame of interface {ifname} of {label} \
                     ({frame} bytes: MTU {mtu} + {} of link header); a {what} that small would \
                     drop every full-size packet",
                    chaos_netem::tbf::LINK_HEADER_BYTES
                ),
            ));
        }
    }
    Ok(())
}

fn interface_names(interfaces: &[InterfaceTarget]) -> String {
    interfaces
        .iter()
        .map(|t| t.ifname.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{NetworkPlan, NodeNetworkPolicy};

    fn sized(burst: u64, queue: u64) -> NetworkRequest {
        network_request(&NetworkPlan {
            request: api::NetworkFault {
                rate_bytes_per_second: 250_000,
                rate_burst_bytes: burst,
                rate_queue_bytes: queue,
                ..Default::default()
            },
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        })
    }

    #[test]
    fn a_bucket_or_queue_the_request_set_must_hold_a_full_frame() {
        let check =
            |request: &NetworkRequest, mtu| check_frame_fits(request, mtu, "eth0", "pod:a/b");
        // 1500 + 14: exactly one frame is enough.
        assert!(check(&sized(1514, 1514), Some(1500)).is_ok());
        match check(&sized(1513, 0), Some(1500)) {
            Err(AgentError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "network.rate_burst_bytes");
                assert!(
                    reason.contains("1513 bytes") && reason.contains("1514 bytes: MTU 1500"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        match check(&sized(0, 1000), Some(1500)) {
            Err(AgentError::InvalidArgument { field, .. }) => {
                assert_eq!(field, "network.rate_queue_bytes")
            }
            other => panic!("{other:?}"),
        }
        // lo's 65536 MTU: a 16 KiB bucket of our own default is left as it always was,
        // one the request set is held to the frame.
        assert!(check(&sized(0, 70_000), Some(65_536)).is_ok());
        assert!(check(&sized(20_000, 0), Some(65_536)).is_err());
        // Without sizes of its own, and for netem, nothing to check.
        assert!(check(&sized(0, 0), Some(9000)).is_ok());
        assert!(check(&sized(100, 100), None).is_ok());
    }
}
