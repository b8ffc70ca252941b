//! Root qdisc operations on one interface: snapshot, install netem (or another root),
//! restore exactly what was there, and a decoded dump.
//!
//! Safety rules, because the interface belongs to a workload:
//! - whatever we install as root carries our handle [`CHAOS_ROOT_HANDLE`], so restore can
//!   tell our qdisc from anyone else's and never deletes a qdisc it did not install;
//! - we refuse to replace a root we could not put back byte for byte (a non-default root
//!   with child qdiscs, user-made classes or filters), instead of silently losing them;
//! - ingress/clsact qdiscs are recorded but never deleted (eBPF CNIs hang filters there);
//!   restore re-creates a recorded one that went missing.

use netlink_packet_core::{DefaultNla, Emitable, NLM_F_CREATE, NLM_F_REPLACE, Nla};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, DecodedNetem, NetemSpec};
use crate::replay;
use crate::tbf::{self, TbfError, TbfSpec};
use crate::wire::{self, WireError};

/// `TCA_OPTIONS` in `linux/rtnetlink.h`.
const TCA_OPTIONS: u16 = 2;
/// The handle of every root qdisc this crate installs (`ca05:`), so it is recognisable.
pub const CHAOS_ROOT_HANDLE: u32 = 0xca05_0000;
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// Parent value of ingress and clsact qdiscs (`TC_H_INGRESS` = `TC_H_CLSACT`).
pub const TC_H_INGRESS: u32 = 0xffff_fff1;
/// Qdisc kinds whose classes are made by users (`tc class add`); other classful kinds
/// (tbf, prio, mq, ...) have built-in classes that come back with the qdisc.
const KINDS_WITH_USER_CLASSES: [&str; 6] = ["htb", "hfsc", "drr", "qfq", "cbq", "ets"];

/// One qdisc as the kernel reports it: enough to re-create it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscRecord {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// The raw `TCA_OPTIONS` payload, `None` when the kernel sent none.
    pub options: Option<Vec<u8>>,
}

impl QdiscRecord {
    /// Qdiscs the kernel attached by itself (noqueue, pfifo_fast, mq, fq_codel, ...) have
    /// handle 0; deleting whatever replaced them brings them back.
    pub fn is_kernel_default(&self) -> bool {
        self.handle & 0xffff_0000 == 0
    }

    pub fn is_ours(&self) -> bool {
        self.handle == CHAOS_ROOT_HANDLE
    }
}

/// The qdisc state of one interface before we touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscSnapshot {
    pub ifindex: u32,
    pub root: QdiscRecord,
    /// The ingress or clsact qdisc, if any.
    pub ingress: Option<QdiscRecord>,
    /// Qdiscs below the root that appear in a dump (e.g. leaves of an htb tree, or mq's
    /// per-queue qdiscs).
    pub child_qdiscs: Vec<QdiscRecord>,
    /// Classes of the root that users create (htb, hfsc, ...); 0 for other kinds.
    pub user_classes: usize,
    /// Filters attached to the root qdisc.
    pub root_filters: usize,
}

impl QdiscSnapshot {
    /// Why the recorded root could not be put back exactly after a replace, if so.
    pub fn not_restorable_reason(&self) -> Option<String> {
        if self.root.is_kernel_default() {
            // Deleting our root makes the kernel rebuild its default tree.
            return None;
        }
        if !self.child_qdiscs.is_empty() {
            return Some(format!(
                "root {} has {} child qdiscs",
                self.root.kind,
                self.child_qdiscs.len()
            ));
        }
        if self.user_classes > 0 {
            return Some(format!(
                "root {} has {} classes",
                self.root.kind, self.user_classes
            ));
        }
        if self.root_filters > 0 {
            return Some(format!(
                "root {} has {} filters",
                self.root.kind, self.root_filters
            ));
        }
        None
    }
}

/// A qdisc in a dump, with netem and tbf options decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QdiscView {
    pub record: QdiscRecord,
    pub netem: Option<DecodedNetem>,
    #[serde(default)]
    pub tbf: Option<TbfSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum QdiscError {
    #[error(
        "qdisc kind {kind:?} is not supported by this kernel (the kernel answered ENOENT: \
         module sch_{kind} is missing or not loaded)"
    )]
    KindNotSupported { kind: String },
    #[error("netlink {operation} failed: {source}")]
    Netlink {
        operation: &'static str,
        source: WireError,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Tbf(#[from] TbfError),
    #[error("interface {ifindex} has no root qdisc (is the ifindex right?)")]
    NoRootQdisc { ifindex: u32 },
    #[error(
        "refusing to replace the root qdisc of interface {ifindex}: {reason}, which restore could not put back"
    )]
    NotRestorable { ifindex: u32, reason: String },
    #[error(
        "the root qdisc of interface {ifindex} is {found_kind} {found_handle:#x}, neither the \
         recorded one nor ours: someone else changed it, leaving it alone"
    )]
    ChangedByOthers {
        ifindex: u32,
        found_kind: String,
        found_handle: u32,
    },
    #[error(
        "restore of interface {ifindex} did not bring back the recorded root: expected {expected:?}, found {found:?}"
    )]
    RestoreMismatch {
        ifindex: u32,
        expected: Box<QdiscRecord>,
        found: Box<QdiscRecord>,
    },
}

fn netlink(operation: &'static str) -> impl FnOnce(WireError) -> QdiscError {
    move |source| QdiscError::Netlink { operation, source }
}

/// The raw `TCA_OPTIONS` payload of a dumped qdisc. Unknown kinds (netem, tbf, htb, ...)
/// arrive as one opaque attribute; kinds netlink-packet-route knows (ingress, fq_codel)
/// arrive parsed and are emitted back to bytes.
fn raw_options(options: &[TcOption]) -> Vec<u8> {
    if let [TcOption::Other(attribute)] = options
        && attribute.kind() & 0x3fff == TCA_OPTIONS
    {
        let mut bytes = vec![0u8; attribute.value_len()];
        attribute.emit_value(&mut bytes);
        return bytes;
    }
    let mut bytes = vec![0u8; options.buffer_len()];
    options.emit(&mut bytes);
    bytes
}

pub(crate) fn record_of(message: &TcMessage) -> QdiscRecord {
    let mut kind = String::new();
    let mut options = None;
    for attribute in &message.attributes {
        match attribute {
            TcAttribute::Kind(name) => kind = name.clone(),
            TcAttribute::Options(parsed) => options = Some(raw_options(parsed)),
            TcAttribute::Other(attribute) if attribute.kind() & 0x3fff == TCA_OPTIONS => {
                let mut bytes = vec![0u8; attribute.value_len()];
                attribute.emit_value(&mut bytes);
                options = Some(bytes);
            }
            _ => {}
        }
    }
    QdiscRecord {
        kind,
        handle: message.header.handle.into(),
        parent: message.header.parent.into(),
        options,
    }
}

pub(crate) fn tc_message(ifindex: u32, record: &QdiscRecord) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.handle = TcHandle::from(record.handle);
    message.header.parent = TcHandle::from(record.parent);
    message
        .attributes
        .push(TcAttribute::Kind(record.kind.clone()));
    if let Some(options) = &record.options {
        // Sent as an opaque attribute: netem's payload is a struct followed by attributes,
        // which no typed option can express.
        let options = replay::request_options(&record.kind, options);
        message
            .attributes
            .push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)));
    }
    message
}

/// Every qdisc of every interface in the namespace, from one dump: a caller can send it
/// before it knows the interface, alongside the link lookup, and pick the interface's
/// qdiscs with [`QdiscTable::of`] afterwards.
#[derive(Debug, Clone)]
pub struct QdiscTable(Vec<(u32, QdiscRecord)>);

impl QdiscTable {
    /// The qdiscs of `ifindex`, in the kernel's order.
    pub fn of(&self, ifindex: u32) -> Vec<QdiscRecord> {
        self.0
            .iter()
            .filter(|(index, _)| *index == ifindex)
            .map(|(_, record)| record.clone())
            .collect()
    }
}

pub async fn table(handle: &Handle) -> Result<QdiscTable, QdiscError> {
    // Without strict checking the kernel dumps every interface.
    let answers = wire::dump(
        handle,
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
    )
    .await
    .map_err(netlink("qdisc dump"))?;
    Ok(QdiscTable(
        answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewQueueDiscipline(message) => {
                    Some((message.header.index as u32, record_of(message)))
                }
                _ => None,
            })
            .collect(),
    ))
}

/// Every qdisc of one interface, as recorded.
pub(crate) async fn qdisc_records(
    handle: &Handle,
    ifindex: u32,
) -> Result<Vec<QdiscRecord>, QdiscError> {
    Ok(table(handle).await?.of(ifindex))
}

async fn count_classes(handle: &Handle, ifindex: u32) -> Result<usize, QdiscError> {
    let answers = wire::dump(
        handle,
        RouteNetlinkMessage::GetTrafficClass(TcMessage::with_index(ifindex as i32)),
    )
    .await
    .map_err(netlink("class dump"))?;
    Ok(answers
        .iter()
        .filter(|answer| matches!(answer, RouteNetlinkMessage::NewTrafficClass(_)))
        .count())
}

async fn count_root_filters(handle: &Handle, ifindex: u32) -> Result<usize, QdiscError> {
    // Parent 0 asks for the filters of the root qdisc.
    let answers = wire::dump(
        handle,
        RouteNetlinkMessage::GetTrafficFilter(TcMessage::with_index(ifindex as i32)),
    )
    .await
    .map_err(netlink("filter dump"))?;
    Ok(answers
        .iter()
        .filter(|answer| matches!(answer, RouteNetlinkMessage::NewTrafficFilter(_)))
        .count())
}

/// The root and ingress/clsact qdiscs of an interface, from one dump.
struct Roots {
    root: QdiscRecord,
    ingress: Option<QdiscRecord>,
}

/// What restore compares: only the root and ingress qdiscs (one dump, where a snapshot
/// also counts classes and filters).
async fn roots(handle: &Handle, ifindex: u32) -> Result<Roots, QdiscError> {
    let (roots, _children) = split(qdisc_records(handle, ifindex).await?, ifindex)?;
    Ok(roots)
}

/// The root, ingress and every other qdisc of one interface's records.
fn split(records: Vec<QdiscRecord>, ifindex: u32) -> Result<(Roots, Vec<QdiscRecord>), QdiscError> {
    let mut root = None;
    let mut ingress = None;
    let mut others = Vec::new();
    for record in records {
        match record.parent {
            TC_H_ROOT => root = Some(record),
            TC_H_INGRESS => ingress = Some(record),
            _ => others.push(record),
        }
    }
    let root = root.ok_or(QdiscError::NoRootQdisc { ifindex })?;
    Ok((Roots { root, ingress }, others))
}

/// Records the root and ingress/clsact qdiscs of `ifindex`, and what hangs below the root.
pub async fn snapshot(handle: &Handle, ifindex: u32) -> Result<QdiscSnapshot, QdiscError> {
    snapshot_of(handle, ifindex, qdisc_records(handle, ifindex).await?).await
}

/// [`snapshot`] from `records`, the interface's qdiscs as dumped a moment ago (see
/// [`QdiscTable`]). Dumps classes and filters only for a root that may carry them.
pub async fn snapshot_of(
    handle: &Handle,
    ifindex: u32,
    records: Vec<QdiscRecord>,
) -> Result<QdiscSnapshot, QdiscError> {
    let (Roots { root, ingress }, mut child_qdiscs) = split(records, ifindex)?;
    // Children of a kernel default root (mq's per-queue qdiscs) come back with it; only
    // children of a user-made root need an explicit restore.
    if root.is_kernel_default() {
        child_qdiscs.clear();
    }
    let user_classes = if KINDS_WITH_USER_CLASSES.contains(&root.kind.as_str()) {
        count_classes(handle, ifindex).await?
    } else {
        0
    };
    // A kernel default root comes back whole when ours is deleted, whatever hangs on
    // it, so its filters do not decide anything (see `not_restorable_reason`): one dump
    // fewer on a fresh pod's interface, whose root is always a default.
    let root_filters = if root.is_kernel_default() {
        0
    } else {
        count_root_filters(handle, ifindex).await?
    };
    Ok(QdiscSnapshot {
        ifindex,
        root,
        ingress,
        child_qdiscs,
        user_classes,
        root_filters,
    })
}

/// What the kernel has on `ifindex` now, with netem options decoded.
pub async fn dump(handle: &Handle, ifindex: u32) -> Result<Vec<QdiscView>, QdiscError> {
    let records = qdisc_records(handle, ifindex).await?;
    records
        .into_iter()
        .map(|record| {
            let netem = match (&record.kind[..], &record.options) {
                ("netem", Some(options)) => Some(codec::decode(options)?),
                _ => None,
            };
            // Descriptive only (nothing is restored from it): a tbf whose options do
            // not decode is shown by kind, not an error for the whole dump.
            let tbf = match (&record.kind[..], &record.options) {
                ("tbf", Some(options)) => tbf::decode(options).ok(),
                _ => None,
            };
            Ok(QdiscView { record, netem, tbf })
        })
        .collect()
}

/// Replace-or-create a qdisc; ENOENT here means the kernel has no such qdisc kind (for a
/// root parent, the kind lookup is the only thing that can be missing).
pub(crate) async fn replace(
    handle: &Handle,
    ifindex: u32,
    record: &QdiscRecord,
) -> Result<(), QdiscError> {
    wire::change(
        handle,
        RouteNetlinkMessage::NewQueueDiscipline(tc_message(ifindex, record)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .await
    .map_err(|source| match source.errno {
        Some(libc_enoent) if libc_enoent == nix::errno::Errno::ENOENT as i32 => {
            QdiscError::KindNotSupported {
                kind: record.kind.clone(),
            }
        }
        _ => QdiscError::Netlink {
            operation: "qdisc replace",
            source,
        },
    })
}

/// The snapshot of `ifindex`, if its root can be replaced and later put back exactly.
pub(crate) async fn replaceable_snapshot(
    handle: &Handle,
    ifindex: u32,
) -> Result<QdiscSnapshot, QdiscError> {
    let before = snapshot(handle, ifindex).await?;
    // Replacing our own earlier root (a changed spec) is fine; otherwise the current root
    // must be restorable.
    if !before.root.is_ours()
        && let Some(reason) = before.not_restorable_reason()
    {
        return Err(QdiscError::NotRestorable { ifindex, reason });
    }
    Ok(before)
}

/// Installs a root qdisc of `kind` with raw `options` under our handle, after checking
/// that the current root can be restored exactly afterwards. Returns the snapshot taken
/// before the change: journal it, it is what [`restore`] needs.
pub async fn install_root(
    handle: &Handle,
    ifindex: u32,
    kind: &str,
    options: Option<Vec<u8>>,
) -> Result<QdiscSnapshot, QdiscError> {
    let before = replaceable_snapshot(handle, ifindex).await?;
    let ours = QdiscRecord {
        kind: kind.to_string(),
        handle: CHAOS_ROOT_HANDLE,
        parent: TC_H_ROOT,
        options,
    };
    replace(handle, ifindex, &ours).await?;
    Ok(before)
}

/// Installs netem as the root qdisc of `ifindex`. See [`install_root`].
pub async fn install_netem(
    handle: &Handle,
    ifindex: u32,
    spec: &NetemSpec,
) -> Result<QdiscSnapshot, QdiscError> {
    let options = codec::encode(spec)?;
    install_root(handle, ifindex, "netem", Some(options)).await
}

pub(crate) async fn delete(
    handle: &Handle,
    ifindex: u32,
    record: &QdiscRecord,
) -> Result<(), QdiscError> {
    wire::change(
        handle,
        RouteNetlinkMessage::DelQueueDiscipline(tc_message(ifindex, record)),
        0,
    )
    .await
    .map_err(netlink("qdisc delete"))
}

fn same_qdisc(a: &QdiscRecord, b: &QdiscRecord) -> bool {
    // The kernel re-creates its defaults itself (with default options): kind and parent
    // identify them; everything else must match byte for byte.
    if a.is_kernel_default() && b.is_kernel_default() {
        return a.kind == b.kind && a.parent == b.parent;
    }
    a == b
}

/// What a restore found on the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The interface has the recorded state again (put back now, or already there).
    Done,
    /// The interface no longer exists (deleted while the fault held, e.g. a veth whose
    /// other end went with its pod): whatever was installed on it went with it.
    InterfaceGone,
    /// What was ours is gone; something in its place that is not ours was left alone
    /// (described). Only ingress redirects report this.
    OthersLeftAlone(String),
}

/// Whether `ifindex` names a link of the handle's namespace.
pub(crate) async fn interface_exists(handle: &Handle, ifindex: u32) -> Result<bool, QdiscError> {
    crate::route::link_exists(handle, ifindex)
        .await
        .map_err(netlink("link get"))
}

/// Puts back the root (and a missing ingress/clsact) recorded in `snapshot`.
///
/// Idempotent: when the recorded root is already there, nothing changes (so a journal
/// replay after a crash is safe). Only a root carrying our handle is removed; any other
/// unexpected root is reported as [`QdiscError::ChangedByOthers`] and left alone. An
/// interface that no longer exists is [`Restored::InterfaceGone`], not an error: it can
/// never be restored, and nothing of ours is left on it.
pub async fn restore(handle: &Handle, snapshot: &QdiscSnapshot) -> Result<Restored, QdiscError> {
    match restore_present(handle, snapshot).await {
        Ok(()) => Ok(Restored::Done),
        // Asked only after a failure: the common path costs no extra request. An
        // interface deleted before or during the restore fails it (no root, ENODEV).
        Err(error) => match interface_exists(handle, snapshot.ifindex).await? {
            false => Ok(Restored::InterfaceGone),
            true => Err(error),
        },
    }
}

async fn restore_present(handle: &Handle, snapshot: &QdiscSnapshot) -> Result<(), QdiscError> {
    let ifindex = snapshot.ifindex;
    let current = roots(handle, ifindex).await?;
    if !same_qdisc(&current.root, &snapshot.root) {
        if !current.root.is_ours() {
            return Err(QdiscError::ChangedByOthers {
                ifindex,
                found_kind: current.root.kind.clone(),
                found_handle: current.root.handle,
            });
        }
        if snapshot.root.is_kernel_default() {
            delete(handle, ifindex, &current.root).await?;
        } else {
            replace(handle, ifindex, &snapshot.root).await?;
        }
    }
    if let Some(ingress) = &snapshot.ingress
        && current.ingress.is_none()
    {
        replace(handle, ifindex, ingress).await?;
    }
    let after = roots(handle, ifindex).await?;
    if !same_qdisc(&after.root, &snapshot.root) {
        return Err(QdiscError::RestoreMismatch {
            ifindex,
            expected: Box::new(snapshot.root.clone()),
            found: Box::new(after.root),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, handle: u32) -> QdiscRecord {
        QdiscRecord {
            kind: kind.into(),
            handle,
            parent: TC_H_ROOT,
            options: Some(vec![1, 2, 3, 4]),
        }
    }

    fn snapshot_with(root: QdiscRecord) -> QdiscSnapshot {
        QdiscSnapshot {
            ifindex: 3,
            root,
            ingress: None,
            child_qdiscs: vec![],
            user_classes: 0,
            root_filters: 0,
        }
    }

    #[test]
    fn default_root_is_always_restorable() {
        let mut snapshot = snapshot_with(record("noqueue", 0));
        snapshot.root_filters = 2;
        assert_eq!(snapshot.not_restorable_reason(), None);
    }

    #[test]
    fn user_tree_is_not_restorable() {
        let mut snapshot = snapshot_with(record("htb", 0x0001_0000));
        assert_eq!(snapshot.not_restorable_reason(), None);
        snapshot.user_classes = 2;
        assert!(snapshot.not_restorable_reason().is_some());
        let mut snapshot = snapshot_with(record("tbf", 0x0001_0000));
        snapshot.root_filters = 1;
        assert!(snapshot.not_restorable_reason().is_some());
    }

    #[test]
    fn tc_message_carries_raw_options_and_round_trips() {
        let ours = record("netem", CHAOS_ROOT_HANDLE);
        let message = tc_message(7, &ours);
        assert_eq!(message.header.index, 7);
        assert_eq!(record_of(&message), ours);
    }

    #[test]
    fn snapshot_serializes_for_the_journal() {
        let snapshot = snapshot_with(record("tbf", 0x0001_0000));
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: QdiscSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);
    }

    #[test]
    fn kernel_defaults_compare_by_kind() {
        let mut a = record("pfifo_fast", 0);
        let b = record("pfifo_fast", 0);
        a.options = Some(vec![9]);
        assert!(same_qdisc(&a, &b));
        assert!(!same_qdisc(
            &record("tbf", 0x10000),
            &record("tbf", 0x20000)
        ));
    }
}
