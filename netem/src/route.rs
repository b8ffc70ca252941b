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
    if !is_default_unicast(route) || table_of(route) != u32::from(RouteHeader::RT_TABLE_MAIN) {
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

/// A route to everywhere (prefix length 0) that forwards packets: local, broadcast,
/// blackhole, unreachable and prohibit routes send nothing out of an interface.
fn is_default_unicast(route: &RouteMessage) -> bool {
    route.header.destination_prefix_length == 0 && route.header.kind == RouteType::Unicast
}

/// Every interface a default route of any routing table leaves by, each once, in
/// ifindex order: what traffic to anywhere may leave the node by once policy routing
/// (`ip rule`) picks a table, as the secondary ENIs of EKS's VPC CNI do (each with a
/// default route in a table of its own). Every next hop of a multipath route counts.
/// Pure: from the routes a dump answered.
pub fn default_route_interfaces_of<'a>(
    routes: impl IntoIterator<Item = &'a RouteMessage>,
) -> Vec<u32> {
    let mut found: Vec<u32> = routes
        .into_iter()
        .filter(|route| is_default_unicast(route))
        .flat_map(|route| {
            route
                .attributes
                .iter()
                .flat_map(|attribute| match attribute {
                    RouteAttribute::Oif(index) => vec![*index],
                    RouteAttribute::MultiPath(hops) => {
                        hops.iter().map(|hop| hop.interface_index).collect()
                    }
                    _ => vec![],
                })
        })
        .filter(|ifindex| *ifindex != 0)
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

async fn dump_routes(
    handle: &Handle,
    family: AddressFamily,
) -> Result<Vec<RouteMessage>, RouteError> {
    // No table in the request: the kernel answers with the routes of every table.
    let mut request = RouteMessage::default();
    request.header.address_family = family;
    let answers = wire::dump(handle, RouteNetlinkMessage::GetRoute(request))
        .await
        .map_err(RouteError::Netlink)?;
    Ok(answers
        .into_iter()
        .filter_map(|answer| match answer {
            RouteNetlinkMessage::NewRoute(route) => Some(route),
            _ => None,
        })
        .collect())
}

async fn default_route(
    handle: &Handle,
    family: AddressFamily,
) -> Result<Option<DefaultRoute>, RouteError> {
    Ok(dump_routes(handle, family)
        .await?
        .iter()
        .filter_map(as_default_route)
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

/// The ifindexes of every link a default route (IPv4 or IPv6, of any routing table)
/// leaves by, each once, in ifindex order (see [`default_route_interfaces_of`]); at
/// least one, or [`RouteError::NoDefaultRoute`].
pub async fn default_route_interfaces(handle: &Handle) -> Result<Vec<u32>, RouteError> {
    let mut routes = dump_routes(handle, AddressFamily::Inet).await?;
    routes.extend(dump_routes(handle, AddressFamily::Inet6).await?);
    let found = default_route_interfaces_of(&routes);
    if found.is_empty() {
        return Err(RouteError::NoDefaultRoute);
    }
    Ok(found)
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

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteNextHop;

    fn route(
        prefix: u8,
        kind: RouteType,
        table: u32,
        attributes: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.destination_prefix_length = prefix;
        route.header.kind = kind;
        // The header's table is one byte; a table beyond 255 is only in RTA_TABLE.
        route.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        route.attributes = attributes;
        route.attributes.push(RouteAttribute::Table(table));
        route
    }

    fn via(ifindex: u32) -> RouteAttribute {
        RouteAttribute::Oif(ifindex)
    }

    fn hop(ifindex: u32) -> RouteNextHop {
        let mut hop = RouteNextHop::default();
        hop.interface_index = ifindex;
        hop
    }

    #[test]
    fn default_routes_of_every_table_count_once_each_and_nothing_else_does() {
        let main = u32::from(RouteHeader::RT_TABLE_MAIN);
        // RT_TABLE_LOCAL
        let local = 255;
        let routes = [
            // The main table's default route, via eth0 (3).
            route(
                0,
                RouteType::Unicast,
                main,
                vec![via(3), RouteAttribute::Priority(100)],
            ),
            // A secondary ENI's own table (VPC CNI), via eth1 (5), and its subnet route.
            route(0, RouteType::Unicast, 100, vec![via(5)]),
            route(24, RouteType::Unicast, 100, vec![via(5)]),
            // A table numbered past one byte, via the same eth1 again, and a multipath
            // default over eth1 and eth2 (7).
            route(0, RouteType::Unicast, 1000, vec![via(5)]),
            route(
                0,
                RouteType::Unicast,
                1001,
                vec![RouteAttribute::MultiPath(vec![hop(7), hop(5)])],
            ),
            // Routes to everywhere that send nothing out of an interface.
            route(0, RouteType::Unreachable, 200, vec![]),
            route(0, RouteType::BlackHole, 201, vec![]),
            route(0, RouteType::Prohibit, 202, vec![]),
            // The local table: local and broadcast routes of an address of eth9 (9).
            route(32, RouteType::Local, local, vec![via(9)]),
            route(32, RouteType::Broadcast, local, vec![via(9)]),
            // Not default routes.
            route(16, RouteType::Unicast, main, vec![via(11)]),
        ];
        assert_eq!(default_route_interfaces_of(&routes), vec![3, 5, 7]);
        // The one-interface rule is still the main table's, lowest metric.
        let in_main: Vec<_> = routes.iter().filter_map(as_default_route).collect();
        assert_eq!(
            in_main,
            vec![DefaultRoute {
                ifindex: 3,
                metric: 100
            }]
        );
    }

    #[test]
    fn no_default_route_in_any_table_is_no_interface() {
        let main = u32::from(RouteHeader::RT_TABLE_MAIN);
        let routes = [
            route(24, RouteType::Unicast, main, vec![via(2)]),
            route(0, RouteType::Unreachable, 100, vec![]),
        ];
        assert!(default_route_interfaces_of(&routes).is_empty());
        assert!(default_route_interfaces_of(&[]).is_empty());
    }
}
