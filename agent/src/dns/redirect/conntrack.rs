//! The redirect's conntrack messages, pure (ctnetlink, NFNL_SUBSYS_CTNETLINK, with the
//! maintained `netlink-packet-netfilter` crate's types): the dump of a family's entries, the
//! choice of the entries the redirect DNAT'd, and their deletion. Unit-tested without root.
//!
//! Why: a NAT binding lives in its conntrack entry, not in the nftables rule that made it.
//! After the table is gone, a flow DNAT'd during the fault (a UDP socket that keeps its
//! source port, an open or lingering TCP connection) keeps going to the responder's port until
//! its entry expires (UDP 30-120 s, TCP up to days), and nothing listens there any more.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};

use super::wire::netfilter_message;
use super::{DNS_PORT, Redirect, loopback_of};

// include/uapi/linux/netfilter/nfnetlink_conntrack.h: what the crate does not name.
/// The entry's id: a deletion that carries it removes that entry only, not a newer one that
/// took the same tuple meanwhile.
const CTA_ID: u16 = 12;
/// The entry's zone (0 unless set): an entry is looked up by its tuple within its zone.
const CTA_ZONE: u16 = 18;

/// One end to the other of a tuple, as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub protocol: u8,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// A conntrack entry from a dump: what selects it and what deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub family: NetfilterProtoFamily,
    pub original: Endpoints,
    pub reply: Endpoints,
    /// The original tuple as the kernel sent it, sent back to delete the entry.
    original_tuple: Vec<Tuple>,
    /// Its id and zone, sent back with it.
    identity: Vec<DefaultNla>,
}

impl Flow {
    /// Whether one of `redirects` DNAT'd this flow: it went to NS:53 over UDP or TCP, and its
    /// answers come from the responder's address (127.0.0.1:PORT or [::1]:PORT). Nothing else
    /// matches: a direct query to the responder has the loopback as its original destination.
    pub fn redirected_by(&self, redirects: &[Redirect]) -> bool {
        let transport = [Protocol::Udp, Protocol::Tcp]
            .map(u8::from)
            .contains(&self.original.protocol);
        transport
            && redirects.iter().any(|redirect| {
                self.original.destination == SocketAddr::new(redirect.nameserver, DNS_PORT)
                    && self.reply.source
                        == SocketAddr::new(loopback_of(redirect.nameserver), redirect.port)
            })
    }
}

impl Flow {
    /// Whether this is a UDP flow to one of `redirects`' nameservers that the redirect did
    /// not catch: it began before the table existed (answers come from NS:53 itself). Its
    /// entry makes every later datagram of the same 5-tuple pass the redirect, and a client
    /// whose random source port hits one of the entries of its recent queries (kept 30-120 s)
    /// would escape the fault. TCP is left alone: a connection open at the inject finishes
    /// with the nameserver, as a new one would be refused by nobody.
    pub fn escapes(&self, redirects: &[Redirect]) -> bool {
        self.original.protocol == u8::from(Protocol::Udp)
            && redirects.iter().any(|redirect| {
                let nameserver = SocketAddr::new(redirect.nameserver, DNS_PORT);
                self.original.destination == nameserver && self.reply.source == nameserver
            })
    }
}

/// The families (AF_INET, AF_INET6) whose entries `redirects` can have made, each once.
pub fn families_of(redirects: &[Redirect]) -> Vec<NetfilterProtoFamily> {
    let mut families = Vec::new();
    for redirect in redirects {
        let family = family_of(redirect.nameserver);
        if !families.contains(&family) {
            families.push(family);
        }
    }
    families
}

fn family_of(address: IpAddr) -> NetfilterProtoFamily {
    match address {
        IpAddr::V4(_) => NetfilterProtoFamily::IPv4,
        IpAddr::V6(_) => NetfilterProtoFamily::IPv6,
    }
}

/// Asks for all the entries of `family` in the socket's namespace (IPCTNL_MSG_CT_GET, dump).
pub fn dump_request(
    family: NetfilterProtoFamily,
    sequence: u32,
) -> NetlinkMessage<NetfilterMessage> {
    netfilter_message(
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        ConntrackMessage::Get(vec![]),
    )
}

/// Deletes `flow`'s entry (IPCTNL_MSG_CT_DELETE by its original tuple, id and zone), with an
/// acknowledgement asked for.
pub fn delete_request(flow: &Flow, sequence: u32) -> NetlinkMessage<NetfilterMessage> {
    let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(
        flow.original_tuple.clone(),
    )];
    attributes.extend(flow.identity.iter().cloned().map(ConntrackAttribute::Other));
    netfilter_message(
        flow.family,
        NLM_F_REQUEST | NLM_F_ACK,
        sequence,
        ConntrackMessage::Delete(attributes),
    )
}

fn endpoints(tuple: &[Tuple]) -> Option<Endpoints> {
    let (mut source, mut destination) = (None, None);
    let (mut protocol, mut source_port, mut destination_port) = (None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ip) => {
                for address in ip {
                    match address {
                        IPTuple::SourceAddress(a) => source = Some(*a),
                        IPTuple::DestinationAddress(a) => destination = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(proto) => {
                for field in proto {
                    match field {
                        ProtoTuple::Protocol(p) => protocol = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => source_port = Some(*p),
                        ProtoTuple::DestinationPort(p) => destination_port = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Endpoints {
        protocol: protocol?,
        // Portless protocols (ICMP) are of no interest: they have no ports to match.
        source: SocketAddr::new(source?, source_port?),
        destination: SocketAddr::new(destination?, destination_port?),
    })
}

/// The entry one message of a dump carries, or `None` for any other message (or an entry
/// without ports).
pub fn flow_of(message: &NetlinkMessage<NetfilterMessage>) -> Option<Flow> {
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        header,
        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
        ..
    }) = &message.payload
    else {
        return None;
    };
    let (mut original_tuple, mut reply_tuple, mut identity) = (None, None, Vec::new());
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(tuple) => original_tuple = Some(tuple.clone()),
            ConntrackAttribute::CtaTupleReply(tuple) => reply_tuple = Some(tuple),
            ConntrackAttribute::Other(nla) if matches!(nla.kind(), CTA_ID | CTA_ZONE) => {
                identity.push(nla.clone());
            }
            _ => {}
        }
    }
    let original_tuple = original_tuple?;
    Some(Flow {
        family: header.family,
        original: endpoints(&original_tuple)?,
        reply: endpoints(reply_tuple?)?,
        original_tuple,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::super::wire::{parse_messages, serialize};
    use super::*;

    const PORT: u16 = 5300;

    fn redirects() -> [Redirect; 2] {
        [
            Redirect {
                nameserver: "10.9.9.9".parse().unwrap(),
                port: PORT,
            },
            Redirect {
                nameserver: "fd00:9::9".parse().unwrap(),
                port: PORT,
            },
        ]
    }

    fn tuple(protocol: Protocol, source: SocketAddr, destination: SocketAddr) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(source.ip()),
                IPTuple::DestinationAddress(destination.ip()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(protocol),
                ProtoTuple::SourcePort(source.port()),
                ProtoTuple::DestinationPort(destination.port()),
            ]),
        ]
    }

    fn be32(kind: u16, value: u32) -> DefaultNla {
        DefaultNla::new(kind, value.to_be_bytes().to_vec())
    }

    /// An entry as the kernel dumps it (IPCTNL_MSG_CT_NEW in answer to a GET dump),
    /// serialized and parsed back as `receive` does.
    fn dumped(
        protocol: Protocol,
        original: (SocketAddr, SocketAddr),
        reply: (SocketAddr, SocketAddr),
    ) -> NetlinkMessage<NetfilterMessage> {
        let family = family_of(original.0.ip());
        let message = netfilter_message(
            family,
            0,
            9,
            ConntrackMessage::New(vec![
                ConntrackAttribute::CtaTupleOrig(tuple(protocol, original.0, original.1)),
                ConntrackAttribute::CtaTupleReply(tuple(protocol, reply.0, reply.1)),
                ConntrackAttribute::CtaTimeout(29),
                ConntrackAttribute::CtaMark(0),
                ConntrackAttribute::Other(be32(CTA_ID, 0xdead_beef)),
                ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, 7u16.to_be_bytes().to_vec())),
            ]),
        );
        let mut messages = parse_messages(&serialize(&[message])).unwrap();
        messages.pop().unwrap()
    }

    fn at(address: &str) -> SocketAddr {
        address.parse().unwrap()
    }

    #[test]
    fn a_dnatted_udp_flow_is_selected_and_deleted_by_its_original_tuple() {
        let message = dumped(
            Protocol::Udp,
            (at("10.9.9.1:40053"), at("10.9.9.9:53")),
            (at("127.0.0.1:5300"), at("10.9.9.1:40053")),
        );
        let flow = flow_of(&message).unwrap();
        assert_eq!(flow.family, NetfilterProtoFamily::IPv4);
        assert_eq!(flow.original.destination, at("10.9.9.9:53"));
        assert_eq!(flow.reply.source, at("127.0.0.1:5300"));
        assert!(flow.redirected_by(&redirects()));

        let delete = parse_messages(&serialize(&[delete_request(&flow, 42)])).unwrap();
        let delete = &delete[0];
        // NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE.
        assert_eq!(delete.header.message_type, (1 << 8) | 2);
        assert_eq!(delete.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(delete.header.sequence_number, 42);
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            header,
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attributes)),
            ..
        }) = &delete.payload
        else {
            panic!("{delete:?}");
        };
        assert_eq!(header.family, NetfilterProtoFamily::IPv4);
        assert_eq!(
            attributes,
            &vec![
                ConntrackAttribute::CtaTupleOrig(tuple(
                    Protocol::Udp,
                    at("10.9.9.1:40053"),
                    at("10.9.9.9:53")
                )),
                ConntrackAttribute::Other(be32(CTA_ID, 0xdead_beef)),
                ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, 7u16.to_be_bytes().to_vec())),
            ]
        );
    }

    #[test]
    fn udp_flows_to_a_nameserver_from_before_the_redirect_are_caught_and_no_others() {
        let redirects = redirects();
        let flow = |protocol, original: (&str, &str), reply: (&str, &str)| {
            flow_of(&dumped(
                protocol,
                (at(original.0), at(original.1)),
                (at(reply.0), at(reply.1)),
            ))
            .unwrap()
        };
        let before = flow(
            Protocol::Udp,
            ("10.9.9.1:40053", "10.9.9.9:53"),
            ("10.9.9.9:53", "10.9.9.1:40053"),
        );
        assert!(before.escapes(&redirects));
        assert!(!before.redirected_by(&redirects));
        let before_v6 = flow(
            Protocol::Udp,
            ("[fd00:9::1]:40053", "[fd00:9::9]:53"),
            ("[fd00:9::9]:53", "[fd00:9::1]:40053"),
        );
        assert!(before_v6.escapes(&redirects));
        for other in [
            // Already redirected.
            flow(
                Protocol::Udp,
                ("10.9.9.1:40053", "10.9.9.9:53"),
                ("127.0.0.1:5300", "10.9.9.1:40053"),
            ),
            // An open TCP connection finishes with the nameserver.
            flow(
                Protocol::Tcp,
                ("10.9.9.1:40000", "10.9.9.9:53"),
                ("10.9.9.9:53", "10.9.9.1:40000"),
            ),
            // Another server, another port.
            flow(
                Protocol::Udp,
                ("10.9.9.1:40053", "10.9.9.8:53"),
                ("10.9.9.8:53", "10.9.9.1:40053"),
            ),
            flow(
                Protocol::Udp,
                ("10.9.9.1:40053", "10.9.9.9:54"),
                ("10.9.9.9:54", "10.9.9.1:40053"),
            ),
        ] {
            assert!(!other.escapes(&redirects), "{other:?}");
        }
    }

    #[test]
    fn ipv6_and_tcp_flows_of_the_redirect_are_selected() {
        let flow = flow_of(&dumped(
            Protocol::Tcp,
            (at("[fd00:9::1]:40000"), at("[fd00:9::9]:53")),
            (at("[::1]:5300"), at("[fd00:9::1]:40000")),
        ))
        .unwrap();
        assert_eq!(flow.family, NetfilterProtoFamily::IPv6);
        assert!(flow.redirected_by(&redirects()));
    }

    #[test]
    fn flows_the_redirect_did_not_dnat_are_left_alone() {
        let redirects = redirects();
        let unselected = [
            // Not DNAT'd: answered by the nameserver itself.
            (
                Protocol::Udp,
                (at("10.9.9.1:40053"), at("10.9.9.9:53")),
                (at("10.9.9.9:53"), at("10.9.9.1:40053")),
            ),
            // A direct query to the responder's port.
            (
                Protocol::Udp,
                (at("127.0.0.1:40000"), at("127.0.0.1:5300")),
                (at("127.0.0.1:5300"), at("127.0.0.1:40000")),
            ),
            // DNAT'd elsewhere (another port, another nameserver, another NAT).
            (
                Protocol::Udp,
                (at("10.9.9.1:40053"), at("10.9.9.9:53")),
                (at("127.0.0.1:5301"), at("10.9.9.1:40053")),
            ),
            (
                Protocol::Tcp,
                (at("10.9.9.1:40053"), at("10.8.8.8:53")),
                (at("127.0.0.1:5300"), at("10.9.9.1:40053")),
            ),
            (
                Protocol::Tcp,
                (at("10.9.9.1:40053"), at("10.9.9.9:80")),
                (at("127.0.0.1:5300"), at("10.9.9.1:40053")),
            ),
            // Another transport.
            (
                Protocol::Sctp,
                (at("10.9.9.1:40053"), at("10.9.9.9:53")),
                (at("127.0.0.1:5300"), at("10.9.9.1:40053")),
            ),
            // The IPv4 nameserver's flow answered from the IPv6 loopback cannot be; nor
            // the other way round.
            (
                Protocol::Udp,
                (at("[fd00:9::1]:40053"), at("[fd00:9::9]:53")),
                (at("127.0.0.1:5300"), at("[fd00:9::1]:40053")),
            ),
        ];
        for (protocol, original, reply) in unselected {
            let flow = flow_of(&dumped(protocol, original, reply)).unwrap();
            assert!(!flow.redirected_by(&redirects), "{flow:?}");
        }
    }

    #[test]
    fn portless_entries_and_other_messages_are_no_flows() {
        let mut icmp = dumped(
            Protocol::Icmp,
            (at("10.9.9.1:0"), at("10.9.9.9:0")),
            (at("10.9.9.9:0"), at("10.9.9.1:0")),
        );
        if let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
            ..
        }) = &mut icmp.payload
        {
            for attribute in attributes {
                if let ConntrackAttribute::CtaTupleOrig(tuple)
                | ConntrackAttribute::CtaTupleReply(tuple) = attribute
                {
                    tuple.retain(|part| !matches!(part, Tuple::Proto(_)));
                    tuple.push(Tuple::Proto(vec![ProtoTuple::Protocol(Protocol::Icmp)]));
                }
            }
        }
        assert_eq!(flow_of(&icmp), None);
        let request = dump_request(NetfilterProtoFamily::IPv4, 1);
        assert_eq!(flow_of(&request), None);
    }

    #[test]
    fn the_dump_asks_per_family_for_every_entry() {
        assert_eq!(
            families_of(&redirects()),
            vec![NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6]
        );
        let only_v4 = [
            redirects()[0],
            Redirect {
                port: 1,
                ..redirects()[0]
            },
        ];
        assert_eq!(families_of(&only_v4), vec![NetfilterProtoFamily::IPv4]);
        let request = parse_messages(&serialize(&[dump_request(NetfilterProtoFamily::IPv6, 3)]))
            .unwrap()
            .remove(0);
        assert_eq!(request.header.message_type, 1 << 8 | 1);
        assert_eq!(request.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        let NetlinkPayload::InnerMessage(NetfilterMessage { header, .. }) = &request.payload else {
            panic!("{request:?}");
        };
        assert_eq!(header.family, NetfilterProtoFamily::IPv6);
    }
}
