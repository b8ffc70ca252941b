//! What this node offers: kernel, cgroup layout, qdisc modules, runtime. Gathered
//! once at start (modules) and on request (runtime reachability).

use chaos_cgroup::{CgroupLayout, CgroupVersion};
use chaos_netem::capabilities::{ModuleState, ModuleTree};
use chaos_proto::api;

use crate::runtime::Containerd;

/// The traffic-control modules network faults need: (name in the API, kernel module).
pub const QDISC_MODULES: &[(&str, &str)] = &[
    ("netem", "sch_netem"),
    ("prio", "sch_prio"),
    ("u32", "cls_u32"),
    ("ingress", "sch_ingress"),
    ("ifb", "ifb"),
    ("mirred", "act_mirred"),
    ("htb", "sch_htb"),
    ("tbf", "sch_tbf"),
];

/// A module state as the API reports it: (usable, detail).
pub fn describe_module(state: &ModuleState) -> (bool, String) {
    match state {
        ModuleState::BuiltIn => (true, "builtin".into()),
        ModuleState::Loaded => (true, "loaded".into()),
        // The kernel loads qdisc modules on first use; the agent also tries at start.
        ModuleState::Loadable { .. } => (true, "module (loadable)".into()),
        ModuleState::Missing => (false, "missing".into()),
        ModuleState::Unknown => (
            false,
            "unknown (not loaded, and no module index for this kernel)".into(),
        ),
    }
}

/// Tries to load every traffic-control module that is not available yet, so that the
/// first network fault does not depend on auto-loading. Returns what failed, for the log.
pub fn load_qdisc_modules(modules: &ModuleTree) -> Vec<(String, String)> {
    QDISC_MODULES
        .iter()
        .filter_map(|(_, module)| match modules.load(module) {
            Ok(_) => None,
            Err(e) => Some((module.to_string(), e.to_string())),
        })
        .collect()
}

/// The traffic-control modules' state in `modules`.
pub fn qdisc_support(modules: &ModuleTree) -> Vec<api::QdiscSupport> {
    QDISC_MODULES
        .iter()
        .map(|(name, module)| {
            let (available, detail) = match modules.state(module) {
                Ok(state) => describe_module(&state),
                Err(e) => (false, e.to_string()),
            };
            api::QdiscSupport {
                name: name.to_string(),
                available,
                detail,
            }
        })
        .collect()
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The running kernel's traffic-control modules.
pub fn qdiscs() -> Vec<api::QdiscSupport> {
    qdisc_support(&ModuleTree::host())
}

pub fn cgroup_version(layout: &CgroupLayout) -> &'static str {
    match layout.version {
        CgroupVersion::V1 => "v1",
        CgroupVersion::V2 => "v2",
        CgroupVersion::Hybrid => "hybrid",
    }
}

pub async fn runtime_info(runtime: Option<&Containerd>) -> api::RuntimeInfo {
    let Some(runtime) = runtime else {
        return api::RuntimeInfo {
            error: "no container runtime configured".into(),
            ..Default::default()
        };
    };
    let (reachable, version, error) = match runtime.version().await {
        Ok(v) => (true, v, String::new()),
        Err(e) => (false, String::new(), e.to_string()),
    };
    api::RuntimeInfo {
        endpoint: runtime.socket(),
        reachable,
        version,
        error,
        namespaces: runtime.namespaces().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_modules_from_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let modules = ModuleTree {
            sys_module_dir: dir.path().join("sys"),
            lib_modules_dir: dir.path().join("lib"),
        };
        std::fs::create_dir_all(modules.sys_module_dir.join("sch_htb")).unwrap();
        std::fs::create_dir_all(&modules.lib_modules_dir).unwrap();
        std::fs::write(
            modules.lib_modules_dir.join("modules.builtin"),
            "kernel/net/sched/sch_tbf.ko\n",
        )
        .unwrap();
        std::fs::write(
            modules.lib_modules_dir.join("modules.dep"),
            "kernel/net/sched/sch_netem.ko.xz:\nkernel/net/sched/cls_u32.ko: kernel/x.ko\n",
        )
        .unwrap();
        let support = qdisc_support(&modules);
        let detail = |name: &str| {
            let q = support.iter().find(|q| q.name == name).unwrap();
            (q.available, q.detail.clone())
        };
        assert_eq!(detail("htb"), (true, "loaded".into()));
        assert_eq!(detail("tbf"), (true, "builtin".into()));
        assert_eq!(detail("netem"), (true, "module (loadable)".into()));
        assert_eq!(detail("prio"), (false, "missing".into()));
        assert_eq!(support.len(), QDISC_MODULES.len());
    }
}
