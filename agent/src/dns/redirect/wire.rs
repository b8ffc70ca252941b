//! The redirect's messages, pure: the batches that install and remove it, the requests that
//! read it back, and the decoding of a rule dump into redirects. Unit-tested without root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, emit_u32_be,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook,
    Immediate, InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload,
    Register, RuleAttribute, RuleMessage, TableAttribute, TableFlags, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

use super::{BYPASS_MARK, CHAIN, DNS_PORT, PRIORITY, Redirect, RedirectError, TABLE, Transport};

// include/uapi/linux/netfilter/nfnetlink.h, nf_tables.h: what the crate does not name.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;
/// Offsets of the destination address in the IPv4 and IPv6 headers.
const IPV4_DADDR: u32 = 16;
const IPV6_DADDR: u32 = 24;
/// Offset of the destination port in the UDP and TCP headers.
const TH_DPORT: u32 = 2;

fn nfproto(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => NFPROTO_IPV4,
        IpAddr::V6(_) => NFPROTO_IPV6,
    }
}

/// Where a redirected query goes: the loopback of the nameserver's family.
pub fn loopback_of(nameserver: IpAddr) -> IpAddr {
    match nameserver {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn octets(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn load_meta(key: MetaKey) -> ListAttribute<ExpressionAttribute> {
    Expressions::Meta(vec![
        Meta::DestinationRegister(Register::Reg1),
        Meta::Key(key),
    ])
    .into()
}

fn load_payload(base: u32, offset: u32, len: u32) -> ListAttribute<ExpressionAttribute> {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

fn compare(op: Operator, value: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(value)),
    ])
    .into()
}

fn immediate(register: Register, value: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(register),
        Immediate::Data(DataAttribute::Value(value)),
    ])
    .into()
}

fn u32_attribute(kind: u16, value: u32) -> DefaultNla {
    let mut bytes = vec![0; 4];
    // A 4-byte buffer always takes a u32.
    let _ = emit_u32_be(&mut bytes, value);
    DefaultNla::new(kind, bytes)
}

/// The expressions of one rule: the match, then the loopback address in register 1 and the
/// port in register 2, then `nat` (which the crate does not have) reading both.
pub fn rule_expressions(
    redirect: &Redirect,
    transport: Transport,
) -> Vec<ListAttribute<ExpressionAttribute>> {
    let family = nfproto(redirect.nameserver);
    let daddr = match redirect.nameserver {
        IpAddr::V4(_) => IPV4_DADDR,
        IpAddr::V6(_) => IPV6_DADDR,
    };
    let address = octets(redirect.nameserver);
    let nat = Expressions::Other {
        expression_type: "nat".to_string(),
        attributes: vec![
            u32_attribute(NFTA_NAT_TYPE, NFT_NAT_DNAT),
            u32_attribute(NFTA_NAT_FAMILY, u32::from(family)),
            u32_attribute(NFTA_NAT_REG_ADDR_MIN, u32::from(Register::Reg1)),
            u32_attribute(NFTA_NAT_REG_PROTO_MIN, u32::from(Register::Reg2)),
        ],
    };
    vec![
        // The mark is a host-order u32 in the register.
        load_meta(MetaKey::Mark),
        compare(Operator::NotEqual, BYPASS_MARK.to_ne_bytes().to_vec()),
        load_meta(MetaKey::Nfproto),
        compare(Operator::Equal, vec![family]),
        load_payload(NFT_PAYLOAD_NETWORK_HEADER, daddr, address.len() as u32),
        compare(Operator::Equal, address),
        load_meta(MetaKey::L4Proto),
        compare(Operator::Equal, vec![transport.protocol()]),
        load_payload(NFT_PAYLOAD_TRANSPORT_HEADER, TH_DPORT, 2),
        compare(Operator::Equal, DNS_PORT.to_be_bytes().to_vec()),
        immediate(Register::Reg1, octets(loopback_of(redirect.nameserver))),
        immediate(Register::Reg2, redirect.port.to_be_bytes().to_vec()),
        nat.into(),
    ]
}

/// Checks what [`install_batch`] would install.
pub fn validate(redirects: &[Redirect]) -> Result<(), RedirectError> {
    if redirects.is_empty() {
        return Err(RedirectError::NoRedirects);
    }
    if let Some(zero) = redirects.iter().find(|redirect| redirect.port == 0) {
        return Err(RedirectError::PortZero {
            nameserver: zero.nameserver,
        });
    }
    Ok(())
}

/// One nfnetlink message of either subsystem (nftables, ctnetlink), finalized.
pub(super) fn netfilter_message(
    family: NetfilterProtoFamily,
    flags: u16,
    sequence: u32,
    message: impl Into<NetfilterMessageInner>,
) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            message,
        )),
    );
    message.finalize();
    message
}

fn control(sequence: u32, message: ControlMessage) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            // A batch names the subsystem it is for in res_id.
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
            message,
        )),
    );
    message.finalize();
    message
}

/// `changes` (numbered from `first + 1`) between a batch's begin (`first`) and end; each
/// asks for an acknowledgement, so the kernel answers each one, with an error or not.
fn batch(
    first: u32,
    changes: Vec<(u16, NfTablesMessage)>,
) -> Vec<NetlinkMessage<NetfilterMessage>> {
    let count = changes.len() as u32;
    let mut messages = vec![control(first, ControlMessage::BatchBegin)];
    for (index, (flags, change)) in changes.into_iter().enumerate() {
        messages.push(netfilter_message(
            NetfilterProtoFamily::Inet,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            first + 1 + index as u32,
            change,
        ));
    }
    messages.push(control(first + 1 + count, ControlMessage::BatchEnd));
    messages
}

/// The batch installing `redirects`: begin, table (owned by the socket if `owned`; refused
/// if it exists), chain, one rule per redirect and transport, end. Sequence numbers from
/// `first`.
pub fn install_batch(
    redirects: &[Redirect],
    owned: bool,
    first: u32,
) -> Vec<NetlinkMessage<NetfilterMessage>> {
    let mut table = vec![TableAttribute::Name(TABLE.to_string())];
    if owned {
        table.push(TableAttribute::Flags(TableFlags::Owner));
    }
    let mut changes = vec![
        (
            NLM_F_CREATE | NLM_F_EXCL,
            NfTablesMessage::NewTable(TableMessage { attributes: table }),
        ),
        (
            NLM_F_CREATE | NLM_F_EXCL,
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(TABLE.to_string()),
                    ChainAttribute::Name(CHAIN.to_string()),
                    ChainAttribute::Type("nat".to_string()),
                    ChainAttribute::Hook(vec![
                        Hook::Number(InetHookNumber::LocalOut.into()),
                        // The kernel reads the priority as a signed 32-bit number.
                        Hook::Priority(PRIORITY as u32),
                    ]),
                ],
            }),
        ),
    ];
    for redirect in redirects {
        for transport in Transport::ALL {
            changes.push((
                NLM_F_CREATE | NLM_F_APPEND,
                NfTablesMessage::NewRule(RuleMessage {
                    attributes: vec![
                        RuleAttribute::Table(TABLE.to_string()),
                        RuleAttribute::Chain(CHAIN.to_string()),
                        RuleAttribute::Expressions(rule_expressions(redirect, transport)),
                    ],
                }),
            ));
        }
    }
    batch(first, changes)
}

/// The batch deleting the table (and its chain and rules with it).
pub fn remove_batch(first: u32) -> Vec<NetlinkMessage<NetfilterMessage>> {
    batch(
        first,
        vec![(
            0,
            NfTablesMessage::DeleteTable(TableMessage {
                attributes: vec![TableAttribute::Name(TABLE.to_string())],
            }),
        )],
    )
}

/// What the kernel is told in one write.
pub fn serialize(messages: &[NetlinkMessage<NetfilterMessage>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for message in messages {
        let start = bytes.len();
        bytes.resize(start + message.buffer_len(), 0);
        message.serialize(&mut bytes[start..]);
    }
    bytes
}

/// The netlink messages in `bytes` (one datagram from the kernel, or a serialized batch).
pub fn parse_messages(bytes: &[u8]) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, String> {
    let mut messages = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(rest)
            .map_err(|error| format!("message at byte {offset}: {error}"))?;
        let length = message.header.length as usize;
        if length == 0 {
            return Err(format!("message at byte {offset} has length 0"));
        }
        // Messages are aligned to 4 bytes.
        offset += length.div_ceil(4) * 4;
        messages.push(message);
    }
    Ok(messages)
}

/// The redirect and transport one rule of ours does, or `None` for a rule that is not one
/// (not ending in the `nat` of an address and port we load, or matching nothing we match).
pub fn decode_rule(attributes: &[RuleAttribute]) -> Option<(Redirect, Transport)> {
    let expressions = attributes.iter().find_map(|attribute| match attribute {
        RuleAttribute::Expressions(expressions) => Some(expressions),
        _ => None,
    })?;
    // What register 1 holds when a comparison reads it.
    enum Loaded {
        Nothing,
        Nfproto,
        L4Proto,
        NetworkDaddr(u32),
        Other,
    }
    let mut loaded = Loaded::Nothing;
    let (mut nameserver, mut transport, mut port, mut family_matched) = (None, None, None, None);
    let mut nat = false;
    for expression in expressions {
        let ListAttribute::Element(parts) = expression else {
            continue;
        };
        for part in parts {
            let ExpressionAttribute::Data(data) = part else {
                continue;
            };
            match data {
                Expressions::Meta(meta) => {
                    loaded = if meta.contains(&Meta::Key(MetaKey::Nfproto)) {
                        Loaded::Nfproto
                    } else if meta.contains(&Meta::Key(MetaKey::L4Proto)) {
                        Loaded::L4Proto
                    } else {
                        Loaded::Other
                    };
                }
                Expressions::Payload(payload) => {
                    let offset = payload.iter().find_map(|p| match p {
                        Payload::Offset(offset) => Some(*offset),
                        _ => None,
                    });
                    let network = payload.contains(&Payload::Base(NFT_PAYLOAD_NETWORK_HEADER));
                    loaded = match (network, offset) {
                        (true, Some(offset)) => Loaded::NetworkDaddr(offset),
                        _ => Loaded::Other,
                    };
                }
                Expressions::Cmp(cmp) => {
                    if !cmp.contains(&Cmp::Op(Operator::Equal)) {
                        continue;
                    }
                    let Some(value) = cmp.iter().find_map(|c| match c {
                        Cmp::Data(DataAttribute::Value(value)) => Some(value.as_slice()),
                        _ => None,
                    }) else {
                        continue;
                    };
                    match (&loaded, value.len()) {
                        (Loaded::Nfproto, 1) => family_matched = Some(value[0]),
                        (Loaded::L4Proto, 1) => transport = Transport::of_protocol(value[0]),
                        (Loaded::NetworkDaddr(IPV4_DADDR), 4) => {
                            let bytes: [u8; 4] = value.try_into().ok()?;
                            nameserver = Some(IpAddr::from(bytes));
                        }
                        (Loaded::NetworkDaddr(IPV6_DADDR), 16) => {
                            let bytes: [u8; 16] = value.try_into().ok()?;
                            nameserver = Some(IpAddr::from(bytes));
                        }
                        _ => {}
                    }
                }
                Expressions::Immediate(immediate) => {
                    if !immediate.contains(&Immediate::DestinationRegister(Register::Reg2)) {
                        continue;
                    }
                    port = immediate.iter().find_map(|i| match i {
                        Immediate::Data(DataAttribute::Value(value)) => {
                            let bytes: [u8; 2] = value.as_slice().try_into().ok()?;
                            Some(u16::from_be_bytes(bytes))
                        }
                        _ => None,
                    });
                }
                Expressions::Other {
                    expression_type, ..
                } if expression_type == "nat" => nat = true,
                _ => {}
            }
        }
    }
    let nameserver = nameserver?;
    if !nat || family_matched != Some(nfproto(nameserver)) {
        return None;
    }
    Some((
        Redirect {
            nameserver,
            port: port?,
        },
        transport?,
    ))
}

/// The redirects the rules of a dump do, in order, each once (a redirect has a rule per
/// transport).
pub fn redirects_of<'a>(rules: impl IntoIterator<Item = &'a RuleMessage>) -> Vec<Redirect> {
    let mut redirects = Vec::new();
    for rule in rules {
        if let Some((redirect, _)) = decode_rule(&rule.attributes)
            && !redirects.contains(&redirect)
        {
            redirects.push(redirect);
        }
    }
    redirects
}

/// Asks for the table (an error ENOENT if there is none).
pub fn get_table_request(sequence: u32) -> NetlinkMessage<NetfilterMessage> {
    netfilter_message(
        NetfilterProtoFamily::Inet,
        NLM_F_REQUEST | NLM_F_ACK,
        sequence,
        NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.to_string())],
        }),
    )
}

/// Asks for a dump of the chain's rules.
pub fn dump_rules_request(sequence: u32) -> NetlinkMessage<NetfilterMessage> {
    netfilter_message(
        NetfilterProtoFamily::Inet,
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.to_string()),
                RuleAttribute::Chain(CHAIN.to_string()),
            ],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::parse_u32_be;
    use netlink_packet_netfilter::NetfilterMessageInner;

    /// Reads a u32 attribute of the `nat` expression back.
    fn nat_attribute(expression: &Expressions, kind: u16) -> Option<u32> {
        match expression {
            Expressions::Other {
                expression_type,
                attributes,
            } if expression_type == "nat" => attributes
                .iter()
                .find(|attribute| netlink_packet_core::Nla::kind(*attribute) == kind)
                .and_then(|attribute| {
                    let mut value = vec![0; netlink_packet_core::Nla::value_len(attribute)];
                    netlink_packet_core::Nla::emit_value(attribute, &mut value);
                    parse_u32_be(&value).ok()
                }),
            _ => None,
        }
    }

    fn v4() -> Redirect {
        Redirect {
            nameserver: "10.9.9.9".parse().unwrap(),
            port: 5353,
        }
    }

    fn v6() -> Redirect {
        Redirect {
            nameserver: "fd00:9::9".parse().unwrap(),
            port: 15353,
        }
    }

    fn changes(bytes: &[u8]) -> Vec<NetlinkMessage<NetfilterMessage>> {
        parse_messages(bytes).unwrap()
    }

    fn rules(messages: &[NetlinkMessage<NetfilterMessage>]) -> Vec<RuleMessage> {
        messages
            .iter()
            .filter_map(|message| match &message.payload {
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)),
                    ..
                }) => Some(rule.clone()),
                _ => None,
            })
            .collect()
    }

    fn expressions(rule: &RuleMessage) -> Vec<Expressions> {
        let Some(RuleAttribute::Expressions(list)) = rule
            .attributes
            .iter()
            .find(|a| matches!(a, RuleAttribute::Expressions(_)))
        else {
            panic!("no expressions in {rule:?}");
        };
        list.iter()
            .flat_map(|element| match element {
                ListAttribute::Element(parts) => parts.clone(),
                _ => vec![],
            })
            .filter_map(|part| match part {
                ExpressionAttribute::Data(data) => Some(data),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_batch_decodes_back_to_its_redirects() {
        let redirects = [v4(), v6()];
        let bytes = serialize(&install_batch(&redirects, true, 7));
        let messages = changes(&bytes);
        // Begin, table, chain, 2 redirects x 2 transports, end.
        assert_eq!(messages.len(), 8);
        let sequences: Vec<u32> = messages.iter().map(|m| m.header.sequence_number).collect();
        assert_eq!(sequences, (7..15).collect::<Vec<_>>());
        let rules = rules(&messages);
        assert_eq!(rules.len(), 4);
        let decoded: Vec<_> = rules
            .iter()
            .map(|rule| decode_rule(&rule.attributes).unwrap())
            .collect();
        assert_eq!(
            decoded,
            vec![
                (v4(), Transport::Udp),
                (v4(), Transport::Tcp),
                (v6(), Transport::Udp),
                (v6(), Transport::Tcp),
            ]
        );
        assert_eq!(redirects_of(&rules), redirects.to_vec());
    }

    #[test]
    fn the_batch_is_framed_and_the_table_refused_if_it_exists() {
        let messages = install_batch(&[v4()], true, 1);
        let first = &messages[0];
        let last = messages.last().unwrap();
        // NFNL_MSG_BATCH_BEGIN / END (subsystem 0), res_id naming nftables.
        assert_eq!(first.header.message_type, 0x10);
        assert_eq!(last.header.message_type, 0x11);
        for frame in [first, last] {
            let NetlinkPayload::InnerMessage(inner) = &frame.payload else {
                panic!("{frame:?}");
            };
            assert_eq!(inner.header.res_id, NFNL_SUBSYS_NFTABLES);
        }
        let table = &messages[1];
        assert_eq!(table.header.message_type, (10 << 8));
        assert_eq!(
            table.header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            header,
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewTable(table)),
            ..
        }) = &table.payload
        else {
            panic!("{table:?}");
        };
        assert_eq!(header.family, NetfilterProtoFamily::Inet);
        assert!(
            table
                .attributes
                .contains(&TableAttribute::Flags(TableFlags::Owner))
        );
        let unowned = install_batch(&[v4()], false, 1);
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewTable(table)),
            ..
        }) = &unowned[1].payload
        else {
            panic!();
        };
        assert_eq!(
            table.attributes,
            vec![TableAttribute::Name(TABLE.to_string())]
        );
    }

    #[test]
    fn the_chain_is_nat_on_output_at_dstnat() {
        let messages = changes(&serialize(&install_batch(&[v4()], true, 1)));
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewChain(chain)),
            ..
        }) = &messages[2].payload
        else {
            panic!("{:?}", messages[2]);
        };
        assert!(
            chain
                .attributes
                .contains(&ChainAttribute::Type("nat".into()))
        );
        assert!(chain.attributes.contains(&ChainAttribute::Hook(vec![
            Hook::Number(InetHookNumber::LocalOut.into()),
            Hook::Priority(-100i32 as u32),
        ])));
    }

    #[test]
    fn an_ipv4_rule_matches_the_nameserver_and_goes_to_127_0_0_1() {
        let rule = &rules(&changes(&serialize(&install_batch(&[v4()], true, 1))))[0];
        let parts = expressions(rule);
        assert!(parts.contains(&Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::NotEqual),
            Cmp::Data(DataAttribute::Value(BYPASS_MARK.to_ne_bytes().to_vec())),
        ])));
        assert!(parts.contains(&Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(1),
            Payload::Offset(16),
            Payload::Len(4),
        ])));
        assert!(parts.contains(&Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(vec![10, 9, 9, 9])),
        ])));
        assert!(parts.contains(&Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(vec![0, 53])),
        ])));
        assert!(parts.contains(&Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Reg1),
            Immediate::Data(DataAttribute::Value(vec![127, 0, 0, 1])),
        ])));
        assert!(parts.contains(&Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Reg2),
            Immediate::Data(DataAttribute::Value(5353u16.to_be_bytes().to_vec())),
        ])));
        let nat = parts.last().unwrap();
        assert_eq!(nat_attribute(nat, NFTA_NAT_TYPE), Some(NFT_NAT_DNAT));
        assert_eq!(
            nat_attribute(nat, NFTA_NAT_FAMILY),
            Some(u32::from(NFPROTO_IPV4))
        );
        assert_eq!(nat_attribute(nat, NFTA_NAT_REG_ADDR_MIN), Some(1));
        assert_eq!(nat_attribute(nat, NFTA_NAT_REG_PROTO_MIN), Some(2));
    }

    #[test]
    fn an_ipv6_nameserver_gets_ip6_and_the_ipv6_loopback() {
        let rule = &rules(&changes(&serialize(&install_batch(&[v6()], true, 1))))[1];
        let parts = expressions(rule);
        assert!(parts.contains(&Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(vec![NFPROTO_IPV6])),
        ])));
        assert!(parts.contains(&Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(1),
            Payload::Offset(24),
            Payload::Len(16),
        ])));
        assert!(parts.contains(&Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(vec![libc::IPPROTO_TCP as u8])),
        ])));
        assert!(parts.contains(&Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Reg1),
            Immediate::Data(DataAttribute::Value(Ipv6Addr::LOCALHOST.octets().to_vec())),
        ])));
        assert_eq!(
            nat_attribute(parts.last().unwrap(), NFTA_NAT_FAMILY),
            Some(u32::from(NFPROTO_IPV6))
        );
        assert_eq!(decode_rule(&rule.attributes), Some((v6(), Transport::Tcp)));
    }

    #[test]
    fn a_rule_that_is_not_ours_decodes_to_nothing() {
        let rule = RuleAttribute::Expressions(vec![
            load_meta(MetaKey::L4Proto),
            compare(Operator::Equal, vec![17]),
        ]);
        assert_eq!(decode_rule(&[rule]), None);
        // A rule whose family match disagrees with its address.
        let mut parts = rule_expressions(&v4(), Transport::Udp);
        parts[3] = compare(Operator::Equal, vec![NFPROTO_IPV6]);
        assert_eq!(decode_rule(&[RuleAttribute::Expressions(parts)]), None);
    }

    #[test]
    fn nothing_or_port_zero_is_refused() {
        assert!(matches!(validate(&[]), Err(RedirectError::NoRedirects)));
        let zero = Redirect { port: 0, ..v4() };
        assert!(matches!(
            validate(&[v4(), zero]),
            Err(RedirectError::PortZero { .. })
        ));
        assert!(validate(&[v4(), v6()]).is_ok());
    }

    #[test]
    fn removal_deletes_the_table_in_a_batch() {
        let messages = changes(&serialize(&remove_batch(4)));
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1].header.message_type, (10 << 8) | 2);
        assert_eq!(messages[1].header.sequence_number, 5);
    }
}
