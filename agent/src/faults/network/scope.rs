//! Whose network namespace a network fault would act in: a pod's, the node's (PID 1's,
//! where a fault acts on the whole node), or the agent's own. The decision is pure
//! ([`netns_scope`]); opening the node's namespace is the thin part.

use chaos_netem::{NetnsId, OpenNetns};

use crate::error::AgentError;
use crate::procfs::{ProcessInfo, Procfs};
use crate::validate::NodeNetworkPolicy;

/// Where a namespace the fault would act in stands, decided in [`netns_scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsScope {
    /// A pod's own namespace: the fault reaches that pod only.
    Pod,
    /// The node's namespace: the fault acts on the node's own interfaces.
    Node,
}

/// Decides the scope of `target`, a namespace the fault would act in, from its identity
/// and those of the node's (PID 1's) and the agent's own namespaces. The three are open
/// while this is asked, so equal identities are the same namespace. Pure.
///
/// The node's namespace is node scope whatever the target form (a hostNetwork pod, a
/// process of the node, `pid:` or `cgroup:` of one): refused unless the agent permits it.
/// The agent's own namespace, when it is not the node's (the agent in a pod of its
/// own), is refused: a fault there would cut the agent off from its controller.
pub fn netns_scope(
    target: NetnsId,
    node: NetnsId,
    agent: NetnsId,
    policy: NodeNetworkPolicy,
    label: &str,
) -> Result<NetnsScope, AgentError> {
    if target == node {
        return if policy.allowed {
            Ok(NetnsScope::Node)
        } else {
            Err(AgentError::PermissionDenied(format!(
                "{label} shares the node's network namespace (a hostNetwork pod or a process of \
                 the node): a network fault there acts on the whole node; start the agent with \
                 --allow-node-scope to permit it"
            )))
        };
    }
    if target == agent {
        return Err(AgentError::PermissionDenied(format!(
            "{label} is in the agent's own network namespace: a network fault there would cut \
             the agent off from its controller, and is never permitted"
        )));
    }
    Ok(NetnsScope::Pod)
}

/// The node's network namespace, opened, and the process it was found through: PID 1
/// (the agent runs with hostPID). Where PID 1 is more privileged than the agent (a
/// sandbox's init holding capabilities the agent lacks, as on the build machine), the
/// kernel refuses to open its namespace; kthreadd (PID 2), a kernel thread and so always
/// in the initial namespace, where a node's init is, stands in then.
pub(crate) fn open_node_netns(procfs: &Procfs) -> Result<(OpenNetns, ProcessInfo), AgentError> {
    let through = |pid: u32| -> Result<(OpenNetns, ProcessInfo), String> {
        let process = procfs.process(pid).map_err(|e| e.to_string())?;
        let netns = OpenNetns::open(&procfs.netns_path(pid)).map_err(|e| e.to_string())?;
        Ok((netns, process))
    };
    let init_error = match through(1) {
        Ok(found) => return Ok(found),
        Err(e) => e,
    };
    match through(2) {
        Ok((netns, process)) if process.comm == "kthreadd" && process.ppid == 0 => {
            Ok((netns, process))
        }
        Ok((_, process)) => Err(AgentError::FailedPrecondition(format!(
            "cannot open the node's network namespace through PID 1 ({init_error}), and PID 2 is {}, not kthreadd: the agent needs hostPID",
            process.comm
        ))),
        Err(e) => Err(AgentError::FailedPrecondition(format!(
            "cannot open the node's network namespace through PID 1 ({init_error}) or kthreadd ({e}): the agent needs hostPID"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_namespace_is_node_scope_whatever_the_target_and_needs_the_flag() {
        let id = |ino| NetnsId { dev: 4, ino };
        let (node, agent, pod) = (id(1), id(2), id(3));
        let refused = NodeNetworkPolicy {
            allowed: false,
            agent_port: 7090,
        };
        let allowed = NodeNetworkPolicy {
            allowed: true,
            ..refused
        };
        assert_eq!(
            netns_scope(pod, node, agent, refused, "pod:a/b/c"),
            Ok(NetnsScope::Pod)
        );
        match netns_scope(node, node, agent, refused, "pid:42") {
            Err(AgentError::PermissionDenied(message)) => {
                assert!(message.starts_with("pid:42 shares the node's network namespace"));
                assert!(message.contains("hostNetwork pod or a process of the node"));
                assert!(message.contains("--allow-node-scope"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            netns_scope(node, node, agent, allowed, "pid:42"),
            Ok(NetnsScope::Node)
        );
        // The agent's own namespace (not the node's) is refused even with the flag.
        for policy in [refused, allowed] {
            assert!(matches!(
                netns_scope(agent, node, agent, policy, "pid:7"),
                Err(AgentError::PermissionDenied(message)) if message.contains("agent's own")
            ));
        }
        // An agent in the node's namespace (hostNetwork): the node rule decides.
        assert_eq!(
            netns_scope(node, node, node, allowed, "pid:42"),
            Ok(NetnsScope::Node)
        );
    }
}
