//! Which kernel modules network faults need, and whether this kernel has them.
//!
//! A module is, in this order of checks: built in (listed in
//! `/lib/modules/$(uname -r)/modules.builtin`), loaded (`/sys/module/NAME` exists; some
//! built-ins with parameters appear there too, hence built-in first), loadable (a file
//! listed in `modules.dep`), or missing. Without a module index for the running kernel
//! (custom kernels often ship none) a module that is not in `/sys/module` is `Unknown`:
//! it may still be built in.
//!
//! Loading uses `modprobe NAME` when a modprobe binary exists (it resolves dependencies
//! and compression itself); otherwise `finit_module(2)` on each file from `modules.dep`,
//! dependencies first, passing `MODULE_INIT_COMPRESSED_FILE` for `.ko.xz`/`.ko.zst`/
//! `.ko.gz` so a kernel with in-kernel decompression unpacks them.

use std::ffi::CString;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::kmod::{ModuleInitFlags, finit_module};
use serde::{Deserialize, Serialize};

/// Modules the network faults use: netem itself, prio + u32 to target only some traffic,
/// ingress + ifb + mirred to delay incoming traffic, htb/tbf for bandwidth limits.
pub const NETWORK_FAULT_MODULES: [&str; 8] = [
    "sch_netem",
    "sch_prio",
    "cls_u32",
    "sch_ingress",
    "ifb",
    "act_mirred",
    "sch_htb",
    "sch_tbf",
];

/// `MODULE_INIT_COMPRESSED_FILE` in `linux/module.h` (not in nix's flag set).
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

const MODPROBE_CANDIDATES: [&str; 3] =
    ["/usr/sbin/modprobe", "/sbin/modprobe", "/usr/bin/modprobe"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModuleState {
    BuiltIn,
    Loaded,
    /// Not loaded, but its file is in the module index.
    Loadable {
        path: PathBuf,
    },
    Missing,
    /// Not loaded, and there is no module index for this kernel to tell more.
    Unknown,
}

impl ModuleState {
    pub fn is_available_now(&self) -> bool {
        matches!(self, ModuleState::BuiltIn | ModuleState::Loaded)
    }
}

/// How a module got loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadMethod {
    AlreadyAvailable,
    Modprobe,
    FinitModule,
}

#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("module {0} is not available for this kernel")]
    Missing(String),
    #[error("modprobe {module} failed: {detail}")]
    Modprobe { module: String, detail: String },
    #[error("finit_module({path}) failed: {source}")]
    FinitModule { path: PathBuf, source: nix::Error },
}

/// Module names treat `-` and `_` alike.
fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/net/sched/sch_netem.ko.xz` -> `sch_netem`.
fn module_name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalise(stem)
}

/// The module directories of one kernel: real ones or a fake tree in tests.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    /// `/sys/module`
    pub sys_module_dir: PathBuf,
    /// `/lib/modules/$(uname -r)`
    pub lib_modules_dir: PathBuf,
}

impl ModuleTree {
    /// The running kernel's directories.
    pub fn host() -> Self {
        let release = nix::sys::utsname::uname()
            .map(|name| name.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            sys_module_dir: PathBuf::from("/sys/module"),
            lib_modules_dir: Path::new("/lib/modules").join(release),
        }
    }

    /// Lines of a module index file; `None` when the file does not exist.
    fn index_lines(&self, file: &str) -> Result<Option<Vec<String>>, CapabilityError> {
        let path = self.lib_modules_dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.lines().map(str::to_owned).collect())),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CapabilityError::Read { path, source }),
        }
    }

    /// The module's file and its dependencies' files (relative to `lib_modules_dir`),
    /// from `modules.dep` (`path: dep1 dep2`, deps in the order modprobe loads them last).
    fn dependency_line(
        &self,
        name: &str,
    ) -> Result<Option<(String, Vec<String>)>, CapabilityError> {
        let Some(lines) = self.index_lines("modules.dep")? else {
            return Ok(None);
        };
        let wanted = normalise(name);
        for line in lines {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            if module_name_of(path) == wanted {
                let deps = deps.split_whitespace().map(str::to_owned).collect();
                return Ok(Some((path.trim().to_owned(), deps)));
            }
        }
        Ok(None)
    }

    /// Whether `/sys/module/NAME` exists: the module is loaded (or built in with
    /// parameters). One stat, for request paths; `state` tells the rest.
    pub fn is_loaded(&self, name: &str) -> bool {
        self.sys_module_dir.join(normalise(name)).exists()
    }

    pub fn state(&self, name: &str) -> Result<ModuleState, CapabilityError> {
        let wanted = normalise(name);
        let builtin = self.index_lines("modules.builtin")?;
        if let Some(lines) = &builtin
            && lines.iter().any(|line| module_name_of(line) == wanted)
        {
            return Ok(ModuleState::BuiltIn);
        }
        if self.sys_module_dir.join(&wanted).exists() {
            return Ok(ModuleState::Loaded);
        }
        if let Some((path, _)) = self.dependency_line(&wanted)? {
            return Ok(ModuleState::Loadable {
                path: self.lib_modules_dir.join(path),
            });
        }
        if builtin.is_none() {
            return Ok(ModuleState::Unknown);
        }
        Ok(ModuleState::Missing)
    }

    /// The state of every module network faults use.
    pub fn network_fault_modules(&self) -> Result<Vec<(String, ModuleState)>, CapabilityError> {
        NETWORK_FAULT_MODULES
            .iter()
            .map(|name| Ok((name.to_string(), self.state(name)?)))
            .collect()
    }

    /// Makes `name` available: nothing to do when built in or loaded, else modprobe or
    /// finit_module (see the module docs).
    pub fn load(&self, name: &str) -> Result<LoadMethod, CapabilityError> {
        match self.state(name)? {
            ModuleState::BuiltIn | ModuleState::Loaded => return Ok(LoadMethod::AlreadyAvailable),
            ModuleState::Missing => return Err(CapabilityError::Missing(name.to_string())),
            ModuleState::Loadable { .. } | ModuleState::Unknown => {}
        }
        if let Some(modprobe) = MODPROBE_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        {
            return run_modprobe(modprobe, name).map(|()| LoadMethod::Modprobe);
        }
        let Some((path, deps)) = self.dependency_line(name)? else {
            return Err(CapabilityError::Missing(name.to_string()));
        };
        // modules.dep lists dependencies so that the last one must be loaded first.
        for dependency in deps.iter().rev().chain(std::iter::once(&path)) {
            let dependency_name = module_name_of(dependency);
            if self.sys_module_dir.join(&dependency_name).exists() {
                continue;
            }
            load_file(&self.lib_modules_dir.join(dependency))?;
        }
        Ok(LoadMethod::FinitModule)
    }
}

fn run_modprobe(modprobe: &Path, name: &str) -> Result<(), CapabilityError> {
    let output =
        Command::new(modprobe)
            .arg(name)
            .output()
            .map_err(|err| CapabilityError::Modprobe {
                module: name.to_string(),
                detail: err.to_string(),
            })?;
    if output.status.success() {
        return Ok(());
    }
    Err(CapabilityError::Modprobe {
        module: name.to_string(),
        detail: format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

fn load_file(path: &Path) -> Result<(), CapabilityError> {
    let file = File::open(path).map_err(|source| CapabilityError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.to_string_lossy();
    let compressed = [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|suffix| name.ends_with(suffix));
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    let no_parameters = CString::default();
    match finit_module(&file, &no_parameters, flags) {
        // Loaded concurrently by someone else: fine.
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(source) => Err(CapabilityError::FinitModule {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/module and /lib/modules/<release> in a temp dir.
    fn fake_tree(
        builtin: Option<&str>,
        dep: Option<&str>,
        loaded: &[&str],
    ) -> (tempfile::TempDir, ModuleTree) {
        let root = tempfile::tempdir().unwrap();
        let tree = ModuleTree {
            sys_module_dir: root.path().join("sys/module"),
            lib_modules_dir: root.path().join("lib/modules/6.1.0-test"),
        };
        std::fs::create_dir_all(&tree.sys_module_dir).unwrap();
        std::fs::create_dir_all(&tree.lib_modules_dir).unwrap();
        if let Some(text) = builtin {
            std::fs::write(tree.lib_modules_dir.join("modules.builtin"), text).unwrap();
        }
        if let Some(text) = dep {
            std::fs::write(tree.lib_modules_dir.join("modules.dep"), text).unwrap();
        }
        for name in loaded {
            std::fs::create_dir_all(tree.sys_module_dir.join(name)).unwrap();
        }
        (root, tree)
    }

    #[test]
    fn classifies_builtin_loaded_loadable_missing() {
        let (_root, tree) = fake_tree(
            Some("kernel/net/sched/sch_htb.ko\nkernel/net/sched/sch-tbf.ko\n"),
            Some(
                "kernel/net/sched/sch_netem.ko.xz:\nkernel/net/sched/cls_u32.ko: kernel/net/sched/foo.ko\n",
            ),
            &["sch_prio", "sch_htb"],
        );
        assert_eq!(tree.state("sch_htb").unwrap(), ModuleState::BuiltIn);
        assert_eq!(tree.state("sch_tbf").unwrap(), ModuleState::BuiltIn);
        assert_eq!(tree.state("sch_prio").unwrap(), ModuleState::Loaded);
        assert_eq!(
            tree.state("sch_netem").unwrap(),
            ModuleState::Loadable {
                path: tree
                    .lib_modules_dir
                    .join("kernel/net/sched/sch_netem.ko.xz")
            }
        );
        assert_eq!(tree.state("ifb").unwrap(), ModuleState::Missing);
        assert!(tree.is_loaded("sch_prio") && tree.is_loaded("sch-htb"));
        assert!(!tree.is_loaded("sch_netem") && !tree.is_loaded("sch_tbf"));
        let all = tree.network_fault_modules().unwrap();
        assert_eq!(all.len(), NETWORK_FAULT_MODULES.len());
    }

    #[test]
    fn without_module_index_unloaded_is_unknown() {
        let (_root, tree) = fake_tree(None, None, &["sch_htb"]);
        assert_eq!(tree.state("sch_htb").unwrap(), ModuleState::Loaded);
        assert_eq!(tree.state("sch_netem").unwrap(), ModuleState::Unknown);
    }

    #[test]
    fn load_of_available_or_missing_module_needs_no_kernel() {
        let (_root, tree) = fake_tree(Some("kernel/net/sched/sch_htb.ko\n"), Some(""), &[]);
        assert_eq!(tree.load("sch_htb").unwrap(), LoadMethod::AlreadyAvailable);
        assert!(matches!(
            tree.load("sch_netem"),
            Err(CapabilityError::Missing(_))
        ));
    }

    #[test]
    fn dependency_order() {
        let (_root, tree) = fake_tree(
            Some(""),
            Some("kernel/a.ko: kernel/b.ko kernel/c.ko\n"),
            &[],
        );
        let (path, deps) = tree.dependency_line("a").unwrap().unwrap();
        assert_eq!(path, "kernel/a.ko");
        assert_eq!(deps, vec!["kernel/b.ko", "kernel/c.ko"]);
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name_of("kernel/net/sched/sch_netem.ko.zst"),
            "sch_netem"
        );
        assert_eq!(module_name_of("kernel/drivers/net/ifb.ko"), "ifb");
    }
}
