//! Which interface carries the default route (in the namespace the handle belongs to).

use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

use crate::wire::{self, WireError};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no default route (IPv4 or IPv6) in this network namespace")]
    NoDefaultRoute,
    #[error("route dump failed: {0}")]
    Netlink(WireError),
}

/// A default route found in a dump: the output interface and the route's metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DefaultRoute {
    ifindex: u32,
    metric: u32,
}

fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// The default route's interface, if this route is a default unicast route of the main
/// table. Multipath routes count by their first next hop.
fn as_default_route(route: &RouteMessage) -> Option<DefaultRoute> {
    if route.header.destination_prefix_length != 0
        || route.header.kind != RouteType::Unicast
        || table_of(route) != u32::from(RouteHeader::RT_TABLE_MAIN)
    {
        return None;
    }
    let mut ifindex = None;
    let mut metric = 0;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            RouteAttribute::MultiPath(hops) if ifindex.is_none() => {
                ifindex = hops.first().map(|hop| hop.interface_index);
            }
            RouteAttribute::Priority(priority) => metric = *priority,
            _ => {}
        }
    }
    ifindex.map(|ifindex| DefaultRoute { ifindex, metric })
}

async fn default_route(
    handle: &Handle,
    family: AddressFamily,
) -> Result<Option<DefaultRoute>, RouteError> {
    let mut request = RouteMessage::default();
    request.header.address_family = family;
    let answers = wire::dump(handle, RouteNetlinkMessage::GetRoute(request))
        .await
        .map_err(RouteError::Netlink)?;
    Ok(answers
        .iter()
        .filter_map(|answer| match answer {
            RouteNetlinkMessage::NewRoute(route) => as_default_route(route),
            _ => None,
        })
        // The kernel uses the lowest metric first.
        .min_by_key(|route| route.metric))
}

/// The ifindex of the link carrying the default route: IPv4 first, then IPv6.
pub async fn default_route_interface(handle: &Handle) -> Result<u32, RouteError> {
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        if let Some(route) = default_route(handle, family).await? {
            return Ok(route.ifindex);
        }
    }
    Err(RouteError::NoDefaultRoute)
}

/// Which one link to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKey<'a> {
    Index(u32),
    Name(&'a str),
}

/// One link of this namespace, (ifindex, name), or `None` when there is no such link.
/// One RTM_GETLINK get: a pod's namespace answers with one link message where a dump
/// sends all of them, and link messages are large (statistics, per-family settings), so
/// this is the cheaper way to the one interface a fault needs.
pub async fn interface(
    handle: &Handle,
    key: LinkKey<'_>,
) -> Result<Option<(u32, String)>, RouteError> {
    Ok(link(handle, key).await?.map(|l| (l.index, l.name)))
}

/// A link as one RTM_GETLINK answer describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_MTU`; `None` only if the kernel's answer lacked it.
    pub mtu: Option<u32>,
}

/// As [`interface`], with the link's MTU from the same answer.
pub async fn link(handle: &Handle, key: LinkKey<'_>) -> Result<Option<Link>, RouteError> {
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};
    let mut request = LinkMessage::default();
    match key {
        LinkKey::Index(index) => request.header.index = index,
        LinkKey::Name(name) => request
            .attributes
            .push(LinkAttribute::IfName(name.to_string())),
    }
    let answers = match wire::get(handle, RouteNetlinkMessage::GetLink(request)).await {
        Ok(answers) => answers,
        Err(WireError {
            errno: Some(errno), ..
        }) if errno == nix::errno::Errno::ENODEV as i32 => return Ok(None),
        Err(e) => return Err(RouteError::Netlink(e)),
    };
    Ok(answers.iter().find_map(|answer| {
        let (index, name) = index_and_name(answer)?;
        let RouteNetlinkMessage::NewLink(message) = answer else {
            return None;
        };
        let mtu = message.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        });
        Some(Link { index, name, mtu })
    }))
}

/// Whether `ifindex` names a link of this namespace (one RTM_GETLINK get).
pub async fn link_exists(handle: &Handle, ifindex: u32) -> Result<bool, WireError> {
    use netlink_packet_route::link::LinkMessage;
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    match wire::get(handle, RouteNetlinkMessage::GetLink(request)).await {
        Ok(answers) => Ok(answers
            .iter()
            .any(|answer| matches!(answer, RouteNetlinkMessage::NewLink(_)))),
        Err(WireError {
            errno: Some(errno), ..
        }) if errno == nix::errno::Errno::ENODEV as i32 => Ok(false),
        Err(e) => Err(e),
    }
}

/// (ifindex, name) of a link answer.
fn index_and_name(answer: &RouteNetlinkMessage) -> Option<(u32, String)> {
    use netlink_packet_route::link::LinkAttribute;
    let RouteNetlinkMessage::NewLink(link) = answer else {
        return None;
    };
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some((link.header.index, name.clone())),
        _ => None,
    })
}

/// Every link of this namespace: (ifindex, name).
pub async fn interfaces(handle: &Handle) -> Result<Vec<(u32, String)>, RouteError> {
    use netlink_packet_route::link::LinkMessage;
    let answers = wire::dump(handle, RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .await
        .map_err(RouteError::Netlink)?;
    Ok(answers.iter().filter_map(index_and_name).collect())
}
