//! u32 filters over rtnetlink: add, delete by priority, and a decoded dump.

use netlink_packet_core::{DefaultNla, Emitable, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcOption,
};
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};

use crate::u32::{self as cls, Selector};
use crate::wire::{self, WireError};

const TCA_OPTIONS: u16 = 2;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(
        "the kernel has no u32 classifier or no mirred action (ENOENT on filter add: module \
         cls_u32 or act_mirred is missing)"
    )]
    NotSupported,
    #[error("netlink {operation} failed: {source}")]
    Netlink {
        operation: &'static str,
        source: WireError,
    },
}

/// One filter as a dump shows it, decoded enough to say what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterView {
    pub parent: u32,
    pub pref: u16,
    pub protocol: u16,
    pub kind: String,
    /// The u32 keys, when the filter is a u32 key node.
    pub selector: Option<Selector>,
    pub classid: Option<u32>,
    /// Interface index a mirred action redirects to.
    pub redirect_to: Option<u32>,
}

impl FilterView {
    /// In words, like `tc filter show` prints it, compactly.
    pub fn describe(&self) -> String {
        let mut text = format!("pref {} {}", self.pref, self.kind);
        // IPv6 filters say so; IPv4 ones (and the ingress redirect's `all`, whose
        // match-all reads the same) read as they always did.
        let family = cls::Family::of_ethertype(self.protocol).unwrap_or(cls::Family::V4);
        if family == cls::Family::V6 {
            text += " ipv6";
        }
        if let Some(selector) = &self.selector {
            text += &format!(" {}", selector.describe(family));
        }
        if let Some(classid) = self.classid {
            text += &format!(" -> {:x}:{:x}", classid >> 16, classid & 0xffff);
        }
        if let Some(ifindex) = self.redirect_to {
            text += &format!(" -> redirect ifindex {ifindex}");
        }
        text
    }
}

/// Adds a u32 filter with raw `TCA_OPTIONS` (see [`crate::u32`]) under `parent`.
pub async fn add_u32(
    handle: &Handle,
    ifindex: u32,
    parent: u32,
    pref: u16,
    protocol: u16,
    options: Vec<u8>,
) -> Result<(), FilterError> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = TcHandle::from(parent);
    message.header.info = cls::filter_info(pref, protocol);
    message.attributes.push(TcAttribute::Kind("u32".into()));
    message
        .attributes
        .push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)));
    wire::change(
        handle,
        RouteNetlinkMessage::NewTrafficFilter(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    .map_err(|source| {
        if source.errno == Some(nix::errno::Errno::ENOENT as i32) {
            FilterError::NotSupported
        } else {
            FilterError::Netlink {
                operation: "filter add",
                source,
            }
        }
    })
}

/// Deletes every filter at priority `pref` under `parent` (protocol 0 = any). Missing
/// filters are not an error: deleting is idempotent.
pub async fn delete_pref(
    handle: &Handle,
    ifindex: u32,
    parent: u32,
    pref: u16,
) -> Result<(), FilterError> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = TcHandle::from(parent);
    message.header.info = cls::filter_info(pref, 0);
    match wire::change(handle, RouteNetlinkMessage::DelTrafficFilter(message), 0).await {
        Ok(()) => Ok(()),
        // ENOENT: no such filter chain/priority; EINVAL: the qdisc itself is gone.
        Err(source)
            if source.errno == Some(nix::errno::Errno::ENOENT as i32)
                || source.errno == Some(nix::errno::Errno::EINVAL as i32) =>
        {
            Ok(())
        }
        Err(source) => Err(FilterError::Netlink {
            operation: "filter delete",
            source,
        }),
    }
}

fn view_of(message: &TcMessage) -> FilterView {
    let info = message.header.info;
    let mut view = FilterView {
        parent: message.header.parent.into(),
        pref: (info >> 16) as u16,
        protocol: u16::from_be(info as u16),
        kind: String::new(),
        selector: None,
        classid: None,
        redirect_to: None,
    };
    for attribute in &message.attributes {
        match attribute {
            TcAttribute::Kind(kind) => view.kind = kind.clone(),
            TcAttribute::Options(options) => {
                for option in options {
                    let TcOption::U32(option) = option else {
                        continue;
                    };
                    match option {
                        TcFilterU32Option::Selector(selector) => {
                            let mut bytes = vec![0u8; selector.buffer_len()];
                            selector.emit(&mut bytes);
                            view.selector = Selector::decode(&bytes);
                        }
                        TcFilterU32Option::ClassId(classid) => {
                            view.classid = Some((*classid).into())
                        }
                        TcFilterU32Option::Action(actions) => {
                            view.redirect_to = actions.iter().find_map(mirred_target);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    view
}

fn mirred_target(action: &TcAction) -> Option<u32> {
    action
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            TcActionAttribute::Options(options) => options.iter().find_map(|option| match option {
                TcActionOption::Mirror(TcActionMirrorOption::Parms(parms)) => Some(parms.ifindex),
                _ => None,
            }),
            _ => None,
        })
}

/// The filters under `parent` on `ifindex` (key nodes only: the hash-table entries the
/// kernel also dumps for u32 carry no selector and are left out).
pub async fn dump(
    handle: &Handle,
    ifindex: u32,
    parent: u32,
) -> Result<Vec<FilterView>, FilterError> {
    let mut request = TcMessage::with_index(ifindex as i32);
    request.header.parent = TcHandle::from(parent);
    let answers = wire::dump(handle, RouteNetlinkMessage::GetTrafficFilter(request))
        .await
        .map_err(|source| FilterError::Netlink {
            operation: "filter dump",
            source,
        })?;
    Ok(answers
        .iter()
        .filter_map(|answer| match answer {
            RouteNetlinkMessage::NewTrafficFilter(message) => Some(view_of(message)),
            _ => None,
        })
        .filter(|view| view.kind != "u32" || view.selector.is_some())
        .collect())
}

/// Every priority in use under `parent`, including filters of other kinds.
pub async fn prefs(handle: &Handle, ifindex: u32, parent: u32) -> Result<Vec<u16>, FilterError> {
    let mut prefs: Vec<u16> = dump(handle, ifindex, parent)
        .await?
        .into_iter()
        .map(|view| view.pref)
        .collect();
    prefs.sort_unstable();
    prefs.dedup();
    Ok(prefs)
}
