//! The kernel side of prepare and apply: what an interface has now (`inspect`, with the
//! ifb an ingress fault would use), and the socket a fault's namespace is reached by.

use std::path::Path;

use chaos_netem::ingress::{IngressError, IngressRedirect};
use chaos_netem::{LinkKey, NetnsHandle, QdiscSnapshot};

use super::errors::{ingress_error, qdisc_error};
use super::restore::{Located, locate};
use super::{Direction, NetnsRef};
use crate::error::AgentError;

/// What `prepare` learns about one interface, inside its namespace.
pub(super) struct Inspected {
    pub(super) ifindex: u32,
    pub(super) ifname: String,
    /// The interface's MTU, from the same link answer (`None` if the answer lacked it).
    pub(super) mtu: Option<u32>,
    pub(super) snapshot: QdiscSnapshot,
    pub(super) ingress: Option<IngressRedirect>,
}

/// Whether every filter on the snapshot's ingress qdisc redirects to an ifb of ours.
pub(super) async fn ingress_is_ours(
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

/// Which interfaces of a namespace a fault acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interfaces<'a> {
    /// The one the request names.
    Named(&'a str),
    /// The one the main table's default route leaves by (a pod's namespace).
    DefaultRoute,
    /// Every one a default route of any routing table leaves by (the node's namespace,
    /// where secondary interfaces have default routes in tables of their own).
    EveryDefaultRoute,
}

impl<'a> Interfaces<'a> {
    /// The request's interface if it names one; else the default route's in a pod's
    /// namespace, every default route's in the node's.
    pub(super) fn choose(named: Option<&'a str>, node_scope: bool) -> Interfaces<'a> {
        match (named, node_scope) {
            (Some(name), _) => Interfaces::Named(name),
            (None, false) => Interfaces::DefaultRoute,
            (None, true) => Interfaces::EveryDefaultRoute,
        }
    }
}

/// Inspects each interface `which` stands for, in the handle's namespace.
pub(super) async fn inspect(
    handle: &chaos_netem::Handle,
    which: Interfaces<'_>,
    direction: Direction,
) -> Result<Vec<Inspected>, AgentError> {
    let no_route = |e: chaos_netem::RouteError| {
        AgentError::FailedPrecondition(format!("{e}: name the interface (network.interface)"))
    };
    let keys = match which {
        Interfaces::Named(name) => vec![LinkKey::Name(name)],
        Interfaces::DefaultRoute => vec![LinkKey::Index(
            chaos_netem::default_route_interface(handle)
                .await
                .map_err(no_route)?,
        )],
        Interfaces::EveryDefaultRoute => chaos_netem::default_route_interfaces(handle)
            .await
            .map_err(no_route)?
            .into_iter()
            .map(LinkKey::Index)
            .collect(),
    };
    let mut inspected = Vec::with_capacity(keys.len());
    for key in keys {
        inspected.push(inspect_link(handle, key, direction).await?);
    }
    Ok(inspected)
}

async fn inspect_link(
    handle: &chaos_netem::Handle,
    key: LinkKey<'_>,
    direction: Direction,
) -> Result<Inspected, AgentError> {
    let started = std::time::Instant::now();
    let internal = |e: chaos_netem::RouteError| AgentError::Internal(e.to_string());
    // The qdisc dump goes out together with the link get (a socket runs one dump at a
    // time, but a get may go alongside it): both answers come back in one pass.
    let (link, table) = futures::join!(
        chaos_netem::link(handle, key),
        chaos_netem::qdisc::table(handle)
    );
    let (ifindex, ifname, mtu) = match (link.map_err(internal)?, key) {
        (Some(found), _) => (found.index, found.name, found.mtu),
        (None, LinkKey::Index(ifindex)) => (ifindex, format!("ifindex {ifindex}"), None),
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
        mtu,
        snapshot,
        ingress,
    })
}

/// The socket from prepare, or a new one in the fault's namespace if it still is there.
pub(super) async fn connect<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_interface_wins_else_the_node_takes_every_default_route() {
        for node_scope in [false, true] {
            assert_eq!(
                Interfaces::choose(Some("eth1"), node_scope),
                Interfaces::Named("eth1")
            );
        }
        assert_eq!(Interfaces::choose(None, false), Interfaces::DefaultRoute);
        assert_eq!(
            Interfaces::choose(None, true),
            Interfaces::EveryDefaultRoute
        );
    }
}
