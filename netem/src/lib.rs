//! netem and qdisc handling over rtnetlink, inside a target's network namespace.
//!
//! - [`codec`]: pure encoder/decoder of netem's `TCA_OPTIONS` ([`NetemSpec`]);
//! - [`tbf`]: pure encoder/decoder of tbf's `TCA_OPTIONS` ([`TbfSpec`], bandwidth limits);
//! - [`impairment`]: netem or tbf, what an installed fault does to packets;
//! - [`distribution`]: netem delay distribution tables computed from their definitions;
//! - [`netns`]: run rtnetlink operations on a thread inside another network namespace;
//! - [`route`]: the interface carrying the default route;
//! - [`address`]: the namespace's global addresses (what peers reach it by);
//! - [`qdisc`]: snapshot, install netem (or another root), restore, dump;
//! - [`u32`]: pure encoder of u32 selectors, classify and mirred-redirect filter options;
//! - [`filter`]: add, delete and dump u32 filters;
//! - [`tree`]: targeted netem (prio root, netem band, exclusion and match filters);
//! - [`ingress`]: ingress impairment through an ifb device and a mirred redirect;
//! - [`capabilities`]: which qdisc/filter modules the kernel has, and loading them.
//!
//! Typical use (blocking; from async code wrap it in `spawn_blocking`):
//! `in_netns(&netns_of_pid(pid), |h| async move { let i = default_route_interface(&h).await?;
//! install_netem(&h, i, &spec).await })`.

pub mod address;
pub mod capabilities;
pub mod codec;
pub mod distribution;
pub mod filter;
pub mod impairment;
pub mod ingress;
pub mod netns;
pub mod qdisc;
mod replay;
pub mod route;
pub mod tbf;
pub mod tree;
pub mod u32;
mod wire;

pub use address::{global_addresses, global_addresses_of};
pub use codec::{CodecError, DecodedNetem, NetemSpec};
pub use distribution::Distribution;
pub use impairment::Impairment;
pub use netns::{
    NETLINK_TIMEOUT, NetnsError, NetnsHandle, NetnsId, OpenNetns, find_netns, in_netns,
    make_socket_in, named_netns, netns_id, netns_of_pid, socket_netns_cookie,
};
pub use qdisc::{QdiscError, QdiscRecord, QdiscSnapshot, QdiscView, Restored};
pub use route::{
    Link, LinkKey, RouteError, default_route_interface, default_route_interfaces,
    default_route_interfaces_of, interface, interfaces, link, link_exists,
};
pub use rtnetlink::Handle;
pub use tbf::{TbfError, TbfSpec};
pub use wire::WireError;
