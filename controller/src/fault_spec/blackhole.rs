//! `blackhole`: the target's outgoing traffic dropped, all of it or to CIDRs / ports.

use chaos_proto::api;
use clap::Args;
use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSpec {
    /// Only traffic to this IPv4 or IPv6 CIDR (repeatable).
    #[arg(long, value_name = "CIDR")]
    #[serde(default)]
    pub to: Vec<String>,
    /// Only traffic to this port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    #[serde(default)]
    pub ports: Vec<u32>,
    /// The node's own default-route interface instead of the target's (the agent needs
    /// --allow-node-scope; its gRPC port stays reachable).
    #[arg(long)]
    #[serde(default)]
    pub node_scope: bool,
    /// The interface to drop on instead of the default-route one.
    #[arg(long)]
    #[serde(default)]
    pub interface: Option<String>,
}

impl BlackholeSpec {
    pub fn to_api(&self) -> api::BlackholeFault {
        api::BlackholeFault {
            destinations: self.to.clone(),
            ports: self.ports.clone(),
            node_scope: self.node_scope,
            interface: self.interface.clone().unwrap_or_default(),
        }
    }
}
