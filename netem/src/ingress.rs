//! Ingress impairment: incoming packets of an interface are redirected (u32 match-all +
//! mirred egress redirect on its ingress hook) to an ifb device made for the fault, whose
//! root carries netem (or the targeted tree); the ifb hands them back to the stack after.
//!
//! The interface's own ingress qdisc is respected: with none, an `ingress` qdisc is made
//! for the fault and deleted on revert; with an `ingress` or `clsact` already there (eBPF
//! CNIs hang filters on it), only our filter is added, at a priority below every existing
//! one so it runs first, and only that priority is deleted on revert. [`remove`] is
//! idempotent, so a journal replay after a crash at any step is safe.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};

use crate::filter::{self, FilterError};
use crate::impairment::Impairment;
use crate::qdisc::{self, QdiscError, QdiscRecord, QdiscSnapshot, TC_H_INGRESS};
use crate::tree::{self, Classifier, TreeError};
use crate::u32::{self as cls, Selector, TrafficMatch};
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
/// ingress of `ifindex` to it. Completely or not at all.
pub async fn install(
    handle: &Handle,
    ifindex: u32,
    redirect: &IngressRedirect,
    impairment: &Impairment,
    classifier: &Classifier,
) -> Result<(), IngressError> {
    match install_steps(handle, ifindex, redirect, impairment, classifier).await {
        Ok(()) => Ok(()),
        Err(error) => match remove(handle, ifindex, redirect).await {
            Ok(()) => Err(error),
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
) -> Result<(), IngressError> {
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
    let everything = Selector::for_match(&TrafficMatch::default()).map_err(TreeError::from)?;
    filter::add_u32(
        handle,
        ifindex,
        redirect.parent,
        redirect.pref,
        cls::ETH_P_ALL,
        cls::redirect_options(&everything, ifb),
    )
    .await?;
    Ok(())
}

/// Removes our redirect filter (and the ingress qdisc if we made it and nothing else
/// hangs on it), then the ifb. Idempotent.
pub async fn remove(
    handle: &Handle,
    ifindex: u32,
    redirect: &IngressRedirect,
) -> Result<(), IngressError> {
    let interface_exists = links(handle).await?.iter().any(|l| l.index == ifindex);
    if interface_exists {
        filter::delete_pref(handle, ifindex, redirect.parent, redirect.pref).await?;
        if redirect.creates_qdisc {
            let records = qdisc::qdisc_records(handle, ifindex).await?;
            let ours = records
                .into_iter()
                .find(|r| r.parent == TC_H_INGRESS && r.kind == "ingress");
            if let Some(ingress) = ours
                && filter::prefs(handle, ifindex, INGRESS_HANDLE)
                    .await?
                    .is_empty()
            {
                qdisc::delete(handle, ifindex, &ingress).await?;
            }
        }
    }
    // Only an ifb of this name is ours to delete; anything else is left alone.
    if let Some(ifb) = links(handle)
        .await?
        .into_iter()
        .find(|l| l.name == redirect.ifb_name && l.is_ifb)
    {
        let mut message = LinkMessage::default();
        message.header.index = ifb.index;
        wire::change(handle, RouteNetlinkMessage::DelLink(message), 0)
            .await
            .map_err(|source| IngressError::Netlink {
                operation: "ifb delete",
                source,
            })?;
    }
    Ok(())
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

    #[test]
    fn the_redirect_record_serializes_for_the_journal() {
        let redirect = IngressRedirect {
            ifb_name: ifb_name(1),
            parent: INGRESS_HANDLE,
            pref: 1,
            creates_qdisc: true,
        };
        let json = serde_json::to_string(&redirect).unwrap();
        assert_eq!(
            serde_json::from_str::<IngressRedirect>(&json).unwrap(),
            redirect
        );
        assert_eq!(describe_parent(CLSACT_INGRESS_PARENT), "clsact ingress");
    }
}
