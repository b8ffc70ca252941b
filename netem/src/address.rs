//! The addresses of a network namespace that other hosts reach it by: what a partition
//! needs to know of a pod to cut its peers off from it.

use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::Handle;

use crate::route::RouteError;
use crate::wire;

/// The address an address message gives this namespace: `IFA_LOCAL` where the kernel
/// sends one (IPv4: on a point-to-point link `IFA_ADDRESS` is the peer's), else
/// `IFA_ADDRESS` (IPv6 sends only that).
fn local_address(message: &AddressMessage) -> Option<IpAddr> {
    let find = |local: bool| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    find(true).or_else(|| find(false))
}

/// Whether other hosts can reach this namespace at `ip`: not loopback, not link-local
/// (those are reachable on one link only, and every pod has the same fe80:: kind),
/// not unspecified or multicast.
fn reachable_from_elsewhere(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            // fe80::/10
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback() || link_local || v6.is_unspecified() || v6.is_multicast())
        }
    }
}

/// The global-scope addresses among `messages` (an RTM_GETADDR dump), each once, IPv4
/// first, in address order. Pure: from what a dump answered.
pub fn global_addresses_of<'a>(
    messages: impl IntoIterator<Item = &'a AddressMessage>,
) -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = messages
        .into_iter()
        .filter(|m| m.header.scope == AddressScope::Universe)
        .filter_map(local_address)
        .filter(|ip| reachable_from_elsewhere(*ip))
        .collect();
    found.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    found.dedup();
    found
}

/// Every global-scope address (IPv4 and IPv6) of this namespace's interfaces, as
/// [`global_addresses_of`] picks them from one RTM_GETADDR dump.
pub async fn global_addresses(handle: &Handle) -> Result<Vec<IpAddr>, RouteError> {
    let answers = wire::dump(
        handle,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )
    .await
    .map_err(RouteError::Netlink)?;
    let messages: Vec<&AddressMessage> = answers
        .iter()
        .filter_map(|answer| match answer {
            RouteNetlinkMessage::NewAddress(message) => Some(message),
            _ => None,
        })
        .collect();
    Ok(global_addresses_of(messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;

    fn message(scope: AddressScope, attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.scope = scope;
        m.attributes = attributes;
        m
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_addresses_other_hosts_reach_count_each_once_ipv4_first() {
        let messages = [
            // lo: host scope.
            message(
                AddressScope::Host,
                vec![AddressAttribute::Local(ip("127.0.0.1"))],
            ),
            message(
                AddressScope::Host,
                vec![AddressAttribute::Address(ip("::1"))],
            ),
            // eth0: a pod's address, IPv4 (local and address both sent) and IPv6.
            message(
                AddressScope::Universe,
                vec![
                    AddressAttribute::Address(ip("10.1.2.3")),
                    AddressAttribute::Local(ip("10.1.2.3")),
                ],
            ),
            message(
                AddressScope::Universe,
                vec![AddressAttribute::Address(ip("fd00::5"))],
            ),
            message(
                AddressScope::Link,
                vec![AddressAttribute::Address(ip("fe80::1"))],
            ),
            // A point-to-point link: the local address is ours, the other the peer's.
            message(
                AddressScope::Universe,
                vec![
                    AddressAttribute::Address(ip("169.254.1.1")),
                    AddressAttribute::Local(ip("10.9.0.1")),
                ],
            ),
            // The same address on a second interface, and link-local ones mislabelled
            // with global scope.
            message(
                AddressScope::Universe,
                vec![AddressAttribute::Local(ip("10.1.2.3"))],
            ),
            message(
                AddressScope::Universe,
                vec![AddressAttribute::Local(ip("169.254.3.3"))],
            ),
            message(
                AddressScope::Universe,
                vec![AddressAttribute::Address(ip("fe80::9"))],
            ),
        ];
        assert_eq!(
            global_addresses_of(&messages),
            vec![ip("10.1.2.3"), ip("10.9.0.1"), ip("fd00::5")]
        );
        assert!(global_addresses_of(&[]).is_empty());
    }
}
