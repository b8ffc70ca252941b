//! The DNS kind: lookups from the targets' network namespaces faulted by name (see
//! `crate::dns` for the responder and the redirect).
//!
//! - `prepare` opens each distinct namespace of the targets once, refuses the node's (a
//!   hostNetwork pod, a process of the node: the node's own lookups would be faulted, and no
//!   flag permits it) and the agent's own, reads each target's nameservers from its
//!   `/etc/resolv.conf`, and makes the namespace's nftables socket, through which it checks
//!   that no DNS fault is there already. Nothing changes yet.
//! - `apply` starts, per namespace and nameserver, a responder on a loopback port inside the
//!   namespace, then installs the redirect of that namespace's port-53 traffic to those ports
//!   in one nftables batch, and reads it back. Responders first: no query is ever redirected
//!   to a port where nothing listens. A failure undoes what was done.
//! - `revert` removes the redirect first (lookups go straight to the nameservers again), then
//!   stops the responders. The table is owned by the fault's nftables socket where the kernel
//!   supports it (5.12+), so an agent that dies takes the redirect with it; the journal's
//!   replay removes it on older kernels, in the recorded namespace only (found by inode,
//!   confirmed by cookie).
//! - The sockets the fault holds (responders, nftables) keep its namespaces alive, so the
//!   fault watches its targets' inits and ends when one exits: a deleted pod's namespace is
//!   let go within a poll, not at the deadline.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use chaos_netem::{OpenNetns, make_socket_in, socket_netns_cookie};
use chaos_proto::api;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::capabilities::Capability;
use crate::dns::redirect::{
    BYPASS_MARK, DNS_PORT, Netfilter, Redirect, RedirectError, loopback_of, netfilter_socket,
};
use crate::dns::resolv_conf::{nameservers, read_in_root};
use crate::dns::responder::{
    Config, Counters, Responder, Transport, UpstreamSockets, upstream_socket,
};
use crate::dns::rules::Rules;
use crate::error::AgentError;
use crate::faults::network::NetnsRef;
use crate::faults::target_fs::root_of;
use crate::faults::target_watch::TargetWatch;
use crate::faults::{Fault, KindInfo, PrepareContext, Prepared};
use crate::journal::UndoRecord;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::{Resolved, open_node_netns};
use crate::target::TargetSpec;
use crate::validate::DnsPlan;

pub const CAPABILITIES: &[(Capability, &str)] = &[
    (
        Capability::SysPtrace,
        "to open the target's /proc/PID/ns/net and read its /etc/resolv.conf",
    ),
    (
        Capability::SysAdmin,
        "to enter the target's network namespace (setns) for the responder's sockets",
    ),
    (
        Capability::NetAdmin,
        "to install the nftables redirect and mark the responder's own queries (SO_MARK)",
    ),
];

pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::Dns,
    capabilities: CAPABILITIES,
    replay,
    node_lacks: crate::faults::lacks_nothing,
};

/// How long a responder waits for the nameserver's answer to one forwarded query: about
/// a resolver's own patience for one try (glibc: 5 s).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the status (the responders' counters) is refreshed, as other kinds' read-backs.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The journal form: the namespaces whose redirect to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DnsUndo {
    RemoveDnsRedirect { namespaces: Vec<NetnsRef> },
}

/// One namespace the fault acts in.
#[derive(Debug)]
struct Namespace {
    netns: Arc<OpenNetns>,
    reference: NetnsRef,
    label: String,
    nameservers: Vec<IpAddr>,
    /// The namespace's nftables socket: made at prepare, kept to the end (an owned table
    /// lives as long as it).
    netfilter: Option<Netfilter>,
    responders: Vec<Responder>,
    redirects: Vec<Redirect>,
    installed: bool,
}

#[derive(Debug)]
pub struct DnsFault {
    rules: Rules,
    namespaces: Vec<Namespace>,
    counters: Arc<Counters>,
    watch: TargetWatch,
    /// A failed rollback left a redirect behind: revert is retried.
    holds: bool,
}

/// Decides the namespaces and their nameservers; changes nothing.
pub async fn prepare(
    plan: &DnsPlan,
    spec: &TargetSpec,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let procfs = &context.resolver.procfs;
    let (node, _) = open_node_netns(procfs, context.resolver.node_pid)?;
    let agent = OpenNetns::open(&procfs.root().join("self/ns/net")).map_err(|e| {
        AgentError::Internal(format!(
            "cannot open the agent's own network namespace: {e}"
        ))
    })?;
    let mut namespaces: Vec<Namespace> = Vec::new();
    let mut acts_on = Vec::new();
    for target in targets {
        let label = target.spec.to_string();
        let netns = OpenNetns::open(&procfs.netns_path(target.init.pid)).map_err(|e| {
            AgentError::FailedPrecondition(format!(
                "cannot reach the network namespace of pid {}: {e}",
                target.init.pid
            ))
        })?;
        refuse_shared_namespace(netns.id() == node.id(), netns.id() == agent.id(), &label)?;
        let text = read_in_root(&root_of(procfs, target.init.pid))
            .map_err(|e| AgentError::FailedPrecondition(format!("{label}: {e}")))?;
        let found = nameservers(&text)
            .map_err(|e| AgentError::FailedPrecondition(format!("{label}: {e}")))?;
        acts_on.push(target.init.clone());
        // Containers of one pod share its namespace (and, in Kubernetes, its resolv.conf):
        // the namespace's redirect covers every nameserver any of them names.
        if let Some(known) = namespaces.iter_mut().find(|n| n.netns.id() == netns.id()) {
            for address in found {
                if !known.nameservers.contains(&address) {
                    known.nameservers.push(address);
                }
            }
            continue;
        }
        let fd = make_socket_in(&netns, Box::new(netfilter_socket))
            .await
            .map_err(|e| AgentError::FailedPrecondition(format!("{label}: {e}")))?;
        let cookie = socket_netns_cookie(&fd).map_err(|e| {
            AgentError::Internal(format!("{label}: cannot read the namespace's cookie: {e}"))
        })?;
        let mut netfilter = Netfilter::from_fd(fd);
        if netfilter
            .installed()
            .map_err(|e| redirect_error(&label, e))?
            .is_some()
        {
            return Err(AgentError::FailedPrecondition(format!(
                "{label}: its network namespace already carries a DNS fault; combine the rules in one request"
            )));
        }
        namespaces.push(Namespace {
            reference: NetnsRef {
                pid: target.init.pid,
                start_time: target.init.start_time,
                id: netns.id(),
                cookie,
            },
            netns: Arc::new(netns),
            label,
            nameservers: found,
            netfilter: Some(netfilter),
            responders: Vec::new(),
            redirects: Vec::new(),
            installed: false,
        });
    }
    if namespaces.is_empty() {
        return Err(AgentError::FailedPrecondition(
            "the target resolved to no network namespace".into(),
        ));
    }
    let fault = DnsFault {
        rules: plan.rules.clone(),
        namespaces,
        counters: Arc::default(),
        watch: TargetWatch::of(spec, targets, procfs),
        holds: false,
    };
    Ok(Prepared {
        plan_summary: fault.summary(),
        acts_on,
        fault: Box::new(fault),
    })
}

/// The node's namespace and the agent's own are never a DNS fault's: the first is the
/// node's own name resolution, the second the agent's. Pure.
fn refuse_shared_namespace(is_node: bool, is_agent: bool, label: &str) -> Result<(), AgentError> {
    if is_node {
        return Err(AgentError::PermissionDenied(format!(
            "{label} shares the node's network namespace (a hostNetwork pod or a process of the \
             node): a DNS fault there would fault the node's own lookups (kubelet, the container \
             runtime), and is never permitted"
        )));
    }
    if is_agent {
        return Err(AgentError::PermissionDenied(format!(
            "{label} is in the agent's own network namespace: a DNS fault there would fault the \
             agent's own lookups, and is never permitted"
        )));
    }
    Ok(())
}

/// The kernel's refusals in a client's words.
fn redirect_error(label: &str, error: RedirectError) -> AgentError {
    if matches!(error, RedirectError::Exists) {
        return AgentError::FailedPrecondition(format!(
            "{label}: its network namespace already carries a DNS fault (table inet chaos_dns); \
             combine the rules in one request"
        ));
    }
    let lacking = [
        libc::ENOENT,
        libc::EOPNOTSUPP,
        libc::EPROTONOSUPPORT,
        libc::EAFNOSUPPORT,
    ];
    let message = format!("{label}: {error}");
    match error.errno() {
        Some(errno) if lacking.contains(&errno) => AgentError::FailedPrecondition(format!(
            "{message}; the node's kernel lacks nftables NAT or conntrack over netlink (nf_tables, \
             nft_chain_nat, nft_nat, nf_conntrack_netlink)"
        )),
        _ => AgentError::Internal(message),
    }
}

/// Sockets to the nameservers made inside the target's namespace, marked so that the
/// redirect lets them through: a forwarded query leaves from the pod, as it would have.
#[derive(Debug)]
struct NamespaceSockets {
    netns: Arc<OpenNetns>,
}

impl UpstreamSockets for NamespaceSockets {
    fn socket(
        &self,
        upstream: SocketAddr,
        transport: Transport,
    ) -> BoxFuture<'_, io::Result<OwnedFd>> {
        Box::pin(async move {
            make_socket_in(
                &self.netns,
                Box::new(move || upstream_socket(upstream, transport, Some(BYPASS_MARK))),
            )
            .await
            .map_err(io::Error::other)
        })
    }
}

/// A responder's two sockets on one loopback port of the namespace: TCP on a free port,
/// then UDP on the same (which another may hold: then again).
async fn responder_sockets(
    netns: &OpenNetns,
    address: IpAddr,
) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last = None;
    for _ in 0..8 {
        let tcp = make_socket_in(
            netns,
            Box::new(move || {
                let listener = std::net::TcpListener::bind((address, 0))?;
                Ok(listener.into())
            }),
        )
        .await
        .map_err(io::Error::other)?;
        let tcp = std::net::TcpListener::from(tcp);
        let port = tcp.local_addr()?.port();
        let udp = make_socket_in(
            netns,
            Box::new(move || Ok(std::net::UdpSocket::bind((address, port))?.into())),
        )
        .await;
        match udp {
            Ok(udp) => return Ok((std::net::UdpSocket::from(udp), tcp)),
            Err(error) => last = Some(error),
        }
    }
    Err(io::Error::other(format!(
        "no loopback port free for both UDP and TCP: {}",
        last.map_or_else(String::new, |e| e.to_string())
    )))
}

impl DnsFault {
    fn summary(&self) -> String {
        let nameservers: Vec<String> = self
            .namespaces
            .iter()
            .flat_map(|n| n.nameservers.iter().map(|a| format!("{a} ({})", n.label)))
            .collect();
        format!(
            "would redirect DNS (UDP and TCP port {DNS_PORT}) of {} network namespace(s) to a responder \
             with {} rule(s); nameservers: {}",
            self.namespaces.len(),
            self.rules.rules().len(),
            nameservers.join(", ")
        )
    }

    async fn apply_all(&mut self) -> Result<(), AgentError> {
        for index in 0..self.namespaces.len() {
            self.apply_one(index).await?;
        }
        Ok(())
    }

    async fn apply_one(&mut self, index: usize) -> Result<(), AgentError> {
        let rules = self.rules.clone();
        let counters = self.counters.clone();
        let namespace = &mut self.namespaces[index];
        let label = namespace.label.clone();
        for nameserver in namespace.nameservers.clone() {
            let (udp, tcp) = responder_sockets(&namespace.netns, loopback_of(nameserver))
                .await
                .map_err(|e| {
                    AgentError::Internal(format!(
                        "{label}: cannot open the responder's sockets in its namespace: {e}"
                    ))
                })?;
            let config = Config {
                rules: rules.clone(),
                upstream: SocketAddr::new(nameserver, DNS_PORT),
                upstream_timeout: UPSTREAM_TIMEOUT,
                sockets: Arc::new(NamespaceSockets {
                    netns: namespace.netns.clone(),
                }),
                counters: counters.clone(),
            };
            let responder = Responder::from_std(udp, tcp, config)
                .map_err(|e| AgentError::Internal(format!("{label}: {e}")))?;
            namespace.redirects.push(Redirect {
                nameserver,
                port: responder.local_addr().port(),
            });
            namespace.responders.push(responder);
        }
        let netfilter = namespace.netfilter.as_mut().ok_or_else(|| {
            AgentError::Internal(format!("{label}: the namespace's nftables socket is gone"))
        })?;
        netfilter
            .install(&namespace.redirects)
            .map_err(|e| redirect_error(&label, e))?;
        namespace.installed = true;
        let read_back = netfilter
            .installed()
            .map_err(|e| redirect_error(&label, e))?
            .unwrap_or_default();
        if !same_redirects(&read_back, &namespace.redirects) {
            return Err(AgentError::Internal(format!(
                "{label}: the kernel shows {} where the fault installed {}",
                describe(&read_back),
                describe(&namespace.redirects)
            )));
        }
        // A UDP flow from before the table keeps its unredirected entry: its next query (a
        // recent source port reused, a client that keeps its socket) would escape the fault.
        let caught = netfilter
            .catch_flows(&namespace.redirects)
            .map_err(|e| redirect_error(&label, e))?;
        tracing::debug!(
            label,
            caught,
            "DNS fault: earlier UDP flows to the nameservers caught"
        );
        Ok(())
    }

    /// Removes every redirect (first, so lookups reach the nameservers again at once) and the
    /// conntrack entries of the flows it DNAT'd, then stops every responder. Every namespace is tried; the errors are joined.
    async fn revert_all(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        for namespace in &mut self.namespaces {
            if namespace.installed
                && let Some(netfilter) = namespace.netfilter.as_mut()
            {
                match netfilter.remove() {
                    Ok(_) => {
                        namespace.installed = false;
                        // The NAT bindings of flows DNAT'd meanwhile live on in conntrack
                        // and would keep those flows going to the responders (about to stop)
                        // until they expire. The table is gone whatever happens here.
                        match netfilter.forget_flows(&namespace.redirects) {
                            Ok(forgotten) => tracing::debug!(
                                namespace = %namespace.label,
                                forgotten,
                                "conntrack entries of the redirect deleted"
                            ),
                            Err(e) => {
                                tracing::warn!(
                                    namespace = %namespace.label,
                                    error = %e,
                                    "the redirect is removed, but flows it redirected may stay \
                                     redirected until their conntrack entries expire"
                                );
                                errors.push(format!(
                                    "{}: redirect removed, but its conntrack entries were not \
                                     deleted (flows it redirected stay so until they expire): {e}",
                                    namespace.label
                                ));
                            }
                        }
                    }
                    Err(e) => errors.push(format!("{}: {e}", namespace.label)),
                }
            }
            for responder in namespace.responders.drain(..) {
                responder.stop().await;
            }
            if !namespace.installed {
                // Let the namespace go with its pod.
                namespace.netfilter = None;
            }
        }
        self.holds = self.namespaces.iter().any(|n| n.installed);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Whether the kernel holds exactly the redirects asked for (order aside).
fn same_redirects(found: &[Redirect], asked: &[Redirect]) -> bool {
    let key = |r: &Redirect| (r.nameserver, r.port);
    let found: HashSet<_> = found.iter().map(key).collect();
    let asked: HashSet<_> = asked.iter().map(key).collect();
    found == asked
}

fn describe(redirects: &[Redirect]) -> String {
    if redirects.is_empty() {
        return "no redirect".into();
    }
    redirects
        .iter()
        .map(|r| {
            format!(
                "{}:{DNS_PORT} -> {}",
                r.nameserver,
                SocketAddr::new(loopback_of(r.nameserver), r.port)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Fault for DnsFault {
    fn kind(&self) -> api::FaultKind {
        api::FaultKind::Dns
    }

    fn apply<'a>(
        &'a mut self,
        _procfs: &'a Procfs,
        _acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            let applied = self.apply_all().await;
            if let Err(error) = &applied
                && let Err(rollback) = self.revert_all().await
            {
                tracing::error!(error = %rollback, "rollback of a partly applied DNS fault failed");
                return Err(AgentError::Internal(format!(
                    "{error}; removing the redirects already installed failed too: {rollback}"
                )));
            }
            applied
        })
    }

    fn holds_changes(&self) -> bool {
        self.holds
    }

    /// Nothing to do each round but refresh the status (the responders' counters), which
    /// the registry reads after every round.
    fn tick_interval(&self) -> Option<Duration> {
        Some(STATUS_INTERVAL)
    }

    fn target_watch(&self) -> Option<&TargetWatch> {
        Some(&self.watch)
    }

    fn revert<'a>(&'a mut self, _procfs: &'a Procfs) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.revert_all())
    }

    fn undo(&self) -> UndoRecord {
        UndoRecord::of(&DnsUndo::RemoveDnsRedirect {
            namespaces: self.namespaces.iter().map(|n| n.reference).collect(),
        })
    }

    fn status(&self) -> api::fault::Status {
        let (queries, faulted, forwarded) = self.counters.read();
        let redirects = self
            .namespaces
            .iter()
            .filter(|n| n.installed)
            .flat_map(|n| {
                n.redirects
                    .iter()
                    .map(move |r| format!("{}: {}", n.label, describe(std::slice::from_ref(r))))
            })
            .collect();
        api::fault::Status::Dns(api::DnsStatus {
            redirects,
            queries,
            faulted,
            forwarded,
        })
    }
}

/// After a crash: removes the redirect from every recorded namespace that still exists and
/// is still the fault's (its cookie). A table the kernel removed with the dead agent's
/// socket is nothing to do.
pub fn replay(procfs: &Procfs, record: &UndoRecord) -> Result<(), String> {
    let DnsUndo::RemoveDnsRedirect { namespaces } = record.read()?;
    let errors: Vec<String> = namespaces
        .iter()
        .filter_map(|netns| remove_recorded(procfs, netns).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn remove_recorded(procfs: &Procfs, recorded: &NetnsRef) -> Result<(), String> {
    let by_process = OpenNetns::open(&procfs.netns_path(recorded.pid))
        .ok()
        .filter(|open| open.id() == recorded.id);
    let Some(netns) = by_process.or_else(|| chaos_netem::find_netns(recorded.id, procfs.root()))
    else {
        tracing::info!(
            ino = recorded.id.ino,
            "DNS fault's namespace is gone: nothing to remove"
        );
        return Ok(());
    };
    // The socket maker is async; the replay runs outside the agent's runtime.
    let fd = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime
                    .block_on(make_socket_in(&netns, Box::new(netfilter_socket)))
                    .map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| "the DNS replay thread panicked".to_string())?
    })?;
    let cookie = socket_netns_cookie(&fd).map_err(|e| e.to_string())?;
    match (recorded.cookie, cookie) {
        (Some(ours), Some(found)) if ours != found => {
            tracing::info!(
                ino = recorded.id.ino,
                "the DNS fault's namespace is gone (its inode now belongs to another): nothing to remove"
            );
            return Ok(());
        }
        // Never happens on one kernel; an unverifiable namespace is not acted on.
        (Some(_), None) => return Ok(()),
        _ => {}
    }
    Netfilter::from_fd(fd)
        .remove()
        .map(|_| ())
        .map_err(|e| format!("namespace inode {}: {e}", recorded.id.ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_and_the_agents_namespaces_are_refused_and_a_pods_is_not() {
        assert_eq!(refuse_shared_namespace(false, false, "pod:a/b/c"), Ok(()));
        for (node, agent, names) in [
            (true, false, "node's network namespace"),
            (true, true, "node's network namespace"),
            (false, true, "agent's own network namespace"),
        ] {
            match refuse_shared_namespace(node, agent, "pid:42") {
                Err(AgentError::PermissionDenied(message)) => {
                    assert!(message.starts_with("pid:42 "), "{message}");
                    assert!(message.contains(names), "{message}");
                    assert!(message.contains("never permitted"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_read_back_must_hold_exactly_the_redirects_asked_for() {
        let redirect = |nameserver: &str, port| Redirect {
            nameserver: nameserver.parse().unwrap(),
            port,
        };
        let asked = [redirect("10.96.0.10", 4000), redirect("fd00::a", 4001)];
        let reordered = [asked[1], asked[0]];
        assert!(same_redirects(&reordered, &asked));
        assert!(!same_redirects(&asked[..1], &asked));
        assert!(!same_redirects(
            &[redirect("10.96.0.10", 4002), asked[1]],
            &asked
        ));
        assert!(!same_redirects(&[], &asked));
        assert_eq!(
            describe(&asked),
            "10.96.0.10:53 -> 127.0.0.1:4000, fd00::a:53 -> [::1]:4001"
        );
        assert_eq!(describe(&[]), "no redirect");
    }

    #[test]
    fn a_kernel_without_nftables_nat_is_a_failed_precondition_naming_it() {
        let refused = |errno| RedirectError::Kernel {
            what: "install the redirect".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        for errno in [libc::ENOENT, libc::EOPNOTSUPP] {
            match redirect_error("pod:a/b", refused(errno)) {
                AgentError::FailedPrecondition(message) => {
                    assert!(message.contains("lacks nftables NAT"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            redirect_error("pod:a/b", RedirectError::Exists),
            AgentError::FailedPrecondition(message) if message.contains("already carries a DNS fault")
        ));
        assert!(matches!(
            redirect_error("pod:a/b", refused(libc::ENOMEM)),
            AgentError::Internal(_)
        ));
    }
}
