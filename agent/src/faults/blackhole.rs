//! The blackhole kind: every matching packet dropped (netem loss 100 %), on the same
//! netlink machinery, journal form and restore path as the network kind
//! (`network`), so no extra kernel module is involved. Its own kind for lists,
//! metrics and permissions.

use chaos_proto::api;

use crate::error::AgentError;
use crate::faults::network::{self, CAPABILITIES};
use crate::faults::{KindInfo, PrepareContext, Prepared};
use crate::resolve::Resolved;
use crate::validate::BlackholePlan;

pub const KIND: KindInfo = KindInfo {
    kind: api::FaultKind::Blackhole,
    capabilities: CAPABILITIES,
    replay: network::replay,
    node_lacks: crate::faults::lacks_nothing,
};

/// Decides the interfaces and snapshots them; changes nothing.
pub async fn prepare(
    plan: &BlackholePlan,
    targets: &[Resolved],
    context: &PrepareContext<'_>,
) -> Result<Prepared, AgentError> {
    let request = network::blackhole_request(plan);
    let (fault, acts_on) = network::prepare_request(request, targets, context).await?;
    Ok(Prepared {
        plan_summary: fault.summary("drop"),
        acts_on,
        fault: Box::new(fault),
    })
}
