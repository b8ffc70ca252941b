//! Putting an interface back after a network fault: finding the fault's namespace again
//! (by its nsfs inode, confirmed by its cookie) and restoring what the journal recorded,
//! from a revert or from the journal replay at start.

use std::path::Path;

use chaos_netem::{NetnsHandle, OpenNetns, Restored};

use super::{NetnsRef, QdiscRestore};

/// What a revert found on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reverted {
    /// Put back as it was before the fault.
    Restored,
    /// The interface no longer exists (a veth deleted while the fault held): what was
    /// installed on it went with it.
    InterfaceGone,
    /// The namespace no longer exists, with everything in it (why we know).
    NamespaceGone(String),
    /// What was ours is gone; something in its place that is not ours was left alone.
    OthersLeftAlone(String),
}

impl From<Restored> for Reverted {
    fn from(restored: Restored) -> Reverted {
        match restored {
            Restored::Done => Reverted::Restored,
            Restored::InterfaceGone => Reverted::InterfaceGone,
            Restored::OthersLeftAlone(what) => Reverted::OthersLeftAlone(what),
        }
    }
}

impl Reverted {
    pub fn describe(&self) -> String {
        match self {
            Reverted::Restored => "restored".into(),
            Reverted::InterfaceGone => "the interface is gone: nothing to restore".into(),
            Reverted::NamespaceGone(why) => {
                format!("the network namespace is gone ({why}): nothing to restore")
            }
            Reverted::OthersLeftAlone(what) => format!("left alone, not ours: {what}"),
        }
    }
}

/// Where a recorded namespace stands now.
pub(super) enum Located {
    /// A socket in it, made through the descriptor whose identity was checked.
    Here(NetnsHandle),
    /// It no longer exists (why).
    Gone(String),
}

/// The namespace of `netns` if it still exists: the path used before or the recorded
/// process when they still lead to its inode, else any process or bind mount holding
/// that inode. The inode only locates: a namespace found there whose cookie is not the
/// recorded one is a newer namespace that got the number, and the recorded one is gone.
pub(super) async fn locate(
    netns: &NetnsRef,
    known: Option<&Path>,
    proc_root: &Path,
) -> Result<Located, String> {
    let by_process = known
        .map(Path::to_path_buf)
        .into_iter()
        .chain(std::iter::once(
            proc_root.join(netns.pid.to_string()).join("ns/net"),
        ))
        .filter_map(|path| OpenNetns::open(&path).ok())
        .find(|open| open.id() == netns.id);
    let Some(open) = by_process.or_else(|| chaos_netem::find_netns(netns.id, proc_root)) else {
        return Ok(Located::Gone(
            "no process or mount holds it any more".into(),
        ));
    };
    let handle = NetnsHandle::open_in(&open)
        .await
        .map_err(|e| e.to_string())?;
    Ok(match (netns.cookie, handle.cookie()) {
        (Some(recorded), Some(found)) if recorded != found => Located::Gone(format!(
            "its inode {} now belongs to another namespace (cookie {found}, the fault's was {recorded})",
            netns.id.ino
        )),
        // Never happens on one kernel; an unverifiable namespace is not acted on.
        (Some(_), None) => Located::Gone(format!(
            "the namespace at its inode {} has no cookie to compare",
            netns.id.ino
        )),
        _ => Located::Here(handle),
    })
}

/// Puts one interface back through `handle`, a socket in its namespace: removes the
/// redirect and the ifb of an ingress fault (whose root was never touched), or restores
/// the root and ingress qdiscs from the snapshot.
pub(super) async fn restore_with(
    handle: &chaos_netem::Handle,
    restore: &QdiscRestore,
) -> Result<Restored, String> {
    match &restore.ingress {
        Some(redirect) => chaos_netem::ingress::remove(handle, restore.ifindex, redirect)
            .await
            .map_err(|e| e.to_string()),
        None => chaos_netem::qdisc::restore(handle, &restore.snapshot)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Revert: finds the namespace again and puts the interface back from the agent's
/// runtime. Logs what it found when that was not a plain restore.
pub(super) async fn restore_interface_async(
    restore: &QdiscRestore,
    known: Option<&Path>,
    proc_root: &Path,
) -> Result<Reverted, String> {
    let started = std::time::Instant::now();
    let mut netlink = match locate(&restore.netns, known, proc_root).await? {
        Located::Here(netlink) => netlink,
        Located::Gone(why) => {
            tracing::info!(
                pid = restore.netns.pid,
                ino = restore.netns.id.ino,
                why,
                "network namespace is gone: nothing to restore"
            );
            return Ok(Reverted::NamespaceGone(why));
        }
    };
    let opened_at = started.elapsed();
    let reverted: Reverted = netlink
        .run(async |handle| restore_with(handle, restore).await)
        .await
        .map_err(|e| e.to_string())??
        .into();
    tracing::debug!(
        open_us = opened_at.as_micros() as u64,
        restore_us = (started.elapsed() - opened_at).as_micros() as u64,
        "network revert phases"
    );
    match &reverted {
        Reverted::Restored | Reverted::NamespaceGone(_) => {}
        Reverted::InterfaceGone => tracing::info!(
            pid = restore.netns.pid,
            ifindex = restore.ifindex,
            "network interface is gone: nothing to restore"
        ),
        Reverted::OthersLeftAlone(what) => tracing::warn!(
            pid = restore.netns.pid,
            ifindex = restore.ifindex,
            what,
            "network revert left what is not ours alone"
        ),
    }
    Ok(reverted)
}

/// The journal replay at start (blocking: the netlink work runs on a thread of its own
/// with its own runtime, as the caller may itself be inside a runtime).
pub fn restore_interface(
    restore: &QdiscRestore,
    known: Option<&Path>,
    proc_root: &Path,
) -> Result<(), String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                    .map_err(|e| format!("cannot start the netlink runtime: {e}"))?;
                runtime
                    .block_on(restore_interface_async(restore, known, proc_root))
                    .map(|_| ())
            })
            .join()
            .map_err(|_| "the network restore thread panicked".to_string())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_netem::{NetnsId, QdiscSnapshot};

    #[test]
    fn a_gone_namespace_is_nothing_to_restore() {
        let restore = QdiscRestore {
            netns: NetnsRef {
                pid: u32::MAX,
                start_time: 1,
                id: NetnsId { dev: 1, ino: 1 },
                cookie: Some(5),
            },
            ifindex: 2,
            snapshot: QdiscSnapshot {
                ifindex: 2,
                root: chaos_netem::QdiscRecord {
                    kind: "noqueue".into(),
                    handle: 0,
                    parent: chaos_netem::qdisc::TC_H_ROOT,
                    options: None,
                },
                ingress: None,
                child_qdiscs: vec![],
                user_classes: 0,
                root_filters: 0,
            },
            ingress: None,
        };
        assert_eq!(
            restore_interface(&restore, None, Path::new("/proc")),
            Ok(())
        );
    }
}
