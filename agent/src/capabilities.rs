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

/// A Linux capability some fault kind needs (see `faults::required_capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Signals to processes of other users.
    Kill,
    /// Network interfaces, qdiscs and filters.
    NetAdmin,
    /// Opening another process's /proc/PID/ns when it holds capabilities the agent lacks.
    SysPtrace,
    /// setns(2) into another network namespace.
    SysAdmin,
}

impl Capability {
    /// The bit in /proc/PID/status's Cap* masks (linux/capability.h).
    fn bit(self) -> u32 {
        match self {
            Capability::Kill => 5,
            Capability::NetAdmin => 12,
            Capability::SysPtrace => 19,
            Capability::SysAdmin => 21,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Capability::Kill => "CAP_KILL",
            Capability::NetAdmin => "CAP_NET_ADMIN",
            Capability::SysPtrace => "CAP_SYS_PTRACE",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
        }
    }
}

/// The capabilities a process holds in effect, as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapabilitySet {
    effective: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CapabilityReadError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} has no valid CapEff line")]
    NoCapEff { path: String },
}

impl CapabilitySet {
    /// Every capability (for tests of the decisions).
    pub fn all() -> CapabilitySet {
        CapabilitySet {
            effective: u64::MAX,
        }
    }

    /// The set without `capability` (for tests of the decisions).
    pub fn without(self, capability: Capability) -> CapabilitySet {
        CapabilitySet {
            effective: self.effective & !(1u64 << capability.bit()),
        }
    }

    /// Parses the `CapEff:` line of a /proc/PID/status text.
    pub fn from_status(status: &str) -> Option<CapabilitySet> {
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16)
            .ok()
            .map(|effective| CapabilitySet { effective })
    }

    /// What this process holds in effect: read once at start, since the agent never
    /// gains capabilities later.
    pub fn of_this_process() -> Result<CapabilitySet, CapabilityReadError> {
        let path = "/proc/self/status";
        let text = std::fs::read_to_string(path).map_err(|source| CapabilityReadError::Read {
            path: path.into(),
            source,
        })?;
        CapabilitySet::from_status(&text).ok_or(CapabilityReadError::NoCapEff { path: path.into() })
    }

    pub fn has(&self, capability: Capability) -> bool {
        self.effective & (1u64 << capability.bit()) != 0
    }
}

/// The names of the capabilities some kind needs that `set` holds.
pub fn held_names(set: &CapabilitySet) -> Vec<String> {
    [
        Capability::Kill,
        Capability::NetAdmin,
        Capability::SysPtrace,
        Capability::SysAdmin,
    ]
    .into_iter()
    .filter(|capability| set.has(*capability))
    .map(|capability| capability.name().to_string())
    .collect()
}

/// Drops every capability of the calling thread (effective, permitted, inheritable and
/// ambient). The stressor child calls it before its load runs: burning CPU and holding
/// memory need none, and a stressor should not be able to do what the agent can.
/// Bounding-set bits stay (dropping them needs CAP_SETPCAP); with the permitted set
/// empty and no exec to follow, they grant nothing.
pub fn drop_all_capabilities() -> std::io::Result<()> {
    // The capset(2) ABI, version 3: a header and two 32-bit halves of each set.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl with integer arguments only; it touches no memory of ours.
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if cleared != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: both pointers refer to live values of the layout capset(2) reads.
    let set = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set_from_a_status_text() {
        // CapEff of a root container with only CAP_KILL (bit 5) and CAP_NET_ADMIN (bit 12).
        let status = "Name:\tchaos-agent\nCapInh:\t0000000000000000\nCapEff:\t0000000000001020\n";
        let set = CapabilitySet::from_status(status).unwrap();
        assert!(set.has(Capability::Kill));
        assert!(set.has(Capability::NetAdmin));
        assert!(!set.has(Capability::SysAdmin));
        assert!(!set.has(Capability::SysPtrace));
        assert_eq!(CapabilitySet::from_status("Name:\tx\n"), None);
        assert_eq!(CapabilitySet::from_status("CapEff:\tzz\n"), None);
    }

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
