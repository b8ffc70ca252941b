//! What a network or blackhole request asks of the kernel, decided from the validated
//! plan: the impairing qdisc, the u32 classification, the direction and the scope. Pure:
//! nothing here talks to the kernel.

use chaos_netem::tree::Classifier;
use chaos_netem::u32::{End, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IpCidr, TrafficMatch};
use chaos_netem::{Distribution, Impairment, NetemSpec, TbfSpec};
use chaos_proto::api;

use crate::validate::{BlackholePlan, Cidr, NetworkPlan, NodeNetworkPolicy};

/// Which way the impaired packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Egress,
    Ingress,
}

/// Whose interface: the targets' namespaces, or the node's own (host namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Targets,
    Node,
}

/// What a network or blackhole request asks of the kernel, decided from the plan. Pure.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRequest {
    /// Network or blackhole: the same machinery, each its own kind for lists and metrics.
    pub kind: api::FaultKind,
    pub impairment: Impairment,
    pub classifier: Classifier,
    pub direction: Direction,
    pub interface: Option<String>,
    pub scope: Scope,
    /// What the agent permits if a namespace turns out to be the node's.
    pub node: NodeNetworkPolicy,
    /// The tbf sizes the request set itself, which prepare checks against each
    /// interface's MTU (the agent's defaults are left as they always were).
    pub asked: AskedSizes,
}

/// Which of a tbf's sizes a request set (`rate_burst_bytes`, `rate_queue_bytes`): each
/// must hold a full frame of every interface, which only prepare, inside the
/// namespace, can tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AskedSizes {
    pub burst: bool,
    pub queue: bool,
}

impl NetworkRequest {
    /// Leaves TCP to and from `port` (the agent's gRPC port) alone: exclusions before
    /// every match, and, for a fault on all traffic, a match-all behind them. The fault
    /// then needs the targeted tree (sch_prio and cls_u32). Idempotent.
    pub fn keep_reachable(&mut self, port: u16) {
        if self.classifier.matches.is_empty() {
            self.classifier.matches.push(TrafficMatch::default());
        }
        for end in [End::Source, End::Destination] {
            let kept = TrafficMatch {
                protocol: Some(IPPROTO_TCP),
                port: Some((end, port)),
                ..Default::default()
            };
            if !self.classifier.exclusions.contains(&kept) {
                self.classifier.exclusions.push(kept);
            }
        }
    }

    /// Kernel modules this request needs, each with what it is for.
    pub fn required_modules(&self) -> Vec<&'static str> {
        let mut modules = vec![self.impairment.module()];
        if !self.classifier.is_empty() {
            modules.extend(["sch_prio", "cls_u32"]);
        }
        if self.direction == Direction::Ingress {
            for module in ["sch_ingress", "ifb", "act_mirred", "cls_u32"] {
                if !modules.contains(&module) {
                    modules.push(module);
                }
            }
        }
        modules
    }
}

/// A validated network (IPv4 or IPv6) as the classifier takes it.
fn ip_cidr(cidr: &Cidr) -> IpCidr {
    IpCidr {
        addr: cidr.addr,
        prefix: cidr.prefix,
    }
}

/// The u32 classification of a request: every combination of destination, port and
/// protocol is one match (any of them sends a packet to netem); exclusions win. `end`
/// is the remote side of the packets: their destination on egress, their source on
/// ingress. Ports without a protocol mean TCP and UDP. Destinations and exclusions may
/// be IPv4 or IPv6 networks, each matched in its own family; a match without a
/// destination (ports, a protocol) is in both families (see `Classifier::rules`). No
/// targeting and no exclusions is the empty classifier (plain netem on everything).
pub fn classifier(
    end: End,
    destinations: &[Cidr],
    ports: &[u16],
    protocol: api::Protocol,
    exclude_destinations: &[Cidr],
    exclude_ports: &[u16],
) -> Classifier {
    let port_protocols: Vec<Option<u8>> = match protocol {
        api::Protocol::Any if ports.is_empty() => vec![None],
        api::Protocol::Any => vec![Some(IPPROTO_TCP), Some(IPPROTO_UDP)],
        api::Protocol::Tcp => vec![Some(IPPROTO_TCP)],
        api::Protocol::Udp => vec![Some(IPPROTO_UDP)],
        api::Protocol::Icmp => vec![Some(IPPROTO_ICMP)],
    };
    let addresses: Vec<Option<IpCidr>> = if destinations.is_empty() {
        vec![None]
    } else {
        destinations.iter().map(ip_cidr).map(Some).collect()
    };
    let port_list: Vec<Option<u16>> = if ports.is_empty() {
        vec![None]
    } else {
        ports.iter().copied().map(Some).collect()
    };
    let mut matches = Vec::new();
    for address in &addresses {
        for port in &port_list {
            for protocol in &port_protocols {
                matches.push(TrafficMatch {
                    protocol: *protocol,
                    address: address.map(|a| (end, a)),
                    port: port.map(|p| (end, p)),
                });
            }
        }
    }
    let mut exclusions: Vec<TrafficMatch> = exclude_destinations
        .iter()
        .map(ip_cidr)
        .map(|a| TrafficMatch {
            address: Some((end, a)),
            ..Default::default()
        })
        .collect();
    for port in exclude_ports {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            exclusions.push(TrafficMatch {
                protocol: Some(protocol),
                port: Some((end, *port)),
                ..Default::default()
            });
        }
    }
    let targeted = !destinations.is_empty() || !ports.is_empty() || protocol != api::Protocol::Any;
    if !targeted && exclusions.is_empty() {
        return Classifier::default();
    }
    Classifier {
        exclusions,
        matches,
    }
}

/// A network request as the kernel should see it.
pub fn network_request(plan: &NetworkPlan) -> NetworkRequest {
    let request = &plan.request;
    let direction = if request.direction == api::Direction::Ingress as i32 {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let end = match direction {
        Direction::Egress => End::Destination,
        Direction::Ingress => End::Source,
    };
    let ports: Vec<u16> = request.ports.iter().map(|p| *p as u16).collect();
    let exclude_ports: Vec<u16> = request.exclude_ports.iter().map(|p| *p as u16).collect();
    NetworkRequest {
        kind: api::FaultKind::Network,
        impairment: impairment(request),
        classifier: classifier(
            end,
            &plan.destinations,
            &ports,
            api::Protocol::try_from(request.protocol).unwrap_or(api::Protocol::Any),
            &plan.exclude_destinations,
            &exclude_ports,
        ),
        direction,
        interface: (!request.interface.is_empty()).then(|| request.interface.clone()),
        scope: Scope::Targets,
        node: plan.node,
        asked: AskedSizes {
            burst: request.rate_burst_bytes > 0,
            queue: request.rate_queue_bytes > 0,
        },
    }
}

/// A blackhole: every matching packet dropped (netem loss 100 %, the same tree and
/// restore path as a network fault, so no extra kernel module is involved). Node scope
/// is the node's namespace, where `prepare` keeps the agent's port reachable.
pub fn blackhole_request(plan: &BlackholePlan) -> NetworkRequest {
    let classifier = classifier(
        End::Destination,
        &plan.destinations,
        &plan.ports,
        api::Protocol::Any,
        &[],
        &[],
    );
    NetworkRequest {
        kind: api::FaultKind::Blackhole,
        impairment: Impairment::Netem(NetemSpec {
            loss_pct: 100.0,
            ..NetemSpec::default()
        }),
        classifier,
        direction: Direction::Egress,
        interface: (!plan.interface.is_empty()).then(|| plan.interface.clone()),
        scope: if plan.node_scope {
            Scope::Node
        } else {
            Scope::Targets
        },
        node: plan.node,
        asked: AskedSizes::default(),
    }
}

/// Whether the request is a bandwidth limit and nothing else, which is a tbf; validation
/// asks the same to refuse tbf sizes where netem's rate would take the limit.
pub fn rate_alone(request: &api::NetworkFault) -> bool {
    let spec = netem_spec(request);
    let rate_only = NetemSpec {
        rate_bytes_per_sec: spec.rate_bytes_per_sec,
        ..NetemSpec::default()
    };
    spec.rate_bytes_per_sec > 0 && spec == rate_only
}

/// What the request's qdisc does: a bandwidth limit alone is a tbf (a limit as a slow
/// link imposes it, and no need for sch_netem), with the bucket and queue it set (0: the
/// agent's defaults); anything else is netem, with the rate (if any) among its
/// impairments.
pub fn impairment(request: &api::NetworkFault) -> Impairment {
    if rate_alone(request) {
        // Validation bounds both sizes far below u32::MAX; a size that did not fit would
        // fall back to the default rather than be cut.
        let size = |bytes: u64| u32::try_from(bytes).ok().filter(|b| *b > 0);
        Impairment::Tbf(TbfSpec::with_sizes(
            request.rate_bytes_per_second,
            size(request.rate_burst_bytes),
            size(request.rate_queue_bytes),
        ))
    } else {
        Impairment::Netem(netem_spec(request))
    }
}

/// The netem parameters a request asks for, in the units chaos-netem uses.
pub fn netem_spec(request: &api::NetworkFault) -> NetemSpec {
    let distribution = match api::Distribution::try_from(request.distribution) {
        Ok(api::Distribution::Normal) => Some(Distribution::Normal),
        Ok(api::Distribution::Pareto) => Some(Distribution::Pareto),
        Ok(api::Distribution::Paretonormal) => Some(Distribution::ParetoNormal),
        // Uniform is the kernel's built-in jitter shape: no table.
        _ => None,
    };
    NetemSpec {
        delay_us: request.delay_us,
        jitter_us: request.jitter_us,
        delay_correlation_pct: request.delay_correlation,
        distribution,
        loss_pct: request.loss_percent,
        loss_correlation_pct: request.loss_correlation,
        duplicate_pct: request.duplicate_percent,
        corrupt_pct: request.corrupt_percent,
        reorder_pct: request.reorder_percent,
        // As tc does: reordering without a gap means every packet is a candidate.
        reorder_gap: if request.reorder_percent > 0.0 {
            request.reorder_gap.max(1)
        } else {
            0
        },
        rate_bytes_per_sec: request.rate_bytes_per_second,
        ..NetemSpec::default()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn request() -> api::NetworkFault {
        api::NetworkFault {
            delay_us: 100_000,
            jitter_us: 10_000,
            distribution: api::Distribution::Normal as i32,
            loss_percent: 5.0,
            reorder_percent: 25.0,
            ..Default::default()
        }
    }

    #[test]
    fn the_request_maps_onto_a_netem_spec() {
        let spec = netem_spec(&request());
        assert_eq!(spec.delay_us, 100_000);
        assert_eq!(spec.jitter_us, 10_000);
        assert_eq!(spec.distribution, Some(Distribution::Normal));
        assert_eq!(spec.loss_pct, 5.0);
        // tc's rule: a reorder without gap reorders any packet (gap 1).
        assert_eq!(spec.reorder_gap, 1);
        assert_eq!(
            spec.limit_packets,
            chaos_netem::codec::DEFAULT_LIMIT_PACKETS
        );
        assert!(spec.validate().is_ok());
        let uniform = api::NetworkFault {
            distribution: api::Distribution::Uniform as i32,
            ..request()
        };
        assert_eq!(netem_spec(&uniform).distribution, None);
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn no_targeting_is_plain_netem() {
        let plan = NetworkPlan {
            request: request(),
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        let wanted = network_request(&plan);
        assert!(wanted.classifier.is_empty());
        assert_eq!(wanted.direction, Direction::Egress);
        assert_eq!(wanted.required_modules(), vec!["sch_netem"]);
    }

    #[test]
    fn targeting_is_a_product_of_destinations_ports_and_protocols() {
        let targeted = classifier(
            End::Destination,
            &[cidr("10.0.0.0/8"), cidr("192.168.1.1")],
            &[5432],
            api::Protocol::Any,
            &[cidr("10.9.0.0/16")],
            &[53],
        );
        // 2 destinations x 1 port x (tcp, udp)
        assert_eq!(targeted.matches.len(), 4);
        assert!(
            targeted
                .matches
                .iter()
                .all(|m| m.port == Some((End::Destination, 5432)))
        );
        // one network + port 53 over tcp and udp
        assert_eq!(targeted.exclusions.len(), 3);
        let rules = targeted.rules().unwrap();
        // The IPv4 network is one filter, an excluded port one per protocol and family.
        let described: Vec<String> = rules.iter().map(|r| r.describe()).collect();
        assert_eq!(
            described[..6],
            [
                "ip dst 10.9.0.0/16",
                "ip proto 6 dport 53",
                "ipv6 proto 6 dport 53",
                "ip proto 17 dport 53",
                "ipv6 proto 17 dport 53",
                "ip proto 6 dst 10.0.0.0/8 dport 5432",
            ]
        );
        // A protocol alone, no ports: one match on the protocol.
        let icmp = classifier_for_protocol(api::Protocol::Icmp);
        assert_eq!(icmp.matches.len(), 1);
        assert_eq!(icmp.matches[0].protocol, Some(IPPROTO_ICMP));
        // Exclusions alone: everything else is impaired (one match-all).
        let only_exclusions =
            classifier(End::Destination, &[], &[], api::Protocol::Any, &[], &[7090]);
        assert_eq!(only_exclusions.matches, vec![TrafficMatch::default()]);
    }

    fn classifier_for_protocol(protocol: api::Protocol) -> Classifier {
        classifier(End::Destination, &[], &[], protocol, &[], &[])
    }

    #[test]
    fn ingress_matches_the_remote_end_and_needs_ifb_and_mirred() {
        let plan = NetworkPlan {
            request: api::NetworkFault {
                direction: api::Direction::Ingress as i32,
                ports: vec![5432],
                protocol: api::Protocol::Tcp as i32,
                destinations: vec!["10.1.2.3".into()],
                ..request()
            },
            destinations: vec![cidr("10.1.2.3")],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        let wanted = network_request(&plan);
        assert_eq!(wanted.direction, Direction::Ingress);
        assert_eq!(wanted.classifier.matches[0].port, Some((End::Source, 5432)));
        assert_eq!(
            wanted.required_modules(),
            vec![
                "sch_netem",
                "sch_prio",
                "cls_u32",
                "sch_ingress",
                "ifb",
                "act_mirred"
            ]
        );
    }

    #[test]
    fn blackholes_drop_everything_and_node_scope_keeps_the_agent_port() {
        let plain = blackhole_request(&BlackholePlan {
            destinations: vec![],
            ports: vec![],
            node_scope: false,
            node: NodeNetworkPolicy::default(),
            interface: String::new(),
        });
        assert_eq!(plain.interface, None);
        match &plain.impairment {
            Impairment::Netem(spec) => assert_eq!(spec.loss_pct, 100.0),
            other => panic!("a blackhole is netem loss, got {other:?}"),
        }
        assert!(plain.classifier.is_empty());
        assert_eq!(plain.scope, Scope::Targets);
        let mut node = blackhole_request(&BlackholePlan {
            destinations: vec![],
            ports: vec![],
            node_scope: true,
            node: NodeNetworkPolicy {
                allowed: true,
                agent_port: 7090,
            },
            interface: "ens6".into(),
        });
        assert_eq!(node.scope, Scope::Node);
        assert_eq!(node.interface.as_deref(), Some("ens6"));
        // What prepare does once it sees the node's namespace; twice changes nothing.
        node.keep_reachable(node.node.agent_port);
        node.keep_reachable(node.node.agent_port);
        assert_eq!(node.classifier.matches, vec![TrafficMatch::default()]);
        let kept: Vec<String> = node
            .classifier
            .rules()
            .unwrap()
            .iter()
            .filter(|r| r.classid == chaos_netem::tree::UNTOUCHED_CLASS)
            .map(|r| r.describe())
            .collect();
        // In both families: the agent is reachable over IPv4 and IPv6.
        assert_eq!(
            kept,
            vec![
                "ip proto 6 sport 7090",
                "ipv6 proto 6 sport 7090",
                "ip proto 6 dport 7090",
                "ipv6 proto 6 dport 7090"
            ]
        );
    }

    #[test]
    fn a_rate_alone_is_a_tbf_and_a_rate_among_other_impairments_is_netem() {
        let rate_only = api::NetworkFault {
            rate_bytes_per_second: 1_000_000,
            ..Default::default()
        };
        assert_eq!(
            impairment(&rate_only),
            Impairment::Tbf(TbfSpec::for_rate(1_000_000))
        );
        let with_delay = api::NetworkFault {
            delay_us: 1_000,
            ..rate_only.clone()
        };
        match impairment(&with_delay) {
            Impairment::Netem(spec) => {
                assert_eq!((spec.delay_us, spec.rate_bytes_per_sec), (1_000, 1_000_000))
            }
            other => panic!("expected netem, got {other:?}"),
        }
        assert!(matches!(impairment(&request()), Impairment::Netem(_)));
    }

    #[test]
    fn a_rate_alone_takes_the_bucket_and_queue_it_sets_and_says_which() {
        let sized = api::NetworkFault {
            rate_bytes_per_second: 250_000,
            rate_burst_bytes: 3_000,
            rate_queue_bytes: 50_000,
            ..Default::default()
        };
        assert!(rate_alone(&sized));
        assert_eq!(
            impairment(&sized),
            Impairment::Tbf(TbfSpec {
                rate_bytes_per_sec: 250_000,
                burst_bytes: 3_000,
                limit_bytes: 50_000,
            })
        );
        let plan = |request| NetworkPlan {
            request,
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        assert_eq!(
            network_request(&plan(sized.clone())).asked,
            AskedSizes {
                burst: true,
                queue: true
            }
        );
        // The queue alone: the default bucket, and only the queue is the request's.
        let queue_only = api::NetworkFault {
            rate_burst_bytes: 0,
            ..sized.clone()
        };
        assert_eq!(
            impairment(&queue_only),
            Impairment::Tbf(TbfSpec::with_sizes(250_000, None, Some(50_000)))
        );
        assert_eq!(
            network_request(&plan(queue_only)).asked,
            AskedSizes {
                burst: false,
                queue: true
            }
        );
        let defaults = network_request(&plan(api::NetworkFault {
            rate_bytes_per_second: 250_000,
            ..Default::default()
        }));
        assert_eq!(defaults.asked, AskedSizes::default());
        assert_eq!(
            defaults.impairment,
            Impairment::Tbf(TbfSpec::for_rate(250_000))
        );
        assert!(!rate_alone(&api::NetworkFault {
            loss_percent: 1.0,
            ..sized
        }));
    }

    #[test]
    fn keeping_the_agent_reachable_puts_a_rate_behind_exclusions_that_need_prio() {
        let mut rate_only = network_request(&NetworkPlan {
            request: api::NetworkFault {
                rate_bytes_per_second: 125_000,
                ..Default::default()
            },
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        });
        assert_eq!(rate_only.required_modules(), vec!["sch_tbf"]);
        rate_only.keep_reachable(7443);
        assert_eq!(
            rate_only.required_modules(),
            vec!["sch_tbf", "sch_prio", "cls_u32"]
        );
        let rules: Vec<String> = rate_only
            .classifier
            .rules()
            .unwrap()
            .iter()
            .map(|r| r.describe())
            .collect();
        assert_eq!(
            rules,
            vec![
                "ip proto 6 sport 7443",
                "ipv6 proto 6 sport 7443",
                "ip proto 6 dport 7443",
                "ipv6 proto 6 dport 7443",
                "ip all",
                "ipv6 all"
            ]
        );
        // A targeted request keeps its matches; the exclusions go first.
        let mut targeted = network_request(&NetworkPlan {
            request: api::NetworkFault {
                ports: vec![5432],
                protocol: api::Protocol::Tcp as i32,
                ..request()
            },
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        });
        targeted.keep_reachable(7090);
        assert_eq!(targeted.classifier.matches.len(), 1);
        assert_eq!(targeted.classifier.exclusions.len(), 2);
    }

    #[test]
    fn ipv6_destinations_and_exclusions_are_matched_in_their_family() {
        let plan = NetworkPlan {
            request: api::NetworkFault {
                ports: vec![443],
                protocol: api::Protocol::Tcp as i32,
                ..request()
            },
            destinations: vec![cidr("fd00:c4a0::/64"), cidr("10.1.0.0/16")],
            exclude_destinations: vec![cidr("fd00:c4a0::7")],
            node: NodeNetworkPolicy::default(),
        };
        let wanted = network_request(&plan);
        let rules: Vec<(u16, String)> = wanted
            .classifier
            .rules()
            .unwrap()
            .iter()
            .map(|r| (r.pref, r.describe()))
            .collect();
        assert_eq!(
            rules,
            vec![
                (1, "ipv6 dst fd00:c4a0::7/128".to_string()),
                (
                    1000,
                    "ipv6 proto 6 dst fd00:c4a0::/64 dport 443".to_string()
                ),
                (1001, "ip proto 6 dst 10.1.0.0/16 dport 443".to_string()),
            ]
        );
        // Ingress: the remote end is the source; a blackhole takes IPv6 alike.
        let ingress = network_request(&NetworkPlan {
            request: api::NetworkFault {
                direction: api::Direction::Ingress as i32,
                ..plan.request.clone()
            },
            ..plan.clone()
        });
        assert_eq!(
            ingress.classifier.rules().unwrap()[1].describe(),
            "ipv6 proto 6 src fd00:c4a0::/64 sport 443"
        );
        let blackhole = blackhole_request(&BlackholePlan {
            destinations: vec![cidr("fd00:c4a0::2")],
            ports: vec![],
            node_scope: false,
            node: NodeNetworkPolicy::default(),
            interface: String::new(),
        });
        let rules: Vec<String> = blackhole
            .classifier
            .rules()
            .unwrap()
            .iter()
            .map(|r| r.describe())
            .collect();
        assert_eq!(rules, vec!["ipv6 dst fd00:c4a0::2/128"]);
    }
}
