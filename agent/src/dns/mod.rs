//! The DNS fault: for names matching its rules, queries from the target's network namespace get
//! NXDOMAIN, SERVFAIL, no answer, a late answer or given addresses; every other name resolves
//! as before through the pod's own resolver.
//!
//! Design: the fault redirects the namespace's DNS traffic (UDP and TCP port 53) to a small
//! responder that the agent runs for that fault alone, and that forwards whatever it does not
//! fault to the original resolver.
//! - One responder per fault, not one shared by the node: its lifetime is the fault's (dropping
//!   its handle closes its sockets, so a revert leaves nothing listening), two faults never see
//!   each other's rules, and a crash of one touches no other target.
//! - What it forwards, it forwards as the original bytes (over UDP with an id of its own
//!   socket's, see `upstream_udp`) and relays the resolver's answer back as is: the pod's resolver keeps the last word on everything not faulted (EDNS options,
//!   DNSSEC records, truncation, names the codec would re-encode differently), and a name
//!   that is not faulted costs one parse and no re-encoding.
//! - The wire format is hickory-proto's, a maintained codec; [`rules`] holds the decisions,
//!   pure and unit-tested, and [`responder`] the thin socket layer.
//! - [`redirect`]: the DNAT of the namespace's DNS traffic to the responder (nftables over
//!   netlink, a table owned by its socket; the conntrack entries the redirect must not leave
//!   behind, or find from before it); [`resolv_conf`]: the nameservers to redirect;
//!   `upstream_udp`: the one UDP socket a responder forwards through.

pub mod redirect;
pub mod resolv_conf;
pub mod responder;
pub mod rules;
mod upstream_udp;
