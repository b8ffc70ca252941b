//! Whose network namespace a network fault would act in: a pod's, the node's (PID 1's,
//! where a fault acts on the whole node), or the agent's own. The decision is pure
//! ([`netns_scope`]); opening the node's namespace is the thin part.

use chaos_netem::NetnsId;

use crate::error::AgentError;
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
