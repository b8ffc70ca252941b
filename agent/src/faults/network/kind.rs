//! The network kind (netem or tbf on the targets' interfaces) as the agent holds it, and
//! what the network and blackhole kinds share: the netlink machinery of this module, the
//! journal form (the snapshots to put back) and its replay.

use chaos_netem::capabilities::ModuleTree;
use chaos_proto::api;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{NetworkFault, NetworkRequest, QdiscRestore, network_request, restore_interface};
use crate::capabilities::Capability;
use crate::error::AgentError;
use crate::faults::{Fault, KindInfo, PrepareContext, Prepared};
use crate::journal::UndoRecord;
use crate::procfs::{ProcessInfo, Procfs};
use crate::resolve::Resolved;
use crate::validate::NetworkPlan;

/// What the network and blackhole kinds need beyond uid 0.
pub const CAPABILITIES: &[(Capability, &str)] = &[
    (
        Capability::SysPtrace,
        "to open the target's /proc/PID/ns/net (its process holds capabilities the agent does not)",
    ),
    (
        Capability::SysAdmin,
        "to enter the target's network namespace (setns)",
    ),
    (
        Capability::NetAdmin,
        "to install qdiscs and filters and create ifb devices in the target's network namespace",
    ),
];

pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::Network,
    capabilities: CAPABILITIES,
    replay,
    node_lacks: crate::faults::lacks_nothing,
};

/// Decides the interfaces and snapshots them (the snapshots go into the journal before
/// apply changes anything).
pub async fn prepare(
    plan: &NetworkPlan,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let (fault, acts_on) = prepare_request(network_request(plan), targets, context).await?;
    let action = format!("install {}", fault.request.impairment.kind());
    Ok(Prepared {
        plan_summary: fault.summary(&action),
        acts_on,
        fault: Box::new(fault),
    })
}

/// The network and blackhole faults: the same netlink machinery on the host's modules.
pub async fn prepare_request(
    request: NetworkRequest,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<(NetworkFault, Vec<ProcessInfo>), AgentError> {
    let modules = ModuleTree::host();
    NetworkFault::prepare(
        request,
        targets,
        &context.resolver.procfs,
        context.resolver.node_pid,
        &modules,
    )
    .await
}

/// The journal form of both kinds: the interfaces to put back. Tagged as every undo form
/// is (see `journal::UndoRecord`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum NetworkUndo {
    RestoreQdisc { interfaces: Vec<QdiscRestore> },
}

/// Puts back every interface a journal record lists, after a crash.
pub fn replay(procfs: &Procfs, record: &UndoRecord) -> Result<(), String> {
    let NetworkUndo::RestoreQdisc { interfaces } = record.read()?;
    let errors: Vec<String> = interfaces
        .iter()
        .filter_map(|i| restore_interface(i, None, procfs.root()).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

impl Fault for NetworkFault {
    fn kind(&self) -> api::FaultKind {
        self.request.kind
    }

    fn apply<'a>(
        &'a mut self,
        _procfs: &'a Procfs,
        _acts_on: &'a [ProcessInfo],
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        // The inherent `apply` (it takes precedence over this trait method).
        Box::pin(self.apply())
    }

    fn holds_changes(&self) -> bool {
        self.holds_changes()
    }

    fn revert<'a>(&'a mut self, _procfs: &'a Procfs) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.revert())
    }

    fn undo(&self) -> UndoRecord {
        UndoRecord::of(&NetworkUndo::RestoreQdisc {
            interfaces: self.restores(),
        })
    }

    /// The API has no blackhole status of its own: what is installed is the same.
    fn status(&self) -> api::fault::Status {
        api::fault::Status::Network(self.status())
    }
}
