//! The blackhole kind's plan and its validation: traffic to chosen destinations and
//! ports dropped, in the target's network namespace or (if the agent allows) the node's.

use chaos_proto::api;

use super::Limits;
use super::targeting::{
    Cidr, NodeNetworkPolicy, check_filter_count, check_interface_name, check_ports, filter_product,
    parse_ipv4_cidrs,
};
use crate::error::AgentError;

#[derive(Debug, Clone, PartialEq)]
pub struct BlackholePlan {
    pub destinations: Vec<Cidr>,
    pub ports: Vec<u16>,
    pub node_scope: bool,
    pub node: NodeNetworkPolicy,
    /// Empty: the interface carrying the default route.
    pub interface: String,
}

pub(super) fn validate_blackhole(
    b: &api::BlackholeFault,
    limits: &Limits,
) -> Result<BlackholePlan, AgentError> {
    if b.node_scope && !limits.allow_node_scope {
        return Err(AgentError::PermissionDenied(
            "node-scope blackholes are disabled on this agent (start it with --allow-node-scope)"
                .into(),
        ));
    }
    check_interface_name("blackhole.interface", &b.interface)?;
    let plan = BlackholePlan {
        destinations: parse_ipv4_cidrs("blackhole.destinations", &b.destinations)?,
        ports: check_ports("blackhole.ports", &b.ports)?,
        node_scope: b.node_scope,
        node: NodeNetworkPolicy::of(limits),
        interface: b.interface.clone(),
    };
    check_filter_count(
        "blackhole.destinations",
        filter_product(&[b.destinations.len().max(1), b.ports.len().max(1), 2]),
    )?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_support::req;
    use crate::validate::validate_inject;
    use api::inject_request::Fault;

    #[test]
    fn node_scope_needs_the_agent_flag() {
        let r = req(
            "pid:2",
            1000,
            Fault::Blackhole(api::BlackholeFault {
                node_scope: true,
                ..Default::default()
            }),
        );
        assert!(matches!(
            validate_inject(&r, &Limits::default()),
            Err(AgentError::PermissionDenied(_))
        ));
        let allowed = Limits {
            allow_node_scope: true,
            ..Limits::default()
        };
        assert!(validate_inject(&r, &allowed).is_ok());
    }
}
