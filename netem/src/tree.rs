//! Targeted impairment: a prio root whose priomap sends everything to an untouched band,
//! the impairing qdisc (netem, or tbf for a bandwidth limit alone) under a second band,
//! and u32 filters deciding which packets go there.
//!
//! ```text
//! ca05: prio bands 2 priomap 0 0 ... 0     (everything unclassified -> ca05:1, untouched)
//! ├── ca05:1  pfifo (the kernel's default band qdisc)
//! └── ca05:2  netem ca06:
//! filters on ca05, evaluated by priority:
//!   pref 1..      exclusions       -> ca05:1
//!   pref 1000..   matches          -> ca05:2
//! ```
//!
//! A filter is `protocol ip` or `protocol ipv6` (one priority holds one protocol): a match
//! on an address is one filter of its family, a match without one (ports, a protocol,
//! everything) one filter in each family, so both are impaired alike. Exclusions come
//! first in both families, whatever their family and number.
//!
//! Everything hangs below our root, so deleting (or replacing) the root removes it all;
//! `qdisc::restore` is the undo. A failure half-way restores the snapshot before returning.

use rtnetlink::Handle;
use serde::{Deserialize, Serialize};

use crate::filter::{self, FilterError};
use crate::impairment::Impairment;
use crate::qdisc::{self, CHAOS_ROOT_HANDLE, QdiscError, QdiscRecord, QdiscSnapshot, TC_H_ROOT};
use crate::u32::{Family, Selector, SelectorError, TrafficMatch};

/// Band (class) of packets left alone: where the priomap sends everything.
pub const UNTOUCHED_CLASS: u32 = CHAOS_ROOT_HANDLE | 1;
/// Band (class) whose qdisc impairs (netem or tbf).
pub const NETEM_CLASS: u32 = CHAOS_ROOT_HANDLE | 2;
/// Handle of our impairing qdisc below the prio root.
pub const NETEM_CHILD_HANDLE: u32 = 0xca06_0000;
/// First priority of exclusion filters and of match filters: exclusions are evaluated
/// first, whatever their number (at most [`MAX_FILTERS`] each).
pub const EXCLUSION_PREF: u16 = 1;
pub const MATCH_PREF: u16 = 1000;
pub const MAX_FILTERS: usize = 900;

/// Which packets a targeted fault acts on: a packet matching any exclusion is left
/// alone; otherwise one matching any match goes to the impairing qdisc.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classifier {
    pub exclusions: Vec<TrafficMatch>,
    pub matches: Vec<TrafficMatch>,
}

/// One filter to install: (pref, family, selector, class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRule {
    pub pref: u16,
    pub family: Family,
    pub selector: Selector,
    pub classid: u32,
}

impl FilterRule {
    /// In words: `ipv6 proto 6 dport 80`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.family, self.selector.describe(self.family))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(
        "{0} filters (each IP family its own): at most {MAX_FILTERS} exclusions and {MAX_FILTERS} matches"
    )]
    TooManyFilters(usize),
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error(transparent)]
    Qdisc(#[from] QdiscError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("{error}; restoring the interface afterwards failed too: {restore}")]
    RollbackFailed {
        error: Box<TreeError>,
        restore: QdiscError,
    },
}

impl Classifier {
    /// Nothing to classify: the impairing qdisc as root, on every packet.
    pub fn is_empty(&self) -> bool {
        self.matches.is_empty() && self.exclusions.is_empty()
    }

    /// The filters, exclusions first, each match in every family it needs. Pure.
    pub fn rules(&self) -> Result<Vec<FilterRule>, TreeError> {
        let filters = |matches: &[TrafficMatch]| -> usize {
            matches.iter().map(|m| m.families().len()).sum()
        };
        let too_many = filters(&self.exclusions).max(filters(&self.matches));
        if too_many > MAX_FILTERS {
            return Err(TreeError::TooManyFilters(too_many));
        }
        let mut rules = Vec::new();
        for (matches, first_pref, classid) in [
            (&self.exclusions, EXCLUSION_PREF, UNTOUCHED_CLASS),
            (&self.matches, MATCH_PREF, NETEM_CLASS),
        ] {
            let each_family = matches
                .iter()
                .flat_map(|m| m.families().iter().map(move |family| (m, *family)));
            for ((m, family), pref) in each_family.zip(first_pref..) {
                rules.push(FilterRule {
                    pref,
                    family,
                    selector: Selector::for_match(m, family)?,
                    classid,
                });
            }
        }
        Ok(rules)
    }
}

/// `struct tc_prio_qopt`: `int bands; u8 priomap[16]`, every priority to band 0.
pub fn prio_options() -> Vec<u8> {
    let mut bytes = 2i32.to_ne_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 16]);
    bytes
}

/// Installs the prio + impairment + filters tree as the root of `ifindex`; returns the
/// snapshot taken before (journal it). Completely or not at all.
pub async fn install_targeted(
    handle: &Handle,
    ifindex: u32,
    impairment: &Impairment,
    classifier: &Classifier,
) -> Result<QdiscSnapshot, TreeError> {
    let rules = classifier.rules()?;
    let leaf = QdiscRecord {
        kind: impairment.kind().into(),
        handle: NETEM_CHILD_HANDLE,
        parent: NETEM_CLASS,
        options: Some(impairment.options()?),
    };
    let before = qdisc::replaceable_snapshot(handle, ifindex).await?;
    let root = QdiscRecord {
        kind: "prio".into(),
        handle: CHAOS_ROOT_HANDLE,
        parent: TC_H_ROOT,
        options: Some(prio_options()),
    };
    // The root first: if prio is missing, nothing has changed yet.
    qdisc::replace(handle, ifindex, &root).await?;
    if let Err(error) = build_below_root(handle, ifindex, &leaf, &rules).await {
        return Err(match qdisc::restore(handle, &before).await {
            Ok(_) => error,
            Err(restore) => TreeError::RollbackFailed {
                error: Box::new(error),
                restore,
            },
        });
    }
    Ok(before)
}

async fn build_below_root(
    handle: &Handle,
    ifindex: u32,
    leaf: &QdiscRecord,
    rules: &[FilterRule],
) -> Result<(), TreeError> {
    qdisc::replace(handle, ifindex, leaf).await?;
    add_rules(handle, ifindex, CHAOS_ROOT_HANDLE, rules).await
}

/// Adds `rules` as u32 filters under `parent`, each with its family's protocol.
pub async fn add_rules(
    handle: &Handle,
    ifindex: u32,
    parent: u32,
    rules: &[FilterRule],
) -> Result<(), TreeError> {
    for rule in rules {
        filter::add_u32(
            handle,
            ifindex,
            parent,
            rule.pref,
            rule.family.ethertype(),
            crate::u32::classify_options(&rule.selector, rule.classid),
        )
        .await?;
    }
    Ok(())
}

/// Installs the impairing qdisc as root (no classifier) or the targeted tree, by whether
/// there is anything to classify.
pub async fn install(
    handle: &Handle,
    ifindex: u32,
    impairment: &Impairment,
    classifier: &Classifier,
) -> Result<QdiscSnapshot, TreeError> {
    if classifier.is_empty() {
        let options = impairment.options()?;
        Ok(qdisc::install_root(handle, ifindex, impairment.kind(), Some(options)).await?)
    } else {
        install_targeted(handle, ifindex, impairment, classifier).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::u32::{End, IPPROTO_TCP, IPPROTO_UDP, IpCidr};

    fn cidr(text: &str) -> IpCidr {
        let (addr, prefix) = text.split_once('/').unwrap();
        IpCidr {
            addr: addr.parse().unwrap(),
            prefix: prefix.parse().unwrap(),
        }
    }

    fn to(text: &str) -> TrafficMatch {
        TrafficMatch {
            address: Some((End::Destination, cidr(text))),
            ..Default::default()
        }
    }

    fn summary(rules: &[FilterRule]) -> Vec<(u16, u32, String)> {
        rules
            .iter()
            .map(|r| (r.pref, r.classid, r.describe()))
            .collect()
    }

    #[test]
    fn exclusions_come_first_and_go_to_the_untouched_band() {
        let classifier = Classifier {
            exclusions: vec![TrafficMatch {
                protocol: Some(IPPROTO_UDP),
                port: Some((End::Destination, 53)),
                ..Default::default()
            }],
            matches: vec![
                TrafficMatch {
                    protocol: Some(IPPROTO_TCP),
                    port: Some((End::Destination, 5432)),
                    ..Default::default()
                },
                to("10.0.0.0/8"),
            ],
        };
        let rules = classifier.rules().unwrap();
        let (u, n) = (UNTOUCHED_CLASS, NETEM_CLASS);
        // A port without an address is in both families, the IPv4 network in one.
        assert_eq!(
            summary(&rules),
            vec![
                (1, u, "ip proto 17 dport 53".into()),
                (2, u, "ipv6 proto 17 dport 53".into()),
                (1000, n, "ip proto 6 dport 5432".into()),
                (1001, n, "ipv6 proto 6 dport 5432".into()),
                (1002, n, "ip dst 10.0.0.0/8".into()),
            ]
        );
    }

    #[test]
    fn mixed_families_make_filters_of_both_and_exclusions_win_in_each() {
        let classifier = Classifier {
            exclusions: vec![to("fd00:c4a0::7/128"), to("10.9.0.0/16")],
            matches: vec![
                to("fd00:c4a0::/64"),
                to("10.0.0.0/8"),
                TrafficMatch::default(),
            ],
        };
        let rules = classifier.rules().unwrap();
        let (u, n) = (UNTOUCHED_CLASS, NETEM_CLASS);
        assert_eq!(
            summary(&rules),
            vec![
                (1, u, "ipv6 dst fd00:c4a0::7/128".into()),
                (2, u, "ip dst 10.9.0.0/16".into()),
                (1000, n, "ipv6 dst fd00:c4a0::/64".into()),
                (1001, n, "ip dst 10.0.0.0/8".into()),
                (1002, n, "ip all".into()),
                (1003, n, "ipv6 all".into()),
            ]
        );
        assert!(
            rules
                .iter()
                .filter(|r| r.classid == UNTOUCHED_CLASS)
                .all(|r| r.pref < MATCH_PREF)
        );
    }

    #[test]
    fn prio_options_send_everything_to_band_zero() {
        let options = prio_options();
        assert_eq!(options.len(), 20);
        assert_eq!(&options[..4], &2i32.to_ne_bytes());
        assert!(options[4..].iter().all(|b| *b == 0));
    }

    #[test]
    fn too_many_filters_are_refused_counting_both_families() {
        let classifier = Classifier {
            matches: vec![TrafficMatch::default(); MAX_FILTERS / 2 + 1],
            ..Default::default()
        };
        assert!(matches!(
            classifier.rules(),
            Err(TreeError::TooManyFilters(n)) if n == MAX_FILTERS + 2
        ));
        let fits = Classifier {
            matches: vec![TrafficMatch::default(); MAX_FILTERS / 2],
            ..Default::default()
        };
        assert_eq!(fits.rules().unwrap().len(), MAX_FILTERS);
    }
}
