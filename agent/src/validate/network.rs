//! The network kind's plan and its validation: netem impairments (delay, loss,
//! duplication, corruption, reordering, rate) on chosen destinations and ports.

use chaos_proto::api;

use super::Limits;
use super::targeting::{
    Cidr, NodeNetworkPolicy, address_filters, check_filter_count, check_interface_name,
    check_ports, filter_product, parse_cidrs,
};
use crate::error::AgentError;

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPlan {
    pub request: api::NetworkFault,
    pub destinations: Vec<Cidr>,
    pub exclude_destinations: Vec<Cidr>,
    pub node: NodeNetworkPolicy,
}

fn check_percent(field: &'static str, value: f64) -> Result<(), AgentError> {
    if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
        return Err(AgentError::invalid(
            field,
            format!("{value} is outside 0..=100"),
        ));
    }
    // The kernel holds a probability as a fraction of 2^32 - 1: a percentage above 0
    // that rounds to 0 there would be installed as "never", not as asked.
    if value > 0.0 && chaos_netem::codec::percent_to_probability(value) == 0 {
        return Err(AgentError::invalid(
            field,
            format!("{value} % is below the kernel's resolution (100 / (2^32 - 1) %)"),
        ));
    }
    Ok(())
}

/// The highest bandwidth limit: its bit rate (how tc and the fault's status show rates)
/// must fit 64 bits. The kernel takes any 64-bit byte rate (`TCA_*_RATE64`).
pub const MAX_RATE_BYTES_PER_SECOND: u64 = u64::MAX / 8;

/// The tbf's bucket and queue a request may set: only for a rate alone (with any other
/// impairment the rate is netem's, which has neither), and within what the kernel holds
/// and reads back. That each holds a full frame of the interface is prepare's to check,
/// where the interface's MTU is known.
fn check_tbf_sizes(n: &api::NetworkFault) -> Result<(), AgentError> {
    use chaos_netem::tbf::{MAX_SIZE_BYTES, TbfSpec};
    let sizes = [
        ("network.rate_burst_bytes", n.rate_burst_bytes),
        ("network.rate_queue_bytes", n.rate_queue_bytes),
    ];
    for (field, bytes) in sizes {
        if bytes == 0 {
            continue;
        }
        if n.rate_bytes_per_second == 0 {
            return Err(AgentError::invalid(
                field,
                "needs network.rate_bytes_per_second (it sizes the rate's tbf)",
            ));
        }
        if !crate::faults::network::rate_alone(n) {
            return Err(AgentError::invalid(
                field,
                "applies to a rate alone (a tbf); with delay, loss, duplicate, corrupt or reorder \
                 the rate is netem's, which has no bucket and queues up to its 1000-packet limit",
            ));
        }
        if bytes > MAX_SIZE_BYTES {
            return Err(AgentError::invalid(
                field,
                format!("{bytes} bytes is above the largest, {MAX_SIZE_BYTES} (1 GiB)"),
            ));
        }
    }
    if n.rate_burst_bytes > 0
        && !TbfSpec::bucket_reads_back(n.rate_burst_bytes, n.rate_bytes_per_second)
    {
        return Err(AgentError::invalid(
            "network.rate_burst_bytes",
            format!(
                "{} bytes take more than 274 s at {} bytes/s: the kernel reports a bucket as \
                 32 bits of 64 ns ticks, so it would not read back as installed",
                n.rate_burst_bytes, n.rate_bytes_per_second
            ),
        ));
    }
    Ok(())
}

pub(super) fn validate_network(
    n: &api::NetworkFault,
    limits: &Limits,
) -> Result<NetworkPlan, AgentError> {
    const MAX_DELAY_US: u64 = 60_000_000;
    check_interface_name("network.interface", &n.interface)?;
    api::Direction::try_from(n.direction).map_err(|_| {
        AgentError::invalid(
            "network.direction",
            format!("{} is not a direction", n.direction),
        )
    })?;
    let distribution = api::Distribution::try_from(n.distribution).map_err(|_| {
        AgentError::invalid(
            "network.distribution",
            format!("{} is not a distribution", n.distribution),
        )
    })?;
    api::Protocol::try_from(n.protocol).map_err(|_| {
        AgentError::invalid(
            "network.protocol",
            format!("{} is not a protocol", n.protocol),
        )
    })?;
    if n.delay_us > MAX_DELAY_US {
        return Err(AgentError::invalid(
            "network.delay_us",
            "must be at most 60 s",
        ));
    }
    if n.jitter_us > chaos_netem::codec::MAX_JITTER_US {
        return Err(AgentError::invalid(
            "network.jitter_us",
            format!(
                "must be at most {} us (2^31 - 1 ns): the kernel cuts a larger jitter to that",
                chaos_netem::codec::MAX_JITTER_US
            ),
        ));
    }
    if n.jitter_us > 0 && n.delay_us == 0 {
        return Err(AgentError::invalid(
            "network.jitter_us",
            "needs network.delay_us",
        ));
    }
    if distribution != api::Distribution::Unspecified && n.jitter_us == 0 {
        return Err(AgentError::invalid(
            "network.distribution",
            "needs network.jitter_us (a distribution shapes the jitter)",
        ));
    }
    check_percent("network.delay_correlation", n.delay_correlation)?;
    check_percent("network.loss_percent", n.loss_percent)?;
    check_percent("network.loss_correlation", n.loss_correlation)?;
    check_percent("network.duplicate_percent", n.duplicate_percent)?;
    check_percent("network.corrupt_percent", n.corrupt_percent)?;
    check_percent("network.reorder_percent", n.reorder_percent)?;
    if n.reorder_percent > 0.0 && n.delay_us == 0 {
        return Err(AgentError::invalid(
            "network.reorder_percent",
            "needs network.delay_us (netem reorders by sending some packets without the delay)",
        ));
    }
    if n.reorder_gap > 0 && n.reorder_percent == 0.0 {
        return Err(AgentError::invalid(
            "network.reorder_gap",
            "needs network.reorder_percent",
        ));
    }
    if n.rate_bytes_per_second > MAX_RATE_BYTES_PER_SECOND {
        return Err(AgentError::invalid(
            "network.rate_bytes_per_second",
            format!(
                "{} is above the highest rate, {MAX_RATE_BYTES_PER_SECOND} bytes/s (its bit rate must fit 64 bits)",
                n.rate_bytes_per_second
            ),
        ));
    }
    check_tbf_sizes(n)?;
    let impairs = n.delay_us > 0
        || n.loss_percent > 0.0
        || n.duplicate_percent > 0.0
        || n.corrupt_percent > 0.0
        || n.rate_bytes_per_second > 0;
    if !impairs {
        return Err(AgentError::invalid(
            "network",
            "sets no impairment; give at least one of delay_us, loss_percent, duplicate_percent, corrupt_percent, rate_bytes_per_second",
        ));
    }
    let destinations = parse_cidrs("network.destinations", &n.destinations)?;
    let exclude_destinations =
        parse_cidrs("network.exclude_destinations", &n.exclude_destinations)?;
    check_ports("network.ports", &n.ports)?;
    check_ports("network.exclude_ports", &n.exclude_ports)?;
    if n.protocol == api::Protocol::Icmp as i32 && !n.ports.is_empty() {
        return Err(AgentError::invalid(
            "network.ports",
            "ICMP has no ports; use protocol tcp, udp or any with ports",
        ));
    }
    let protocols = if n.protocol == api::Protocol::Any as i32 && !n.ports.is_empty() {
        2 // tcp and udp
    } else {
        1
    };
    check_filter_count(
        "network.destinations",
        filter_product(&[
            address_filters(&n.destinations),
            n.ports.len().max(1),
            protocols,
        ]),
    )?;
    // An excluded port is tcp and udp, in both families.
    check_filter_count(
        "network.exclude_destinations",
        n.exclude_destinations
            .len()
            .saturating_add(filter_product(&[2, 2, n.exclude_ports.len()])),
    )?;
    Ok(NetworkPlan {
        request: n.clone(),
        destinations,
        exclude_destinations,
        node: NodeNetworkPolicy::of(limits),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_support::req;
    use crate::validate::validate_inject;
    use api::inject_request::Fault;

    #[test]
    fn ipv6_targets_are_accepted_and_filters_count_both_families() {
        let network = |fault: api::NetworkFault| {
            validate_inject(
                &req(
                    "pid:2",
                    1000,
                    Fault::Network(api::NetworkFault {
                        delay_us: 1000,
                        ..fault
                    }),
                ),
                &Limits::default(),
            )
        };
        let valid = network(api::NetworkFault {
            destinations: vec!["fd00:c4a0::/64".into(), "10.0.0.0/8".into()],
            exclude_destinations: vec!["fd00:c4a0::7".into()],
            ..Default::default()
        })
        .unwrap();
        let crate::validate::FaultPlan::Network(plan) = valid.plan else {
            panic!("not a network plan: {:?}", valid.plan);
        };
        assert_eq!(plan.destinations.len(), 2);
        assert!(plan.destinations[0].addr.is_ipv6());
        assert_eq!(plan.exclude_destinations[0].prefix, 128);
        // Ports without destinations are one filter in each family: 128 tcp ports are
        // 256 filters, the most; 129 are too many.
        let ports = |count: u32| api::NetworkFault {
            ports: (1..=count).collect(),
            protocol: api::Protocol::Tcp as i32,
            ..Default::default()
        };
        assert!(network(ports(128)).is_ok());
        assert!(matches!(
            network(ports(129)),
            Err(AgentError::InvalidArgument {
                field: "network.destinations",
                ..
            })
        ));
        // An excluded port: tcp and udp, in both families.
        let excluded = |count: u32| api::NetworkFault {
            exclude_ports: (1..=count).collect(),
            ..Default::default()
        };
        assert!(network(excluded(64)).is_ok());
        assert!(matches!(
            network(excluded(65)),
            Err(AgentError::InvalidArgument {
                field: "network.exclude_destinations",
                ..
            })
        ));
    }

    #[test]
    fn tbf_sizes_go_with_a_rate_alone_and_within_what_the_kernel_holds() {
        let network = |fault: api::NetworkFault| {
            validate_inject(
                &req("pid:2", 1000, Fault::Network(fault)),
                &Limits::default(),
            )
        };
        let refused = |fault: api::NetworkFault| match network(fault) {
            Err(AgentError::InvalidArgument { field, reason }) => (field, reason),
            other => panic!("{other:?}"),
        };
        let sized = api::NetworkFault {
            rate_bytes_per_second: 250_000,
            rate_burst_bytes: 3_000,
            rate_queue_bytes: 60_000,
            ..Default::default()
        };
        match network(sized.clone()).map(|valid| valid.plan) {
            Ok(crate::validate::FaultPlan::Network(plan)) => assert_eq!(plan.request, sized),
            other => panic!("{other:?}"),
        }
        // Each alone is fine too.
        for (burst, queue) in [(3_000, 0), (0, 60_000)] {
            assert!(
                network(api::NetworkFault {
                    rate_burst_bytes: burst,
                    rate_queue_bytes: queue,
                    ..sized.clone()
                })
                .is_ok()
            );
        }
        // Without a rate: sizes of nothing.
        for (burst, queue, field) in [
            (3_000, 0, "network.rate_burst_bytes"),
            (0, 60_000, "network.rate_queue_bytes"),
        ] {
            let (got, reason) = refused(api::NetworkFault {
                delay_us: 1_000,
                rate_burst_bytes: burst,
                rate_queue_bytes: queue,
                ..Default::default()
            });
            assert_eq!(got, field);
            assert!(
                reason.contains("needs network.rate_bytes_per_second"),
                "{reason}"
            );
        }
        // With another impairment the rate is netem's: no bucket, no byte queue.
        for other in [
            api::NetworkFault {
                delay_us: 1_000,
                ..sized.clone()
            },
            api::NetworkFault {
                loss_percent: 1.0,
                rate_burst_bytes: 0,
                ..sized.clone()
            },
        ] {
            let (field, reason) = refused(other);
            assert!(field.starts_with("network.rate_"), "{field}");
            assert!(reason.contains("netem's"), "{reason}");
        }
        // Above 1 GiB, and a bucket whose time at the rate does not fit the dump.
        let max = chaos_netem::tbf::MAX_SIZE_BYTES;
        let fast = api::NetworkFault {
            rate_bytes_per_second: 125_000_000,
            ..Default::default()
        };
        assert!(
            network(api::NetworkFault {
                rate_burst_bytes: max,
                rate_queue_bytes: max,
                ..fast.clone()
            })
            .is_ok()
        );
        for (burst, queue, field) in [
            (max + 1, 0, "network.rate_burst_bytes"),
            (0, max + 1, "network.rate_queue_bytes"),
            (u64::MAX, 0, "network.rate_burst_bytes"),
        ] {
            let (got, reason) = refused(api::NetworkFault {
                rate_burst_bytes: burst,
                rate_queue_bytes: queue,
                ..fast.clone()
            });
            assert_eq!(got, field);
            assert!(reason.contains("above the largest"), "{reason}");
        }
        let (field, reason) = refused(api::NetworkFault {
            rate_bytes_per_second: 1_000,
            rate_burst_bytes: 300_000,
            ..Default::default()
        });
        assert_eq!(field, "network.rate_burst_bytes");
        assert!(reason.contains("274 s"), "{reason}");
    }

    #[test]
    fn network_numbers_the_kernel_cannot_hold_are_refused_at_the_boundary() {
        let network = |fault: api::NetworkFault| {
            validate_inject(
                &req("pid:2", 1000, Fault::Network(fault)),
                &Limits::default(),
            )
        };
        let rate = |rate_bytes_per_second| api::NetworkFault {
            rate_bytes_per_second,
            ..Default::default()
        };
        assert!(network(rate(MAX_RATE_BYTES_PER_SECOND)).is_ok());
        for too_high in [MAX_RATE_BYTES_PER_SECOND + 1, u64::MAX] {
            match network(rate(too_high)) {
                Err(AgentError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "network.rate_bytes_per_second")
                }
                other => panic!("{too_high}: {other:?}"),
            }
        }
        // The smallest loss the kernel holds is 1 / (2^32 - 1); half of it rounds to 0.
        let one_step = 100.0 / f64::from(u32::MAX);
        let loss = |loss_percent| api::NetworkFault {
            loss_percent,
            ..Default::default()
        };
        assert!(network(loss(one_step)).is_ok());
        match network(loss(one_step / 4.0)) {
            Err(AgentError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "network.loss_percent");
                assert!(reason.contains("resolution"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let correlated = api::NetworkFault {
            loss_correlation: 1e-12,
            ..loss(5.0)
        };
        assert!(matches!(
            network(correlated),
            Err(AgentError::InvalidArgument {
                field: "network.loss_correlation",
                ..
            })
        ));
        // The widest jitter the kernel keeps, and one microsecond more.
        let jitter = |jitter_us| api::NetworkFault {
            delay_us: 5_000_000,
            jitter_us,
            ..Default::default()
        };
        assert!(network(jitter(chaos_netem::codec::MAX_JITTER_US)).is_ok());
        assert!(matches!(
            network(jitter(chaos_netem::codec::MAX_JITTER_US + 1)),
            Err(AgentError::InvalidArgument {
                field: "network.jitter_us",
                ..
            })
        ));
        // Lists whose product would overflow are counted, not multiplied.
        assert_eq!(filter_product(&[usize::MAX, 2]), usize::MAX);
        assert_eq!(filter_product(&[3, 2, 2]), 12);
    }
}
