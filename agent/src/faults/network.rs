//! The network fault: netem as the root qdisc of a target's interface, inside the
//! target's network namespace, over rtnetlink (chaos-netem; no `tc` binary).
//!
//! - `prepare` finds each distinct namespace of the targets, the interface (named, or
//!   the one carrying the default route) and snapshots its qdiscs; it refuses an
//!   interface that already carries a fault of ours, or whose root could not be put
//!   back exactly. Nothing changes yet, and the snapshot goes into the journal before
//!   `apply` runs.
//! - `apply` installs netem on every interface, or on none (a failure restores the
//!   ones already done), then reads back what the kernel installed.
//! - `revert` (and `undo` after a crash) restores the snapshot. A namespace that no
//!   longer exists took its qdiscs with it: nothing is left to restore.
//!
//! Netlink work runs on a dedicated thread per call (`in_netns`), reached through
//! `spawn_blocking` so no tokio worker ever changes namespace or blocks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use chaos_netem::capabilities::{ModuleState, ModuleTree};
use chaos_netem::{Distribution, NetemSpec, NetnsId, QdiscError, QdiscSnapshot, QdiscView};
use chaos_proto::api;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::validate::NetworkPlan;

/// What to tell an operator whose kernel lacks netem.
pub const NETEM_MISSING_HINT: &str = "the kernel module sch_netem is not available on this node; \
     install the kernel's extra modules (Amazon Linux 2023: `dnf install kernel-modules-extra`, \
     Debian/Ubuntu: linux-modules-extra-$(uname -r)) and run `modprobe sch_netem`, or use a \
     kernel built with CONFIG_NET_SCH_NETEM";

/// A network namespace as the journal records it: the process it was found through
/// (pid + start time, so a reused pid is not mistaken for it) and its identity, which
/// finds it again through any other process or bind mount holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRef {
    pub pid: u32,
    pub start_time: u64,
    pub id: NetnsId,
}

/// One interface to put back: the journal's content for network faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscRestore {
    pub netns: NetnsRef,
    pub ifindex: u32,
    pub snapshot: QdiscSnapshot,
}

/// Interfaces (namespace, ifindex) that a fault of this agent holds, so that two
/// requests cannot stack netem on the same interface (the second would replace the
/// first's qdisc and the first's revert would remove the second's).
static CLAIMED: Mutex<Option<HashSet<(NetnsId, u32)>>> = Mutex::new(None);

/// Holds an interface for one fault; released when the fault is dropped.
#[derive(Debug)]
struct Claim {
    key: (NetnsId, u32),
}

impl Claim {
    fn take(key: (NetnsId, u32)) -> Option<Claim> {
        let inserted = CLAIMED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashSet::new)
            .insert(key);
        // Built only after the lock is released: a Claim that is dropped locks CLAIMED.
        inserted.then(|| Claim { key })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = CLAIMED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = claimed.as_mut() {
            set.remove(&self.key);
        }
    }
}

/// The netem parameters a request asks for, in the units chaos-netem uses.
pub fn netem_spec(request: &api::NetworkFault) -> NetemSpec {
    let distribution = match api::Distribution::try_from(request.distribution) {
        Ok(api::Distribution::Normal) => Some(Distribution::Normal),
        Ok(api::Distribution::Pareto) => Some(Distribution::Pareto),
        Ok(api::Distribution::Paretonormal) => Some(Distribution::ParetoNormal),
        // Uniform is the kernel's built-in jitter shape: no table.
        _ => None,
    };
    NetemSpec {
        delay_us: request.delay_us,
        jitter_us: request.jitter_us,
        delay_correlation_pct: request.delay_correlation,
        distribution,
        loss_pct: request.loss_percent,
        loss_correlation_pct: request.loss_correlation,
        duplicate_pct: request.duplicate_percent,
        corrupt_pct: request.corrupt_percent,
        reorder_pct: request.reorder_percent,
        // As tc does: reordering without a gap means every packet is a candidate.
        reorder_gap: if request.reorder_percent > 0.0 {
            request.reorder_gap.max(1)
        } else {
            0
        },
        rate_bytes_per_sec: request.rate_bytes_per_second,
        ..NetemSpec::default()
    }
}

/// Request options this agent does not implement yet; refused rather than ignored, so
/// a fault never does less than it says.
fn unimplemented_option(request: &api::NetworkFault) -> Option<&'static str> {
    if request.direction == api::Direction::Ingress as i32 {
        return Some("network.direction (ingress)");
    }
    if !request.destinations.is_empty() {
        return Some("network.destinations");
    }
    if !request.ports.is_empty() {
        return Some("network.ports");
    }
    if request.protocol != api::Protocol::Any as i32 {
        return Some("network.protocol");
    }
    if !request.exclude_destinations.is_empty() {
        return Some("network.exclude_destinations");
    }
    if !request.exclude_ports.is_empty() {
        return Some("network.exclude_ports");
    }
    None
}

/// Fails with what is missing when this kernel cannot run netem now.
pub fn require_netem(modules: &ModuleTree) -> Result<(), AgentError> {
    match modules.state("sch_netem") {
        Ok(ModuleState::BuiltIn | ModuleState::Loaded) => Ok(()),
        // Loadable: the kernel auto-loads qdisc modules on first use (request_module).
        // Unknown: no module index; it may be built in. The kernel's answer decides.
        Ok(ModuleState::Loadable { .. } | ModuleState::Unknown) => Ok(()),
        Ok(ModuleState::Missing) => Err(AgentError::FailedPrecondition(NETEM_MISSING_HINT.into())),
        Err(e) => Err(AgentError::FailedPrecondition(format!(
            "cannot tell whether this kernel has sch_netem ({e}); {NETEM_MISSING_HINT}"
        ))),
    }
}

fn qdisc_error(ifname: &str, err: QdiscError) -> AgentError {
    match err {
        QdiscError::KindNotSupported { .. } => AgentError::FailedPrecondition(format!(
            "interface {ifname}: the kernel refused netem: {NETEM_MISSING_HINT}"
        )),
        QdiscError::NotRestorable { .. } | QdiscError::ChangedByOthers { .. } => {
            AgentError::FailedPrecondition(format!("interface {ifname}: {err}"))
        }
        other => AgentError::Internal(format!("interface {ifname}: {other}")),
    }
}

/// Runs a netlink operation in the namespace at `path` on its own thread, from async code.
async fn in_netns_blocking<T, F, Fut>(path: PathBuf, operation: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(chaos_netem::Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    tokio::task::spawn_blocking(move || chaos_netem::in_netns(&path, operation))
        .await
        .map_err(|e| format!("netlink task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// What `prepare` learns about one interface, inside its namespace.
struct Inspected {
    ifindex: u32,
    ifname: String,
    snapshot: QdiscSnapshot,
}

async fn inspect(path: PathBuf, wanted: Option<String>) -> Result<Inspected, AgentError> {
    let result = in_netns_blocking(path.clone(), move |handle| async move {
        let links = chaos_netem::interfaces(&handle)
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        let ifindex = match &wanted {
            Some(name) => links
                .iter()
                .find(|(_, n)| n == name)
                .map(|(index, _)| *index)
                .ok_or_else(|| {
                    AgentError::FailedPrecondition(format!(
                        "the target's network namespace has no interface {name:?} (it has {})",
                        links
                            .iter()
                            .map(|(_, n)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
            None => chaos_netem::default_route_interface(&handle)
                .await
                .map_err(|e| {
                    AgentError::FailedPrecondition(format!(
                        "{e}: name the interface (network.interface)"
                    ))
                })?,
        };
        let ifname = links
            .iter()
            .find(|(index, _)| *index == ifindex)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| format!("ifindex {ifindex}"));
        let snapshot = chaos_netem::qdisc::snapshot(&handle, ifindex)
            .await
            .map_err(|e| qdisc_error(&ifname, e))?;
        Ok(Inspected {
            ifindex,
            ifname,
            snapshot,
        })
    })
    .await;
    result.map_err(|e| AgentError::FailedPrecondition(format!("{}: {e}", path.display())))?
}

/// One interface the fault acts on.
#[derive(Debug)]
struct InterfaceTarget {
    restore: QdiscRestore,
    /// Where the namespace was found at prepare time.
    path: PathBuf,
    ifname: String,
    installed: bool,
    _claim: Claim,
}

#[derive(Debug)]
pub struct NetworkFault {
    pub spec: NetemSpec,
    interfaces: Vec<InterfaceTarget>,
    status: api::NetworkStatus,
}

impl NetworkFault {
    /// Decides which interfaces, snapshots them, claims them. Changes nothing.
    pub async fn prepare(
        plan: &NetworkPlan,
        targets: &[Resolved],
        procfs: &Procfs,
        modules: &ModuleTree,
    ) -> Result<(NetworkFault, Vec<ProcessInfo>), AgentError> {
        let request = &plan.request;
        if let Some(field) = unimplemented_option(request) {
            return Err(AgentError::Unimplemented(format!(
                "{field} is not implemented by this agent yet: network faults apply to all egress traffic of the interface"
            )));
        }
        let spec = netem_spec(request);
        spec.validate()
            .map_err(|e| AgentError::invalid("network", e.to_string()))?;
        require_netem(modules)?;
        let wanted = (!request.interface.is_empty()).then(|| request.interface.clone());

        let mut seen = HashSet::new();
        let mut interfaces = Vec::new();
        let mut acts_on = Vec::new();
        for target in targets {
            let path = procfs.netns_path(target.init.pid);
            let id = chaos_netem::netns_id(&path).map_err(|e| {
                AgentError::FailedPrecondition(format!(
                    "cannot reach the network namespace of pid {}: {e}",
                    target.init.pid
                ))
            })?;
            if !seen.insert(id) {
                continue; // containers of one pod share the pod's namespace
            }
            let inspected = inspect(path.clone(), wanted.clone()).await?;
            let ifname = inspected.ifname;
            if inspected.snapshot.root.is_ours() {
                return Err(AgentError::FailedPrecondition(format!(
                    "interface {ifname} of {} already carries a network fault; combine the impairments in one request",
                    target.spec
                )));
            }
            if let Some(reason) = inspected.snapshot.not_restorable_reason() {
                return Err(AgentError::FailedPrecondition(format!(
                    "interface {ifname}: {reason}, which the agent could not restore exactly; refusing to replace it"
                )));
            }
            let claim = Claim::take((id, inspected.ifindex)).ok_or_else(|| {
                AgentError::FailedPrecondition(format!(
                    "interface {ifname} of {} is already being faulted by another request; combine the impairments in one request",
                    target.spec
                ))
            })?;
            interfaces.push(InterfaceTarget {
                restore: QdiscRestore {
                    netns: NetnsRef {
                        pid: target.init.pid,
                        start_time: target.init.start_time,
                        id,
                    },
                    ifindex: inspected.ifindex,
                    snapshot: inspected.snapshot,
                },
                path,
                ifname,
                installed: false,
                _claim: claim,
            });
            acts_on.push(target.init.clone());
        }
        if interfaces.is_empty() {
            return Err(AgentError::FailedPrecondition(
                "the target resolved to no network namespace".into(),
            ));
        }
        let status = api::NetworkStatus {
            interface: interface_names(&interfaces),
            installed: String::new(),
        };
        Ok((
            NetworkFault {
                spec,
                interfaces,
                status,
            },
            acts_on,
        ))
    }

    /// Installs netem on every interface or on none.
    pub async fn apply(&mut self) -> Result<(), AgentError> {
        for index in 0..self.interfaces.len() {
            if let Err(err) = self.install(index).await {
                if let Err(rollback) = self.revert().await {
                    tracing::error!(error = %rollback, "rollback of a partly applied network fault failed");
                    return Err(AgentError::Internal(format!(
                        "{err}; rolling back the interfaces already changed failed too: {rollback}"
                    )));
                }
                return Err(err);
            }
        }
        self.read_back().await;
        Ok(())
    }

    async fn install(&mut self, index: usize) -> Result<(), AgentError> {
        let target = &mut self.interfaces[index];
        let (ifindex, ifname, spec) = (
            target.restore.ifindex,
            target.ifname.clone(),
            self.spec.clone(),
        );
        let name = ifname.clone();
        let before = in_netns_blocking(target.path.clone(), move |handle| async move {
            chaos_netem::qdisc::install_netem(&handle, ifindex, &spec)
                .await
                .map_err(|e| qdisc_error(&name, e))
        })
        .await
        .map_err(|e| AgentError::FailedPrecondition(format!("interface {ifname}: {e}")))??;
        target.installed = true;
        // The state right before our change is what must come back; if someone changed
        // the interface since prepare, the journal is rewritten with this (see registry).
        target.restore.snapshot = before;
        Ok(())
    }

    /// Reads what the kernel has now into the status (`installed`).
    pub async fn read_back(&mut self) {
        let mut described = Vec::new();
        for target in &self.interfaces {
            let ifindex = target.restore.ifindex;
            let dump = in_netns_blocking(target.path.clone(), move |handle| async move {
                chaos_netem::qdisc::dump(&handle, ifindex).await
            })
            .await;
            let text = match dump {
                Ok(Ok(views)) => describe_root(&views),
                Ok(Err(e)) => format!("dump failed: {e}"),
                Err(e) => format!("dump failed: {e}"),
            };
            described.push(if self.interfaces.len() == 1 {
                text
            } else {
                format!("{}: {text}", target.ifname)
            });
        }
        self.status.installed = described.join("; ");
    }

    /// Restores every interface this fault changed. A namespace that is gone took the
    /// qdisc with it and counts as restored.
    pub async fn revert(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        for target in self.interfaces.iter_mut().filter(|t| t.installed) {
            let restore = target.restore.clone();
            let prepared_path = target.path.clone();
            let result = tokio::task::spawn_blocking(move || {
                restore_interface(&restore, Some(&prepared_path), Path::new("/proc"))
            })
            .await
            .map_err(|e| format!("restore task failed: {e}"))
            .and_then(|r| r);
            match result {
                Ok(()) => target.installed = false,
                Err(e) => errors.push(format!("{}: {e}", target.ifname)),
            }
        }
        if errors.is_empty() {
            self.status.installed = "restored".into();
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    pub fn restores(&self) -> Vec<QdiscRestore> {
        self.interfaces.iter().map(|t| t.restore.clone()).collect()
    }

    pub fn status(&self) -> api::NetworkStatus {
        self.status.clone()
    }
}

fn interface_names(interfaces: &[InterfaceTarget]) -> String {
    interfaces
        .iter()
        .map(|t| t.ifname.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The namespace of `netns` if it still exists: the path used before when it still
/// names the same namespace, else any process or bind mount holding it.
fn locate(netns: &NetnsRef, known: Option<&Path>, proc_root: &Path) -> Option<PathBuf> {
    let candidates = known
        .map(Path::to_path_buf)
        .into_iter()
        .chain(std::iter::once(
            proc_root.join(netns.pid.to_string()).join("ns/net"),
        ));
    for path in candidates {
        if chaos_netem::netns_id(&path).is_ok_and(|id| id == netns.id) {
            return Some(path);
        }
    }
    chaos_netem::find_netns(netns.id, proc_root)
}

/// Puts one interface back (blocking: runs netlink on its own thread). Used by revert
/// and by the journal replay at start.
pub fn restore_interface(
    restore: &QdiscRestore,
    known: Option<&Path>,
    proc_root: &Path,
) -> Result<(), String> {
    let Some(path) = locate(&restore.netns, known, proc_root) else {
        tracing::info!(
            pid = restore.netns.pid,
            "network namespace is gone: nothing to restore"
        );
        return Ok(());
    };
    let snapshot = restore.snapshot.clone();
    chaos_netem::in_netns(&path, move |handle| async move {
        chaos_netem::qdisc::restore(&handle, &snapshot).await
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// The root qdisc in words, like `tc qdisc show` prints it.
pub fn describe_root(views: &[QdiscView]) -> String {
    let Some(root) = views
        .iter()
        .find(|v| v.record.parent == chaos_netem::qdisc::TC_H_ROOT)
    else {
        return "no root qdisc".into();
    };
    let handle = format!("{:x}:", root.record.handle >> 16);
    match &root.netem {
        Some(netem) => format!("netem {handle} {}", describe_netem(&netem.spec)),
        None => format!("{} {handle}", root.record.kind),
    }
}

fn describe_netem(spec: &NetemSpec) -> String {
    let mut parts = vec![format!("limit {}", spec.limit_packets)];
    let ms = |us: u64| format!("{}ms", us as f64 / 1000.0);
    if spec.delay_us > 0 {
        let mut delay = format!("delay {}", ms(spec.delay_us));
        if spec.jitter_us > 0 {
            delay += &format!(" {}", ms(spec.jitter_us));
        }
        if spec.delay_correlation_pct > 0.0 {
            delay += &format!(" {:.4}%", spec.delay_correlation_pct);
        }
        parts.push(delay);
    }
    if let Some(distribution) = spec.distribution {
        parts.push(format!("distribution {distribution:?}").to_lowercase());
    }
    let percent = |name: &str, pct: f64, corr: f64| {
        if corr > 0.0 {
            format!("{name} {pct:.4}% {corr:.4}%")
        } else {
            format!("{name} {pct:.4}%")
        }
    };
    if spec.loss_pct > 0.0 {
        parts.push(percent("loss", spec.loss_pct, spec.loss_correlation_pct));
    }
    if spec.duplicate_pct > 0.0 {
        parts.push(percent(
            "duplicate",
            spec.duplicate_pct,
            spec.duplicate_correlation_pct,
        ));
    }
    if spec.reorder_pct > 0.0 {
        parts.push(format!(
            "{} gap {}",
            percent("reorder", spec.reorder_pct, spec.reorder_correlation_pct),
            spec.reorder_gap
        ));
    }
    if spec.corrupt_pct > 0.0 {
        parts.push(percent(
            "corrupt",
            spec.corrupt_pct,
            spec.corrupt_correlation_pct,
        ));
    }
    if spec.rate_bytes_per_sec > 0 {
        parts.push(format!("rate {}bit", spec.rate_bytes_per_sec * 8));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> api::NetworkFault {
        api::NetworkFault {
            delay_us: 100_000,
            jitter_us: 10_000,
            distribution: api::Distribution::Normal as i32,
            loss_percent: 5.0,
            reorder_percent: 25.0,
            ..Default::default()
        }
    }

    #[test]
    fn the_request_maps_onto_a_netem_spec() {
        let spec = netem_spec(&request());
        assert_eq!(spec.delay_us, 100_000);
        assert_eq!(spec.jitter_us, 10_000);
        assert_eq!(spec.distribution, Some(Distribution::Normal));
        assert_eq!(spec.loss_pct, 5.0);
        // tc's rule: a reorder without gap reorders any packet (gap 1).
        assert_eq!(spec.reorder_gap, 1);
        assert_eq!(
            spec.limit_packets,
            chaos_netem::codec::DEFAULT_LIMIT_PACKETS
        );
        assert!(spec.validate().is_ok());
        let uniform = api::NetworkFault {
            distribution: api::Distribution::Uniform as i32,
            ..request()
        };
        assert_eq!(netem_spec(&uniform).distribution, None);
    }

    #[test]
    fn targeting_options_are_refused_by_name_until_implemented() {
        assert_eq!(unimplemented_option(&request()), None);
        let to = api::NetworkFault {
            destinations: vec!["10.0.0.0/8".into()],
            ..request()
        };
        assert_eq!(unimplemented_option(&to), Some("network.destinations"));
        let ingress = api::NetworkFault {
            direction: api::Direction::Ingress as i32,
            ..request()
        };
        assert_eq!(
            unimplemented_option(&ingress),
            Some("network.direction (ingress)")
        );
    }

    fn module_tree(builtin: &str, dep: &str) -> (tempfile::TempDir, ModuleTree) {
        let dir = tempfile::tempdir().unwrap();
        let tree = ModuleTree {
            sys_module_dir: dir.path().join("sys"),
            lib_modules_dir: dir.path().join("lib"),
        };
        std::fs::create_dir_all(&tree.sys_module_dir).unwrap();
        std::fs::create_dir_all(&tree.lib_modules_dir).unwrap();
        std::fs::write(tree.lib_modules_dir.join("modules.builtin"), builtin).unwrap();
        std::fs::write(tree.lib_modules_dir.join("modules.dep"), dep).unwrap();
        (dir, tree)
    }

    #[test]
    fn a_kernel_without_netem_is_a_failed_precondition_with_the_fix() {
        let (_dir, tree) = module_tree("kernel/net/sched/sch_tbf.ko\n", "");
        match require_netem(&tree) {
            Err(AgentError::FailedPrecondition(message)) => {
                assert!(message.contains("sch_netem"), "{message}");
                assert!(message.contains("kernel-modules-extra"), "{message}");
            }
            other => panic!("expected FailedPrecondition, got {other:?}"),
        }
        let (_dir, tree) = module_tree("", "kernel/net/sched/sch_netem.ko.xz:\n");
        assert_eq!(require_netem(&tree), Ok(()));
    }

    #[test]
    fn claims_are_exclusive_and_released_on_drop() {
        let key = (NetnsId { dev: 7, ino: 99 }, 3);
        let first = Claim::take(key).unwrap();
        assert!(Claim::take(key).is_none());
        drop(first);
        assert!(Claim::take(key).is_some());
    }

    #[test]
    fn a_gone_namespace_is_nothing_to_restore() {
        let restore = QdiscRestore {
            netns: NetnsRef {
                pid: u32::MAX,
                start_time: 1,
                id: NetnsId { dev: 1, ino: 1 },
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
        };
        assert_eq!(
            restore_interface(&restore, None, Path::new("/proc")),
            Ok(())
        );
    }

    #[test]
    fn describes_netem_like_tc() {
        let spec = NetemSpec {
            delay_us: 100_000,
            jitter_us: 10_000,
            loss_pct: 5.0,
            ..NetemSpec::default()
        };
        assert_eq!(
            describe_netem(&spec),
            "limit 1000 delay 100ms 10ms loss 5.0000%"
        );
    }
}
