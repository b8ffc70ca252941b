//! `partition`: two groups of pods cut off from each other. The step selects its `from`
//! and `to` pods as any step selects its targets, learns their addresses from the agents'
//! ListTargets, and becomes ordinary blackholes: on each pod of the acting side, traffic
//! to exactly the other side's addresses is dropped. Nothing new runs on the agents, so a
//! partition is reverted, leased, journalled and replayed as every blackhole is.
//!
//! [`plan_partition`] is pure (members with their addresses in, blackholes out) and
//! refuses what would not be the partition asked for.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::engine::experiment::TargetSpec;
use crate::engine::selection::Chosen;

/// A step's `partition:` fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// One side: selected as a step's `target` is.
    pub from: TargetSpec,
    /// The other side.
    pub to: TargetSpec,
    #[serde(default)]
    pub direction: PartitionDirection,
}

/// Which side's traffic to the other is dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionDirection {
    /// `from` pods cannot send to `to` pods (blackholes on the `from` pods).
    To,
    /// `to` pods cannot send to `from` pods (blackholes on the `to` pods).
    From,
    /// Neither reaches the other (blackholes on both sides).
    #[default]
    Both,
}

impl PartitionDirection {
    pub fn name(self) -> &'static str {
        match self {
            PartitionDirection::To => "to",
            PartitionDirection::From => "from",
            PartitionDirection::Both => "both",
        }
    }
}

/// The most destinations one blackhole carries: the agent refuses a fault needing more
/// than 256 filters, and a blackhole has two per destination (TCP and UDP).
pub const MAX_PARTITION_DESTINATIONS: usize = 128;

/// A selected pod of one side, with what its agent listed for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub chosen: Chosen,
    /// Its network namespace's global addresses; empty when the agent listed none (or
    /// does not list the target at all).
    pub addresses: Vec<IpAddr>,
    pub host_network: bool,
}

/// One blackhole of the plan: on `chosen`, traffic to `destinations` dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBlackhole {
    pub chosen: Chosen,
    /// `ADDRESS/32` (IPv4) and `ADDRESS/128` (IPv6), sorted.
    pub destinations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartitionError {
    #[error("partition.{0} selects no pod")]
    EmptySide(&'static str),
    #[error(
        "partition.{side}: `{target}` shares its node's network namespace (a hostNetwork pod): \
         a blackhole there would cut the whole node, so a partition never takes one"
    )]
    HostNetwork { side: &'static str, target: String },
    #[error(
        "partition.{side}: `{target}` has no address its agent could list (not running, \
         not a pod's container, or its network namespace could not be read), so the other \
         side cannot be cut off from it"
    )]
    NoAddresses { side: &'static str, target: String },
    #[error(
        "`{from}` (partition.from) and `{to}` (partition.to) share address {address}: one \
         network namespace cannot be on both sides of a partition"
    )]
    OnBothSides {
        from: String,
        to: String,
        address: IpAddr,
    },
    #[error(
        "partition.{side} has {count} addresses, more than the {MAX_PARTITION_DESTINATIONS} one \
         blackhole can drop: select fewer pods"
    )]
    TooManyDestinations { side: &'static str, count: usize },
}

/// One address as a blackhole's destination: the host's network of its family.
fn host_network(address: &IpAddr) -> String {
    match address {
        IpAddr::V4(_) => format!("{address}/32"),
        IpAddr::V6(_) => format!("{address}/128"),
    }
}

/// The blackholes that make the partition, in order: the `from` side's (direction `to`
/// or `both`), then the `to` side's (`from` or `both`). Members of one pod share its
/// network namespace, so a pod gets one blackhole, on its first member.
pub fn plan_partition(
    from: &[Member],
    to: &[Member],
    direction: PartitionDirection,
) -> Result<Vec<PlannedBlackhole>, PartitionError> {
    let from_addresses = side_addresses("from", from)?;
    let to_addresses = side_addresses("to", to)?;
    for f in from {
        for t in to {
            if let Some(address) = f.addresses.iter().find(|a| t.addresses.contains(a)) {
                return Err(PartitionError::OnBothSides {
                    from: f.chosen.target.clone(),
                    to: t.chosen.target.clone(),
                    address: *address,
                });
            }
        }
    }
    let mut planned = Vec::new();
    if matches!(direction, PartitionDirection::To | PartitionDirection::Both) {
        planned.extend(blackholes_on(from, &to_addresses));
    }
    if matches!(
        direction,
        PartitionDirection::From | PartitionDirection::Both
    ) {
        planned.extend(blackholes_on(to, &from_addresses));
    }
    Ok(planned)
}

/// Every address of a side as destinations, after refusing an empty side, a hostNetwork
/// member, a member without an address and a side too large for one blackhole.
fn side_addresses(side: &'static str, members: &[Member]) -> Result<Vec<String>, PartitionError> {
    if members.is_empty() {
        return Err(PartitionError::EmptySide(side));
    }
    let mut addresses = BTreeSet::new();
    for member in members {
        if member.host_network {
            return Err(PartitionError::HostNetwork {
                side,
                target: member.chosen.target.clone(),
            });
        }
        let mut any = false;
        for address in &member.addresses {
            any = true;
            addresses.insert(*address);
        }
        if !any {
            return Err(PartitionError::NoAddresses {
                side,
                target: member.chosen.target.clone(),
            });
        }
    }
    if addresses.len() > MAX_PARTITION_DESTINATIONS {
        return Err(PartitionError::TooManyDestinations {
            side,
            count: addresses.len(),
        });
    }
    Ok(addresses.iter().map(host_network).collect())
}

/// One blackhole to `destinations` per network namespace among `members`: members with
/// the same addresses on the same agent are one pod's containers.
fn blackholes_on(members: &[Member], destinations: &[String]) -> Vec<PlannedBlackhole> {
    let mut seen: Vec<(usize, &[IpAddr])> = Vec::new();
    let mut planned = Vec::new();
    for member in members {
        let key = (member.chosen.agent, member.addresses.as_slice());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        planned.push(PlannedBlackhole {
            chosen: member.chosen.clone(),
            destinations: destinations.to_vec(),
        });
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(agent: usize, target: &str, addresses: &[&str]) -> Member {
        Member {
            chosen: Chosen {
                agent,
                target: target.into(),
                pod: String::new(),
                node: String::new(),
            },
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            host_network: false,
        }
    }

    fn on(planned: &[PlannedBlackhole]) -> Vec<(&str, Vec<&str>)> {
        planned
            .iter()
            .map(|p| {
                (
                    p.chosen.target.as_str(),
                    p.destinations.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn each_direction_puts_blackholes_on_its_side_to_exactly_the_other_sides_addresses() {
        let driver = [member(0, "container:driver", &["10.0.0.1", "fd00::1"])];
        let workers = [
            member(0, "container:w1", &["10.0.0.12"]),
            member(1, "container:w2", &["10.0.1.5", "10.0.1.6"]),
        ];
        let to = plan_partition(&driver, &workers, PartitionDirection::To).unwrap();
        assert_eq!(
            on(&to),
            vec![(
                "container:driver",
                vec!["10.0.0.12/32", "10.0.1.5/32", "10.0.1.6/32"]
            )]
        );
        let from = plan_partition(&driver, &workers, PartitionDirection::From).unwrap();
        // A dual-stack pod is cut off on both families.
        assert_eq!(
            on(&from),
            vec![
                ("container:w1", vec!["10.0.0.1/32", "fd00::1/128"]),
                ("container:w2", vec!["10.0.0.1/32", "fd00::1/128"]),
            ]
        );
        let both = plan_partition(&driver, &workers, PartitionDirection::Both).unwrap();
        assert_eq!(on(&both), [on(&to), on(&from)].concat());
        for p in &both {
            assert!(p.destinations.len() <= MAX_PARTITION_DESTINATIONS);
        }
    }

    #[test]
    fn one_pods_containers_get_one_blackhole() {
        let a = [
            member(0, "container:a-app", &["10.0.0.1"]),
            member(0, "container:a-sidecar", &["10.0.0.1"]),
        ];
        let b = [member(0, "container:b", &["10.0.0.2"])];
        let planned = plan_partition(&a, &b, PartitionDirection::Both).unwrap();
        assert_eq!(
            on(&planned),
            vec![
                ("container:a-app", vec!["10.0.0.2/32"]),
                ("container:b", vec!["10.0.0.1/32"]),
            ]
        );
    }

    #[test]
    fn what_would_not_be_the_partition_asked_for_is_refused() {
        let a = [member(0, "container:a", &["10.0.0.1"])];
        let b = [member(0, "container:b", &["10.0.0.2"])];
        assert_eq!(
            plan_partition(&[], &b, PartitionDirection::Both),
            Err(PartitionError::EmptySide("from"))
        );
        assert_eq!(
            plan_partition(&a, &[], PartitionDirection::To),
            Err(PartitionError::EmptySide("to"))
        );
        // A pod on both sides (or two containers of one pod, one on each).
        let error = plan_partition(
            &a,
            &[
                b[0].clone(),
                member(0, "container:a-sidecar", &["10.0.0.1"]),
            ],
            PartitionDirection::Both,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "`container:a` (partition.from) and `container:a-sidecar` (partition.to) share \
             address 10.0.0.1: one network namespace cannot be on both sides of a partition"
        );
        // A side member without an address, whichever direction.
        let bare = [member(1, "pid:42", &[])];
        for direction in [PartitionDirection::To, PartitionDirection::From] {
            assert_eq!(
                plan_partition(&a, &bare, direction),
                Err(PartitionError::NoAddresses {
                    side: "to",
                    target: "pid:42".into()
                })
            );
        }
        // An IPv6-only pod is a member like any other.
        let v6 = [member(1, "pid:43", &["fd00::2"])];
        let planned = plan_partition(&a, &v6, PartitionDirection::To).unwrap();
        assert_eq!(planned[0].destinations, vec!["fd00::2/128"]);
        // A hostNetwork pod: its blackhole would be the node's.
        let mut host = b[0].clone();
        host.host_network = true;
        let error = plan_partition(&[host], &a, PartitionDirection::To).unwrap_err();
        assert!(
            matches!(error, PartitionError::HostNetwork { side: "from", .. }),
            "{error}"
        );
        // More addresses than one blackhole drops.
        let many: Vec<Member> = (0..=MAX_PARTITION_DESTINATIONS)
            .map(|i| {
                member(
                    0,
                    &format!("container:w{i}"),
                    &[&format!("10.1.{}.{}", i / 200, i % 200 + 1)],
                )
            })
            .collect();
        assert_eq!(
            plan_partition(&a, &many, PartitionDirection::To),
            Err(PartitionError::TooManyDestinations {
                side: "to",
                count: MAX_PARTITION_DESTINATIONS + 1
            })
        );
        assert!(plan_partition(&a, &many[1..], PartitionDirection::To).is_ok());
    }
}
