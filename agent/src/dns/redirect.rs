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
//! from redirects, a dump decoded back to them) are pure functions in [`wire`], unit-tested
//! without root, as are the conntrack messages in [`conntrack`] (the revert's cleanup of the
//! NAT bindings the redirect left in conntrack, [`Netfilter::forget_flows`]); [`Netfilter`] is
//! the thin blocking socket layer (run it where blocking is fine, e.g. in `spawn_blocking`;
//! each answer is awaited at most [`RECEIVE_TIMEOUT`]).

use std::io;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nftables::NfTablesMessage;
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

pub mod conntrack;
pub mod wire;

pub use wire::{decode_rule, install_batch, loopback_of, redirects_of, remove_batch, validate};

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

fn errno_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.abs())
}

/// A NETLINK_NETFILTER socket in the calling thread's network namespace (make it in another
/// one with `chaos_netem::make_socket_in`), with its receive timeout set.
pub fn netfilter_socket() -> io::Result<OwnedFd> {
    let socket = Socket::new(NETLINK_NETFILTER)?;
    // SAFETY: the descriptor was just taken out of the socket; nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) };
    set_receive_timeout(&socket)?;
    Ok(socket)
}

fn set_receive_timeout(socket: &impl std::os::fd::AsFd) -> io::Result<()> {
    let timeout = nix::sys::time::TimeVal::new(
        RECEIVE_TIMEOUT.as_secs() as _,
        RECEIVE_TIMEOUT.subsec_micros() as _,
    );
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
    Ok(())
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
        let _ = set_receive_timeout(&fd);
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
        let get_table = wire::get_table_request(sequence);
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
        let dump = wire::dump_rules_request(sequence);
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

    /// Deletes the conntrack entries of the socket's namespace that `redirects` DNAT'd (see
    /// [`conntrack::Flow::redirected_by`]): with the table gone, their NAT bindings are what
    /// is left of the redirect, and would keep those flows going to the responders' ports
    /// until the entries expire. Call it after [`Netfilter::remove`] (before, the next packet
    /// of a flow would be DNAT'd again). How many entries it deleted; an entry that went
    /// meanwhile is not counted, and is no failure.
    pub fn forget_flows(&mut self, redirects: &[Redirect]) -> Result<usize, RedirectError> {
        self.delete_flows(redirects, conntrack::Flow::redirected_by)
    }

    /// After the install: deletes the conntrack entries of UDP flows to the nameservers that
    /// began before the redirect ([`conntrack::Flow::escapes`]), so that their next datagram
    /// is redirected too. Returns how many were deleted.
    pub fn catch_flows(&mut self, redirects: &[Redirect]) -> Result<usize, RedirectError> {
        self.delete_flows(redirects, conntrack::Flow::escapes)
    }

    /// Deletes the entries of the redirects' families that `select` picks.
    fn delete_flows(
        &mut self,
        redirects: &[Redirect],
        select: fn(&conntrack::Flow, &[Redirect]) -> bool,
    ) -> Result<usize, RedirectError> {
        let mut flows = Vec::new();
        for family in conntrack::families_of(redirects) {
            flows.extend(
                self.dump_flows(family)?
                    .into_iter()
                    .filter(|flow| select(flow, redirects)),
            );
        }
        let mut deleted = 0;
        for flow in &flows {
            let what = format!(
                "delete the conntrack entry {} -> {} (answered from {})",
                flow.original.source, flow.original.destination, flow.reply.source
            );
            let sequence = self.next_sequences(1);
            self.send(&[conntrack::delete_request(flow, sequence)], &what)?;
            loop {
                match answer_to(&self.receive(&what)?, sequence) {
                    Some(Answer::Ack) => {
                        deleted += 1;
                        break;
                    }
                    // Expired, or replaced by a newer entry (another id) meanwhile.
                    Some(Answer::Refused(source))
                        if source.raw_os_error() == Some(libc::ENOENT) =>
                    {
                        break;
                    }
                    Some(Answer::Refused(source)) => {
                        return Err(RedirectError::Kernel { what, source });
                    }
                    None => continue,
                }
            }
        }
        Ok(deleted)
    }

    /// The conntrack entries of `family` in the socket's namespace.
    fn dump_flows(
        &mut self,
        family: NetfilterProtoFamily,
    ) -> Result<Vec<conntrack::Flow>, RedirectError> {
        let what = format!("dump the conntrack entries ({family:?})");
        let sequence = self.next_sequences(1);
        self.send(&[conntrack::dump_request(family, sequence)], &what)?;
        let mut flows = Vec::new();
        loop {
            for message in self.receive(&what)? {
                if message.header.sequence_number != sequence {
                    continue;
                }
                match &message.payload {
                    NetlinkPayload::Done(_) => return Ok(flows),
                    NetlinkPayload::Error(error) => match error.code {
                        Some(code) => {
                            return Err(RedirectError::Kernel {
                                what,
                                source: errno_error(code.get()),
                            });
                        }
                        None => return Ok(flows),
                    },
                    _ => flows.extend(conntrack::flow_of(&message)),
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
        let bytes = wire::serialize(messages);
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
        wire::parse_messages(&bytes).map_err(|reason| RedirectError::Decode {
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
