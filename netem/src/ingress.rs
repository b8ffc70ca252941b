//! Ingress impairment: incoming packets of an interface are redirected (u32 match-all +
//! mirred egress redirect on its ingress hook) to an ifb device made for the fault, whose
//! root carries netem (or the targeted tree); the ifb hands them back to the stack after.
//!
//! The interface's own ingress qdisc is respected: with none, an `ingress` qdisc is made
//! for the fault and deleted on revert; with an `ingress` or `clsact` already there (eBPF
//! CNIs hang filters on it), only our filter is added, at a priority below every existing
//! one so it runs first, and only that priority is deleted on revert. [`remove`] is
//! idempotent, so a journal replay after a crash at any step is safe, and it removes only
//! what it can tell is ours: the filter at our priority that redirects to our ifb, the
//! ingress qdisc we made once nothing else hangs on it, and the ifb by name, kind and
//! prefix.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};

use crate::filter::FilterView;
use crate::filter::{self, FilterError};
use crate::impairment::Impairment;
use crate::qdisc::{self, QdiscError, QdiscRecord, QdiscSnapshot, Restored, TC_H_INGRESS};
use crate::tree::{self, Classifier, TreeError};
use crate::u32::{self as cls, Selector};
use crate::wire::{self, WireError};

/// Handle of an `ingress` qdisc (`ffff:`), the parent of its filters.
pub const INGRESS_HANDLE: u32 = 0xffff_0000;
/// Filter parent of clsact's ingress hook (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`).
pub const CLSACT_INGRESS_PARENT: u32 = 0xffff_fff2;
/// Linux interface names have at most 15 bytes.
pub const IFNAMSIZ_MAX: usize = 15;

/// Everything needed to undo an ingress redirect: decided before any change, journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRedirect {
    /// The ifb device created for the fault, in the interface's namespace.
    pub ifb_name: String,
    /// Where our filter hangs: an ingress qdisc (`ffff:`) or clsact's ingress hook.
    pub parent: u32,
    pub pref: u16,
    /// The interface had no ingress/clsact qdisc: we add `ingress` and remove it again.
    pub creates_qdisc: bool,
    /// The ifb's ifindex once it exists ([`install`] returns it): tells our redirect
    /// filter from another one at our priority even after the ifb itself was deleted.
    /// Absent in records of agents before it existed, and of a crash before the install;
    /// then only a redirect to the ifb found by name counts as ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifb_index: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("interface name {0:?} is already taken in this namespace")]
    NameTaken(String),
    #[error("`{0}` is not a valid interface name (1..=15 bytes)")]
    BadName(String),
    #[error(
        "the ingress filters of interface {ifindex} already use priority 1: no priority is left to run first"
    )]
    NoFreePriority { ifindex: u32 },
    #[error("the kernel cannot create ifb devices (module ifb is missing): {0}")]
    IfbNotSupported(WireError),
    #[error("netlink {operation} failed: {source}")]
    Netlink {
        operation: &'static str,
        source: WireError,
    },
    #[error("the ifb device {0} did not appear after creation")]
    IfbMissing(String),
    #[error(transparent)]
    Qdisc(#[from] QdiscError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{error}; undoing the steps already done failed too: {undo}")]
    RollbackFailed {
        error: Box<IngressError>,
        undo: Box<IngressError>,
    },
}

/// A link as a dump shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub is_ifb: bool,
}

/// Every link of the handle's namespace, with whether it is an ifb.
pub async fn links(handle: &Handle) -> Result<Vec<Link>, IngressError> {
    let answers = wire::dump(handle, RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .await
        .map_err(|source| IngressError::Netlink {
            operation: "link dump",
            source,
        })?;
    Ok(answers
        .iter()
        .filter_map(|answer| match answer {
            RouteNetlinkMessage::NewLink(link) => {
                let mut name = None;
                let mut is_ifb = false;
                for attribute in &link.attributes {
                    match attribute {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::LinkInfo(infos) => {
                            is_ifb = infos
                                .iter()
                                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Ifb)));
                        }
                        _ => {}
                    }
                }
                Some(Link {
                    index: link.header.index,
                    name: name?,
                    is_ifb,
                })
            }
            _ => None,
        })
        .collect())
}

/// Decides where the redirect goes, from the snapshot of the interface. Changes nothing.
pub async fn plan(
    handle: &Handle,
    snapshot: &QdiscSnapshot,
    ifb_name: &str,
) -> Result<IngressRedirect, IngressError> {
    if ifb_name.is_empty() || ifb_name.len() > IFNAMSIZ_MAX {
        return Err(IngressError::BadName(ifb_name.to_string()));
    }
    if links(handle).await?.iter().any(|l| l.name == ifb_name) {
        return Err(IngressError::NameTaken(ifb_name.to_string()));
    }
    let ifindex = snapshot.ifindex;
    let (parent, creates_qdisc) = match &snapshot.ingress {
        None => (INGRESS_HANDLE, true),
        Some(record) if record.kind == "clsact" => (CLSACT_INGRESS_PARENT, false),
        Some(record) => (record.handle, false),
    };
    let pref = if creates_qdisc {
        1
    } else {
        match filter::prefs(handle, ifindex, parent).await?.first() {
            None => 1,
            Some(1) => return Err(IngressError::NoFreePriority { ifindex }),
            Some(lowest) => lowest - 1,
        }
    };
    Ok(IngressRedirect {
        ifb_name: ifb_name.to_string(),
        parent,
        pref,
        creates_qdisc,
        ifb_index: None,
    })
}

async fn create_ifb(handle: &Handle, name: &str) -> Result<u32, IngressError> {
    let mut message = LinkMessage::default();
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_string()));
    message
        .attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
    wire::change(
        handle,
        RouteNetlinkMessage::NewLink(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    .map_err(|source| match source.errno {
        // No rtnl_link_ops for "ifb": the module is missing.
        Some(errno) if errno == nix::errno::Errno::EOPNOTSUPP as i32 => {
            IngressError::IfbNotSupported(source)
        }
        Some(errno) if errno == nix::errno::Errno::EEXIST as i32 => {
            IngressError::NameTaken(name.to_string())
        }
        _ => IngressError::Netlink {
            operation: "ifb create",
            source,
        },
    })?;
    links(handle)
        .await?
        .into_iter()
        .find(|l| l.name == name && l.is_ifb)
        .map(|l| l.index)
        .ok_or_else(|| IngressError::IfbMissing(name.to_string()))
}

/// Creates the ifb with netem (and `classifier`) on its root, then redirects the
/// ingress of `ifindex` to it. Completely or not at all. Returns the ifb's ifindex (for
/// [`IngressRedirect::ifb_index`]).
pub async fn install(
    handle: &Handle,
    ifindex: u32,
    redirect: &IngressRedirect,
    impairment: &Impairment,
    classifier: &Classifier,
) -> Result<u32, IngressError> {
    match install_steps(handle, ifindex, redirect, impairment, classifier).await {
        Ok(ifb) => Ok(ifb),
        Err(error) => match remove(handle, ifindex, redirect).await {
            Ok(_) => Err(error),
            Err(undo) => Err(IngressError::RollbackFailed {
                error: Box::new(error),
                undo: Box::new(undo),
            }),
        },
    }
}

async fn install_steps(
    handle: &Handle,
    ifindex: u32,
    redirect: &IngressRedirect,
    impairment: &Impairment,
    classifier: &Classifier,
) -> Result<u32, IngressError> {
    let ifb = create_ifb(handle, &redirect.ifb_name).await?;
    // The ifb is ours: its snapshot needs no keeping, deleting the ifb removes it all.
    tree::install(handle, ifb, impairment, classifier).await?;
    if redirect.creates_qdisc {
        let ingress = QdiscRecord {
            kind: "ingress".into(),
            handle: INGRESS_HANDLE,
            parent: TC_H_INGRESS,
            options: None,
        };
        qdisc::replace(handle, ifindex, &ingress).await?;
    }
    // Every packet of every protocol: the ifb's own filters pick (both IP families).
    let everything = Selector::match_all();
    filter::add_u32(
        handle,
        ifindex,
        redirect.parent,
        redirect.pref,
        cls::ETH_P_ALL,
        cls::redirect_options(&everything, ifb),
    )
    .await?;
    Ok(ifb)
}

/// Whether `link` is the ifb of `redirect`: its name, an ifb, and our prefix.
fn is_our_ifb(link: &Link, redirect: &IngressRedirect) -> bool {
    link.is_ifb && link.name == redirect.ifb_name && link.name.starts_with(IFB_PREFIX)
}

/// Whether `filter` is our redirect: at our priority, a u32 redirecting to our ifb (by
/// its index now, or, when the ifb is gone, by the index recorded at install, which no
/// other link has taken since).
fn is_our_redirect(filter: &FilterView, redirect: &IngressRedirect, links: &[Link]) -> bool {
    let ifb_now = links
        .iter()
        .find(|l| is_our_ifb(l, redirect))
        .map(|l| l.index);
    let recorded_and_free = redirect
        .ifb_index
        .filter(|index| !links.iter().any(|l| l.index == *index));
    filter.pref == redirect.pref
        && filter.kind == "u32"
        && filter
            .redirect_to
            .is_some_and(|target| Some(target) == ifb_now.or(recorded_and_free))
}

/// Removes our redirect filter (and the ingress qdisc if we made it and nothing else
/// hangs on it), then the ifb. Idempotent. A filter at our priority that is not our
/// redirect is left alone, and so is an ingress qdisc with filters of others on it.
pub async fn remove(
    handle: &Handle,
    ifindex: u32,
    redirect: &IngressRedirect,
) -> Result<Restored, IngressError> {
    let links = links(handle).await?;
    let interface_exists = links.iter().any(|l| l.index == ifindex);
    let mut outcome = if interface_exists {
        match remove_redirect(handle, ifindex, redirect, &links).await {
            Ok(outcome) => outcome,
            // Deleted after the link dump: its qdiscs and filters went with it.
            Err(_) if !qdisc::interface_exists(handle, ifindex).await? => Restored::InterfaceGone,
            Err(error) => return Err(error),
        }
    } else {
        // The interface took its ingress qdisc and filters with it; the ifb is apart.
        Restored::InterfaceGone
    };
    // Only an ifb of this name, kind and prefix is ours to delete.
    if let Some(ifb) = links.iter().find(|l| is_our_ifb(l, redirect)) {
        let mut message = LinkMessage::default();
        message.header.index = ifb.index;
        match wire::change(handle, RouteNetlinkMessage::DelLink(message), 0).await {
            Ok(()) => {}
            // Deleted meanwhile (it is ours: nobody else should, but it is gone either way).
            Err(source) if source.errno == Some(nix::errno::Errno::ENODEV as i32) => {}
            Err(source) => {
                return Err(IngressError::Netlink {
                    operation: "ifb delete",
                    source,
                });
            }
        }
    }
    if outcome == Restored::Done && !qdisc::interface_exists(handle, ifindex).await? {
        outcome = Restored::InterfaceGone;
    }
    Ok(outcome)
}

/// The interface's part of [`remove`]: our filter, then the ingress qdisc we made.
async fn remove_redirect(
    handle: &Handle,
    ifindex: u32,
    redirect: &IngressRedirect,
    links: &[Link],
) -> Result<Restored, IngressError> {
    let records = qdisc::qdisc_records(handle, ifindex).await?;
    let Some(hook) = records.iter().find(|r| r.parent == TC_H_INGRESS) else {
        // No ingress/clsact qdisc: nothing of ours can hang on the interface.
        return Ok(Restored::Done);
    };
    let filters = filter::dump(handle, ifindex, redirect.parent).await?;
    let at_our_pref: Vec<&FilterView> =
        filters.iter().filter(|f| f.pref == redirect.pref).collect();
    let mut outcome = Restored::Done;
    if at_our_pref
        .iter()
        .all(|f| is_our_redirect(f, redirect, links))
    {
        if !at_our_pref.is_empty() {
            filter::delete_pref(handle, ifindex, redirect.parent, redirect.pref).await?;
        }
    } else {
        outcome = Restored::OthersLeftAlone(format!(
            "the filters at priority {} of interface {ifindex}'s ingress are not our redirect: {}",
            redirect.pref,
            at_our_pref
                .iter()
                .map(|f| f.describe())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let made_by_us = redirect.creates_qdisc
        && hook.kind == "ingress"
        && hook.handle == INGRESS_HANDLE
        && redirect.parent == INGRESS_HANDLE;
    if made_by_us
        && filter::prefs(handle, ifindex, INGRESS_HANDLE)
            .await?
            .is_empty()
    {
        qdisc::delete(handle, ifindex, hook).await?;
    }
    Ok(outcome)
}

/// What every ifb made for a fault is called first.
pub const IFB_PREFIX: &str = "chaos-ifb-";

/// A name for the ifb of one fault: [`IFB_PREFIX`] and 5 hex digits of `seed`.
pub fn ifb_name(seed: u32) -> String {
    format!("{IFB_PREFIX}{:05x}", seed & 0xf_ffff)
}

/// The snapshot's ingress qdisc as it would be put back (for reports).
pub fn describe_parent(parent: u32) -> &'static str {
    match parent {
        CLSACT_INGRESS_PARENT => "clsact ingress",
        INGRESS_HANDLE => "ingress",
        _ => "ingress qdisc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifb_names_fit_ifnamsiz() {
        assert_eq!(ifb_name(0xffff_ffff), "chaos-ifb-fffff");
        assert_eq!(ifb_name(0x12), "chaos-ifb-00012");
        assert!(ifb_name(7).len() <= IFNAMSIZ_MAX);
    }

    fn redirect_to(pref: u16, target: Option<u32>) -> FilterView {
        FilterView {
            parent: INGRESS_HANDLE,
            pref,
            protocol: cls::ETH_P_ALL,
            kind: "u32".into(),
            selector: None,
            classid: None,
            redirect_to: target,
        }
    }

    fn link(index: u32, name: &str, is_ifb: bool) -> Link {
        Link {
            index,
            name: name.into(),
            is_ifb,
        }
    }

    #[test]
    fn only_a_redirect_at_our_priority_to_our_ifb_is_ours() {
        let ours = IngressRedirect {
            ifb_name: ifb_name(0x42),
            parent: INGRESS_HANDLE,
            pref: 9,
            creates_qdisc: false,
            ifb_index: Some(7),
        };
        let links = [link(2, "eth0", false), link(7, &ifb_name(0x42), true)];
        assert!(is_our_redirect(&redirect_to(9, Some(7)), &ours, &links));
        // Another priority, another target, no action, another kind: not ours.
        assert!(!is_our_redirect(&redirect_to(8, Some(7)), &ours, &links));
        assert!(!is_our_redirect(&redirect_to(9, Some(2)), &ours, &links));
        assert!(!is_our_redirect(&redirect_to(9, None), &ours, &links));
        let bpf = FilterView {
            kind: "bpf".into(),
            ..redirect_to(9, Some(7))
        };
        assert!(!is_our_redirect(&bpf, &ours, &links));
        // A link of our name that is no ifb, or an ifb without our prefix, is not ours.
        let impostor = [link(7, &ifb_name(0x42), false)];
        assert!(!is_our_ifb(&impostor[0], &ours));
        let foreign = IngressRedirect {
            ifb_name: "ifb0".into(),
            ..ours.clone()
        };
        assert!(!is_our_ifb(&link(7, "ifb0", true), &foreign));
        // Our ifb was deleted: the redirect to its recorded index is still ours, unless
        // another link has that index now.
        let without_ifb = [link(2, "eth0", false)];
        assert!(is_our_redirect(
            &redirect_to(9, Some(7)),
            &ours,
            &without_ifb
        ));
        let reused = [link(2, "eth0", false), link(7, "veth-new", false)];
        assert!(!is_our_redirect(&redirect_to(9, Some(7)), &ours, &reused));
        let unrecorded = IngressRedirect {
            ifb_index: None,
            ..ours
        };
        assert!(!is_our_redirect(
            &redirect_to(9, Some(7)),
            &unrecorded,
            &without_ifb
        ));
    }

    #[test]
    fn the_redirect_record_serializes_for_the_journal() {
        let redirect = IngressRedirect {
            ifb_name: ifb_name(1),
            parent: INGRESS_HANDLE,
            pref: 1,
            creates_qdisc: true,
            ifb_index: Some(9),
        };
        let json = serde_json::to_string(&redirect).unwrap();
        assert_eq!(
            serde_json::from_str::<IngressRedirect>(&json).unwrap(),
            redirect
        );
        assert_eq!(describe_parent(CLSACT_INGRESS_PARENT), "clsact ingress");
        // Records of agents before the ifb index was kept still read.
        let old =
            r#"{"ifb_name":"chaos-ifb-00001","parent":4294901760,"pref":1,"creates_qdisc":true}"#;
        assert_eq!(
            serde_json::from_str::<IngressRedirect>(old)
                .unwrap()
                .ifb_index,
            None
        );
    }
}
