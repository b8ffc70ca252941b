//! Whether this kernel has the modules a request needs, told before anything changes.

use chaos_netem::Impairment;
use chaos_netem::capabilities::{ModuleState, ModuleTree};

use super::NetworkRequest;
use crate::error::AgentError;

/// What to tell an operator whose kernel lacks netem.
pub const NETEM_MISSING_HINT: &str = "the kernel module sch_netem is not available on this node; \
     install the kernel's extra modules (Amazon Linux 2023: `dnf install kernel-modules-extra`, \
     Debian/Ubuntu: linux-modules-extra-$(uname -r)) and run `modprobe sch_netem`, or use a \
     kernel built with CONFIG_NET_SCH_NETEM";

/// Fails with what is missing when this kernel cannot run netem now.
pub fn require_netem(modules: &ModuleTree) -> Result<(), AgentError> {
    // The common case, answered without reading the module index on every request.
    if modules.is_loaded("sch_netem") {
        return Ok(());
    }
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

/// Fails naming the first module this request needs that the kernel does not have.
/// Modules the index cannot tell about (or that are loadable) pass: the kernel's answer
/// decides, and a refusal there undoes every step.
pub fn require_modules(modules: &ModuleTree, request: &NetworkRequest) -> Result<(), AgentError> {
    if let Impairment::Netem(_) = request.impairment {
        require_netem(modules)?;
    }
    for module in request.required_modules() {
        if modules.is_loaded(module) {
            continue;
        }
        if let Ok(ModuleState::Missing) = modules.state(module) {
            return Err(AgentError::FailedPrecondition(format!(
                "the kernel module {module} is not available on this node, and this request needs it ({}); \
                 install the kernel's extra modules and run `modprobe {module}`",
                module_purpose(module)
            )));
        }
    }
    Ok(())
}

fn module_purpose(module: &str) -> &'static str {
    match module {
        "sch_prio" | "cls_u32" => "targeting by destination, port or protocol",
        "sch_ingress" | "ifb" | "act_mirred" => "the ingress direction",
        "sch_tbf" => "a bandwidth limit",
        _ => "netem",
    }
}

#[cfg(test)]
mod tests {
    use chaos_proto::api;

    use super::*;
    use crate::faults::network::network_request;
    use crate::faults::network::plan::tests::request;
    use crate::validate::{NetworkPlan, NodeNetworkPolicy};

    #[test]
    fn a_bandwidth_limit_needs_tbf_and_not_netem() {
        // A kernel like the build host's: tbf built in, no netem anywhere.
        let (_dir, tree) = module_tree("kernel/net/sched/sch_tbf.ko\n", "");
        let plan = |request: api::NetworkFault| NetworkPlan {
            request,
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        let rate_only = network_request(&plan(api::NetworkFault {
            rate_bytes_per_second: 125_000,
            ..Default::default()
        }));
        assert_eq!(rate_only.required_modules(), vec!["sch_tbf"]);
        assert_eq!(require_modules(&tree, &rate_only), Ok(()));
        let delayed = network_request(&plan(api::NetworkFault {
            delay_us: 1_000,
            rate_bytes_per_second: 125_000,
            ..Default::default()
        }));
        assert!(matches!(
            require_modules(&tree, &delayed),
            Err(AgentError::FailedPrecondition(message)) if message.contains("sch_netem")
        ));
        // Without tbf either, the limit names what it misses.
        let (_dir, bare) = module_tree("", "");
        match require_modules(&bare, &rate_only) {
            Err(AgentError::FailedPrecondition(message)) => {
                assert!(
                    message.contains("sch_tbf") && message.contains("bandwidth"),
                    "{message}"
                )
            }
            other => panic!("expected FailedPrecondition, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_prio_is_named_before_anything_changes() {
        let (_dir, tree) = module_tree(
            "",
            "kernel/net/sched/sch_netem.ko:\nkernel/net/sched/cls_u32.ko:\n",
        );
        let plan = NetworkPlan {
            request: api::NetworkFault {
                ports: vec![80],
                ..request()
            },
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        match require_modules(&tree, &network_request(&plan)) {
            Err(AgentError::FailedPrecondition(message)) => {
                assert!(message.contains("sch_prio"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            require_modules(
                &tree,
                &network_request(&NetworkPlan {
                    request: request(),
                    destinations: vec![],
                    exclude_destinations: vec![],
                    node: NodeNetworkPolicy::default(),
                })
            ),
            Ok(())
        );
    }

    #[test]
    fn loaded_modules_pass_without_reading_the_module_index() {
        let (_dir, tree) = module_tree("", "");
        for module in ["sch_netem", "sch_prio", "cls_u32"] {
            std::fs::create_dir(tree.sys_module_dir.join(module)).unwrap();
        }
        // An index that cannot be read: require_netem fails if it has to consult it.
        std::fs::remove_file(tree.lib_modules_dir.join("modules.builtin")).unwrap();
        std::fs::create_dir(tree.lib_modules_dir.join("modules.builtin")).unwrap();
        let targeted = NetworkPlan {
            request: api::NetworkFault {
                ports: vec![80],
                ..request()
            },
            destinations: vec![],
            exclude_destinations: vec![],
            node: NodeNetworkPolicy::default(),
        };
        assert_eq!(require_modules(&tree, &network_request(&targeted)), Ok(()));
        // The same tree with netem not loaded consults the index, which fails.
        std::fs::remove_dir(tree.sys_module_dir.join("sch_netem")).unwrap();
        assert!(matches!(
            require_netem(&tree),
            Err(AgentError::FailedPrecondition(message)) if message.contains("cannot tell")
        ));
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
}
