//! What the kernel's refusals mean to a client: a missing module or an interface the
//! agent will not replace is a failed precondition, with the fix; anything else is
//! internal.

use chaos_netem::filter::FilterError;
use chaos_netem::ingress::IngressError;
use chaos_netem::tree::TreeError;
use chaos_netem::{NetnsError, QdiscError};

use super::NETEM_MISSING_HINT;
use crate::error::AgentError;

pub(super) fn qdisc_error(ifname: &str, err: QdiscError) -> AgentError {
    match err {
        QdiscError::KindNotSupported { kind } if kind == "netem" => AgentError::FailedPrecondition(
            format!("interface {ifname}: the kernel refused netem: {NETEM_MISSING_HINT}"),
        ),
        QdiscError::KindNotSupported { kind } => AgentError::FailedPrecondition(format!(
            "interface {ifname}: the kernel refused the {kind} qdisc: module sch_{kind} is missing on this node; \
             nothing was changed (run `modprobe sch_{kind}` or install the kernel's extra modules)"
        )),
        QdiscError::NotRestorable { .. } | QdiscError::ChangedByOthers { .. } => {
            AgentError::FailedPrecondition(format!("interface {ifname}: {err}"))
        }
        other => AgentError::Internal(format!("interface {ifname}: {other}")),
    }
}

pub(super) fn tree_error(ifname: &str, err: TreeError) -> AgentError {
    match err {
        TreeError::Qdisc(e) => qdisc_error(ifname, e),
        TreeError::Filter(FilterError::NotSupported) => AgentError::FailedPrecondition(format!(
            "interface {ifname}: the kernel refused the u32 filter: module cls_u32 (or act_mirred) \
             is missing on this node; nothing was changed"
        )),
        other => AgentError::Internal(format!("interface {ifname}: {other}")),
    }
}

pub(super) fn ingress_error(ifname: &str, err: IngressError) -> AgentError {
    match err {
        IngressError::Tree(e) => tree_error(ifname, e),
        IngressError::Qdisc(e) => qdisc_error(ifname, e),
        IngressError::Filter(e) => tree_error(ifname, TreeError::Filter(e)),
        IngressError::IfbNotSupported(e) => AgentError::FailedPrecondition(format!(
            "interface {ifname}: the kernel cannot create ifb devices ({e}): module ifb is missing \
             on this node, and the ingress direction needs it; nothing was changed"
        )),
        IngressError::NoFreePriority { .. } | IngressError::NameTaken(_) => {
            AgentError::FailedPrecondition(format!("interface {ifname}: {err}"))
        }
        other => AgentError::Internal(format!("interface {ifname}: {other}")),
    }
}

/// A netlink operation that could not run or did not finish (chaos-netem's timeout).
pub(super) fn netlink_failed(what: &str, err: NetnsError) -> AgentError {
    AgentError::Internal(format!("{what}: {err}"))
}
