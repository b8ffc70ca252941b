//! The blackhole kind's plan and its validation: traffic to chosen destinations and
//! ports dropped, in the target's network namespace or (if the agent allows) the node's.

use chaos_proto::api;

use super::Limits;
use super::targeting::{
    Cidr, NodeNetworkPolicy, address_filters, check_filter_count, check_interface_name,
    check_ports, filter_product, parse_cidrs,
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
        destinations: parse_cidrs("blackhole.destinations", &b.destinations)?,
        ports: check_ports("blackhole.ports", &b.ports)?,
        node_scope: b.node_scope,
        node: NodeNetworkPolicy::of(limits),
        interface: b.interface.clone(),
    };
    check_filter_count(
        "blackhole.destinations",
        filter_product(&[address_filters(&b.destinations), b.ports.len().max(1), 2]),
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

    #[test]
    fn ipv6_destinations_are_blackholed_and_counted_in_their_family() {
        let blackhole = |destinations: Vec<String>, ports: Vec<u32>| {
            validate_inject(
                &req(
                    "pid:2",
                    1000,
                    Fault::Blackhole(api::BlackholeFault {
                        destinations,
                        ports,
                        ..Default::default()
                    }),
                ),
                &Limits::default(),
            )
        };
        let valid = blackhole(vec!["fd00:c4a0::2".into()], vec![]).unwrap();
        let crate::validate::FaultPlan::Blackhole(plan) = valid.plan else {
            panic!("not a blackhole plan: {:?}", valid.plan);
        };
        let first = plan.destinations[0];
        assert_eq!(
            (first.addr.to_string(), first.prefix),
            ("fd00:c4a0::2".into(), 128)
        );
        // Ports alone: tcp and udp in both families, 64 ports are 256 filters.
        assert!(blackhole(vec![], (1..=64).collect()).is_ok());
        assert!(matches!(
            blackhole(vec![], (1..=65).collect()),
            Err(AgentError::InvalidArgument {
                field: "blackhole.destinations",
                ..
            })
        ));
    }
}
