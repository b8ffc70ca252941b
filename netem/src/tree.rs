//! Targeted impairment: a prio root whose priomap sends everything to an untouched band,
//! the impairing qdisc (netem, or tbf for a bandwidth limit alone) under a second band,
//! and u32 filters deciding which packets go there.
//!
//! ```text
//! ca05: prio bands 2 priomap 0 0 ... 0     (everything unclassified -> ca05:1, untouched)
//! ├── ca05:1  pfifo (the kernel's default band qdisc)
//! └── ca05:2  netem ca06:
//! filters on ca05: (IPv4), evaluated by priority:
//!   pref 1..      exclusions       -> ca05:1
//!   pref 1000..   matches          -> ca05:2
//! ```
//!
//! Everything hangs below our root, so deleting (or replacing) the root removes it all;
//! `qdisc::restore` is the undo. A failure half-way restores the snapshot before returning.

use rtnetlink::Handle;
use serde::{Deserialize, Serialize};

use crate::filter::{self, FilterError};
use crate::impairment::Impairment;
use crate::qdisc::{self, CHAOS_ROOT_HANDLE, QdiscError, QdiscRecord, QdiscSnapshot, TC_H_ROOT};
use crate::u32::{self as cls, KeyConflict, Selector, TrafficMatch};

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

/// One filter to install: (pref, selector, class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRule {
    pub pref: u16,
    pub selector: Selector,
    pub classid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{0} filters: at most {MAX_FILTERS} exclusions and {MAX_FILTERS} matches")]
    TooManyFilters(usize),
    #[error(transparent)]
    Key(#[from] KeyConflict),
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

    /// The filters, exclusions first. Pure.
    pub fn rules(&self) -> Result<Vec<FilterRule>, TreeError> {
        let too_many = self.exclusions.len().max(self.matches.len());
        if too_many > MAX_FILTERS {
            return Err(TreeError::TooManyFilters(too_many));
        }
        let exclusions = self
            .exclusions
            .iter()
            .zip(EXCLUSION_PREF..)
            .map(|(m, pref)| {
                Ok(FilterRule {
                    pref,
                    selector: Selector::for_match(m)?,
                    classid: UNTOUCHED_CLASS,
                })
            });
        let matches = self.matches.iter().zip(MATCH_PREF..).map(|(m, pref)| {
            Ok(FilterRule {
                pref,
                selector: Selector::for_match(m)?,
                classid: NETEM_CLASS,
            })
        });
        exclusions.chain(matches).collect()
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
    for rule in rules {
        filter::add_u32(
            handle,
            ifindex,
            CHAOS_ROOT_HANDLE,
            rule.pref,
            cls::ETH_P_IP,
            cls::classify_options(&rule.selector, rule.classid),
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
    use crate::u32::{End, IPPROTO_TCP, Ipv4Cidr};

    #[test]
    fn exclusions_come_first_and_go_to_the_untouched_band() {
        let classifier = Classifier {
            exclusions: vec![TrafficMatch {
                protocol: Some(17),
                port: Some((End::Destination, 53)),
                ..Default::default()
            }],
            matches: vec![
                TrafficMatch {
                    protocol: Some(IPPROTO_TCP),
                    port: Some((End::Destination, 5432)),
                    ..Default::default()
                },
                TrafficMatch {
                    address: Some((
                        End::Destination,
                        Ipv4Cidr {
                            addr: "10.0.0.0".parse().unwrap(),
                            prefix: 8,
                        },
                    )),
                    ..Default::default()
                },
            ],
        };
        let rules = classifier.rules().unwrap();
        let summary: Vec<(u16, u32)> = rules.iter().map(|r| (r.pref, r.classid)).collect();
        assert_eq!(
            summary,
            vec![
                (1, UNTOUCHED_CLASS),
                (1000, NETEM_CLASS),
                (1001, NETEM_CLASS)
            ]
        );
        assert_eq!(rules[1].selector.describe(), "proto 6 dport 5432");
    }

    #[test]
    fn prio_options_send_everything_to_band_zero() {
        let options = prio_options();
        assert_eq!(options.len(), 20);
        assert_eq!(&options[..4], &2i32.to_ne_bytes());
        assert!(options[4..].iter().all(|b| *b == 0));
    }

    #[test]
    fn too_many_filters_are_refused() {
        let classifier = Classifier {
            matches: vec![TrafficMatch::default(); MAX_FILTERS + 1],
            ..Default::default()
        };
        assert!(matches!(
            classifier.rules(),
            Err(TreeError::TooManyFilters(_))
        ));
    }
}
