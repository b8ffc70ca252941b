//! What this node offers: kernel, cgroup layout, qdisc modules, runtime. Gathered
//! once at start (modules) and on request (runtime reachability).

use std::path::Path;

use chaos_cgroup::{CgroupLayout, CgroupVersion};
use chaos_proto::api;

use crate::runtime::Containerd;

/// The traffic-control modules network faults need.
pub const QDISC_MODULES: &[(&str, &str)] = &[
    ("netem", "sch_netem"),
    ("prio", "sch_prio"),
    ("u32", "cls_u32"),
    ("ingress", "sch_ingress"),
    ("ifb", "ifb"),
    ("htb", "sch_htb"),
    ("tbf", "sch_tbf"),
];

/// Whether a kernel module is loaded, built in, loadable, or missing, from
/// `/sys/module` and the module index of the running kernel.
pub fn module_support(sys_module: &Path, modules_dir: &Path, module: &str) -> (bool, String) {
    if sys_module.join(module).exists() {
        return (true, "loaded".into());
    }
    let listed = |index: &str| {
        std::fs::read_to_string(modules_dir.join(index)).is_ok_and(|text| {
            text.lines().any(|line| {
                let path = line.split(':').next().unwrap_or("");
                let file = path.rsplit('/').next().unwrap_or("");
                file.split('.').next() == Some(module)
            })
        })
    };
    if listed("modules.builtin") {
        (true, "builtin".into())
    } else if listed("modules.dep") {
        (true, "module (loadable)".into())
    } else {
        (false, "missing".into())
    }
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn qdiscs() -> Vec<api::QdiscSupport> {
    let modules_dir = Path::new("/lib/modules").join(kernel_release());
    QDISC_MODULES
        .iter()
        .map(|(name, module)| {
            let (available, detail) =
                module_support(Path::new("/sys/module"), &modules_dir, module);
            api::QdiscSupport {
                name: name.to_string(),
                available,
                detail,
            }
        })
        .collect()
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
        let sys = dir.path().join("sys");
        let lib = dir.path().join("lib");
        std::fs::create_dir_all(sys.join("sch_htb")).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("modules.builtin"), "kernel/net/sched/sch_tbf.ko\n").unwrap();
        std::fs::write(
            lib.join("modules.dep"),
            "kernel/net/sched/sch_netem.ko.xz:\nkernel/net/sched/cls_u32.ko: kernel/x.ko\n",
        )
        .unwrap();
        assert_eq!(
            module_support(&sys, &lib, "sch_htb"),
            (true, "loaded".into())
        );
        assert_eq!(
            module_support(&sys, &lib, "sch_tbf"),
            (true, "builtin".into())
        );
        assert_eq!(
            module_support(&sys, &lib, "sch_netem"),
            (true, "module (loadable)".into())
        );
        assert_eq!(
            module_support(&sys, &lib, "sch_prio"),
            (false, "missing".into())
        );
    }
}
