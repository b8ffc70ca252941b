//! The DNS fault's redirect: DNAT of a network namespace's DNS traffic (UDP and TCP port 53 to
//! given nameservers) to local ports where the fault's responder listens, through nftables
//! over netlink (NETLINK_NETFILTER), in the namespace of the socket used.
//!
//! What is installed, in one nfnetlink batch (the kernel applies all of it or nothing):
//! table inet [`TABLE`], chain [`CHAIN`] (type nat, hook output, priority -100) and per
//! redirect and transport one rule, as
//! `meta mark != BYPASS_MARK meta nfproto ipv4 ip daddr NS meta l4proto udp th dport 53
//! dnat ip to 127.0.0.1:PORT` (ip6 and `[::1]` for an IPv6 nameserver).
//! - Output hook: only the namespace's own (locally generated) queries are redirected, which
//!   is the target's resolver traffic; conntrack rewrites the answers back, so the client
//!   sees them come from NS:53.
//! - The responder's own upstream sockets carry [`BYPASS_MARK`] (SO_MARK) and pass untouched,
//!   so what it forwards reaches the original resolver instead of itself.
//! - The table is owned by its socket (`NFT_TABLE_F_OWNER`, Linux 5.12): the kernel removes it
//!   when the socket closes, so an agent that crashes leaves no redirect behind. Older kernels
//!   refuse the flag; the table is then installed without it and [`Installed`] says so.
//!
//! The messages are the maintained `netlink-packet-netfilter` crate's; what it lacks (the
//! `nat` expression) is built from its generic attributes. The decisions (the batch built
//! from redirects, a dump decoded back to them) are pure functions, unit-tested without root;
//! [`Netfilter`] is the thin blocking socket layer (run it where blocking is fine, e.g. in
//! `spawn_blocking`; each answer is awaited at most [`RECEIVE_TIMEOUT`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

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
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// The table holding the redirect (family inet: one chain for IPv4 and IPv6).
pub const TABLE: &str = "chaos_dns";
/// Its one chain.
pub const CHAIN: &str = "redirect";
/// The mark (SO_MARK) of the responder's own upstream sockets: their packets pass untouched.
pub const BYPASS_MARK: u32 = 0x4348_4e53;
/// The chain's priority: `dstnat` (NF_IP_PRI_NAT_DST), where `nft` puts DNAT.
pub const PRIORITY: i32 = -100;
/// How long one answer from the kernel is awaited (it answers in microseconds).
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// The DNS port.
pub const DNS_PORT: u16 = 53;

/// DNS traffic to `nameserver` (port 53, UDP and TCP) goes to `port` on the loopback of the
/// nameserver's family (127.0.0.1 or ::1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Redirect {
    pub nameserver: IpAddr,
    pub port: u16,
}

/// What [`Netfilter::install`] installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// The table is owned by the socket (removed by the kernel when it closes); false on a
    /// kernel that refused the flag (before 5.12): the table then stays until removed.
    pub owned_by_socket: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Udp, Transport::Tcp];

    fn protocol(self) -> u8 {
        match self {
            Transport::Udp => libc::IPPROTO_UDP as u8,
            Transport::Tcp => libc::IPPROTO_TCP as u8,
        }
    }

    fn of_protocol(protocol: u8) -> Option<Transport> {
        Transport::ALL
            .into_iter()
            .find(|transport| transport.protocol() == protocol)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("no redirect given")]
    NoRedirects,
    #[error("redirect of {nameserver} to port 0: a redirect needs a port")]
    PortZero { nameserver: IpAddr },
    #[error(
        "table inet {TABLE} already exists in this network namespace (another DNS fault's \
         redirect); nothing installed"
    )]
    Exists,
    #[error("the kernel refused to {what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink I/O failed while trying to {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the kernel did not answer within {RECEIVE_TIMEOUT:?} while trying to {what}")]
    TimedOut { what: String },
    #[error("cannot decode the kernel's answer while trying to {what}: {reason}")]
    Decode { what: String, reason: String },
}

impl RedirectError {
    /// The kernel's errno, when it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RedirectError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

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

fn nftables(
    family: NetfilterProtoFamily,
    flags: u16,
    sequence: u32,
    message: NfTablesMessage,
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
        messages.push(nftables(
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

fn errno_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.abs())
}

/// A NETLINK_NETFILTER socket in the calling thread's network namespace (make it in another
/// one with `chaos_netem::make_socket_in`), with its receive timeout set.
pub fn netfilter_socket() -> io::Result<OwnedFd> {
    let socket = Socket::new(NETLINK_NETFILTER)?;
    set_receive_timeout(socket.as_raw_fd())?;
    // SAFETY: the descriptor was just taken out of the socket; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) })
}

fn set_receive_timeout(fd: std::os::fd::RawFd) -> io::Result<()> {
    let timeout = libc::timeval {
        tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: RECEIVE_TIMEOUT.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid descriptor and a timeval passed with its own size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The redirect's nftables state in the namespace of its socket. The table it installs is
/// owned by this socket (when the kernel allows): dropping this removes it.
pub struct Netfilter {
    socket: Socket,
    sequence: u32,
}

impl std::fmt::Debug for Netfilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netfilter")
    }
}

/// What the kernel answered to one message of ours.
enum Answer {
    Ack,
    Refused(io::Error),
}

impl Netfilter {
    /// Takes a socket from [`netfilter_socket`] (made in the namespace to change).
    pub fn from_fd(fd: OwnedFd) -> Self {
        // Already set by `netfilter_socket`; set again for any other NETLINK_NETFILTER
        // socket. It can only fail on a descriptor that is no socket, whose every
        // operation then fails anyway.
        let _ = set_receive_timeout(fd.as_raw_fd());
        // SAFETY: the descriptor is ours (taken out of the OwnedFd).
        let socket = unsafe { Socket::from_raw_fd(fd.into_raw_fd()) };
        Netfilter {
            socket,
            sequence: 0,
        }
    }

    /// Installs the redirects in one batch. Refused with [`RedirectError::Exists`] if the
    /// table is there already (which is left as it was).
    pub fn install(&mut self, redirects: &[Redirect]) -> Result<Installed, RedirectError> {
        validate(redirects)?;
        match self.install_once(redirects, true) {
            Ok(()) => Ok(Installed {
                owned_by_socket: true,
            }),
            // Before 5.12 the kernel knew no owner flag (EINVAL; later EOPNOTSUPP for
            // unknown flags). Nothing was installed: the batch failed as a whole.
            Err(error) if matches!(error.errno(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) => {
                self.install_once(redirects, false)?;
                Ok(Installed {
                    owned_by_socket: false,
                })
            }
            Err(error) => Err(error),
        }
    }

    fn install_once(&mut self, redirects: &[Redirect], owned: bool) -> Result<(), RedirectError> {
        let first = self.next_sequences(3 + 2 * redirects.len() as u32);
        let messages = install_batch(redirects, owned, first);
        let what = |sequence: u32| match sequence - first {
            1 => format!(
                "create table inet {TABLE}{}",
                if owned { " (owned by its socket)" } else { "" }
            ),
            2 => format!("create chain {CHAIN} (type nat hook output priority {PRIORITY})"),
            n => format!("add rule {} of the redirect", n - 2),
        };
        let failed = self.run_batch(&messages)?;
        match failed {
            None => Ok(()),
            Some((sequence, source)) => {
                // EEXIST: the table is there; EPERM for the table alone: it is there and
                // owned by another socket (the kernel looks an owned table up only for its
                // owner; a missing CAP_NET_ADMIN is refused at the batch's begin instead).
                if sequence == first + 1
                    && matches!(
                        source.raw_os_error(),
                        Some(libc::EEXIST) | Some(libc::EPERM)
                    )
                {
                    return Err(RedirectError::Exists);
                }
                Err(RedirectError::Kernel {
                    what: what(sequence),
                    source,
                })
            }
        }
    }

    /// Deletes the table; `Ok(false)` if it was not there.
    pub fn remove(&mut self) -> Result<bool, RedirectError> {
        let first = self.next_sequences(3);
        match self.run_batch(&remove_batch(first))? {
            None => Ok(true),
            Some((_, source)) if source.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Some((_, source)) => Err(RedirectError::Kernel {
                what: format!("delete table inet {TABLE}"),
                source,
            }),
        }
    }

    /// The redirects installed, read back from the kernel (the table's rules, decoded);
    /// `None` if there is no table.
    pub fn installed(&mut self) -> Result<Option<Vec<Redirect>>, RedirectError> {
        let what = format!("read table inet {TABLE}");
        let sequence = self.next_sequences(1);
        let get_table = nftables(
            NetfilterProtoFamily::Inet,
            NLM_F_REQUEST | NLM_F_ACK,
            sequence,
            NfTablesMessage::GetTable(TableMessage {
                attributes: vec![TableAttribute::Name(TABLE.to_string())],
            }),
        );
        self.send(&[get_table], &what)?;
        loop {
            let messages = self.receive(&what)?;
            match answer_to(&messages, sequence) {
                Some(Answer::Ack) => break,
                Some(Answer::Refused(source)) if source.raw_os_error() == Some(libc::ENOENT) => {
                    return Ok(None);
                }
                Some(Answer::Refused(source)) => {
                    return Err(RedirectError::Kernel { what, source });
                }
                None => continue,
            }
        }

        let what = format!("dump the rules of chain {CHAIN} in table inet {TABLE}");
        let sequence = self.next_sequences(1);
        let dump = nftables(
            NetfilterProtoFamily::Inet,
            NLM_F_REQUEST | NLM_F_DUMP,
            sequence,
            NfTablesMessage::GetRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(TABLE.to_string()),
                    RuleAttribute::Chain(CHAIN.to_string()),
                ],
            }),
        );
        self.send(&[dump], &what)?;
        let mut rules = Vec::new();
        loop {
            for message in self.receive(&what)? {
                if message.header.sequence_number != sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(Some(redirects_of(&rules))),
                    NetlinkPayload::Error(error) => match error.code {
                        Some(code) => {
                            return Err(RedirectError::Kernel {
                                what,
                                source: errno_error(code.get()),
                            });
                        }
                        None => return Ok(Some(redirects_of(&rules))),
                    },
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)),
                        ..
                    }) => rules.push(rule),
                    _ => {}
                }
            }
        }
    }

    /// Sends a batch and waits for the kernel's answer to each of its changes; the first
    /// refusal (its sequence number and errno), if any. The kernel applies a batch whole or
    /// not at all.
    fn run_batch(
        &mut self,
        messages: &[NetlinkMessage<NetfilterMessage>],
    ) -> Result<Option<(u32, io::Error)>, RedirectError> {
        let what = "apply an nftables batch".to_string();
        let (Some(begin), Some(end)) = (messages.first(), messages.last()) else {
            return Ok(None);
        };
        let (begin, end) = (begin.header.sequence_number, end.header.sequence_number);
        self.send(messages, &what)?;
        let mut pending: Vec<u32> = (begin + 1..end).collect();
        let mut refused: Option<(u32, io::Error)> = None;
        while !pending.is_empty() {
            let messages = match self.receive(&what) {
                Ok(messages) => messages,
                // A kernel that refused the batch's framing answers only that.
                Err(RedirectError::TimedOut { .. }) if refused.is_some() => break,
                Err(error) => return Err(error),
            };
            for message in &messages {
                let sequence = message.header.sequence_number;
                if !(begin..=end).contains(&sequence) {
                    continue;
                }
                let Some(answer) = answer_to(std::slice::from_ref(message), sequence) else {
                    continue;
                };
                pending.retain(|&p| p != sequence);
                if let Answer::Refused(source) = answer {
                    if sequence == begin || sequence == end {
                        // The batch itself was refused: nothing else will come.
                        return Ok(Some((sequence, source)));
                    }
                    refused.get_or_insert((sequence, source));
                }
            }
        }
        Ok(refused)
    }

    /// Reserves `count` sequence numbers; the first of them.
    fn next_sequences(&mut self, count: u32) -> u32 {
        let first = self.sequence.wrapping_add(1);
        self.sequence = self.sequence.wrapping_add(count);
        first
    }

    fn send(
        &mut self,
        messages: &[NetlinkMessage<NetfilterMessage>],
        what: &str,
    ) -> Result<(), RedirectError> {
        let bytes = serialize(messages);
        let sent = self
            .socket
            .send_to(&bytes, &SocketAddr::new(0, 0), 0)
            .map_err(|source| RedirectError::Io {
                what: what.to_string(),
                source,
            })?;
        if sent != bytes.len() {
            return Err(RedirectError::Io {
                what: what.to_string(),
                source: io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("sent {sent} of {} bytes", bytes.len()),
                ),
            });
        }
        Ok(())
    }

    fn receive(
        &mut self,
        what: &str,
    ) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, RedirectError> {
        let (bytes, _) = self.socket.recv_from_full().map_err(|source| {
            if matches!(
                source.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                RedirectError::TimedOut {
                    what: what.to_string(),
                }
            } else {
                RedirectError::Io {
                    what: what.to_string(),
                    source,
                }
            }
        })?;
        parse_messages(&bytes).map_err(|reason| RedirectError::Decode {
            what: what.to_string(),
            reason,
        })
    }
}

/// The kernel's acknowledgement or refusal of message `sequence` among `messages`.
fn answer_to(messages: &[NetlinkMessage<NetfilterMessage>], sequence: u32) -> Option<Answer> {
    messages.iter().find_map(|message| {
        if message.header.sequence_number != sequence {
            return None;
        }
        match &message.payload {
            NetlinkPayload::Error(error) => Some(match error.code {
                None => Answer::Ack,
                Some(code) => Answer::Refused(errno_error(code.get())),
            }),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::parse_u32_be;

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
