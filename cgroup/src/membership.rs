use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CgroupError;
use crate::layout::{CgroupLayout, CgroupVersion, KNOWN_V1_CONTROLLERS};

/// A process's cgroup membership as `/proc/PID/cgroup` states it.
///
/// Paths are relative to each hierarchy's root (they start with `/`). Named v1 hierarchies
/// such as `name=systemd` are dropped: they bound no resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCgroup {
    /// The `0::PATH` line: the cgroup2 path (v2, or the controller-less cgroup2 of a hybrid).
    pub unified: Option<String>,
    /// v1 controller -> path; co-mounted controllers (`cpu,cpuacct`) get one entry each.
    pub v1: BTreeMap<String, String>,
}

impl ProcessCgroup {
    /// Parses the text of `/proc/PID/cgroup` (`hierarchy-id:controllers:path` per line).
    pub fn parse(text: &str) -> Result<ProcessCgroup, CgroupError> {
        let mut unified = None;
        let mut v1 = BTreeMap::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            // The path is the last field and may itself contain ':'.
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(CgroupError::parse(
                    "/proc/PID/cgroup",
                    format!("line {line:?} is not id:controllers:path"),
                ));
            };
            if id.parse::<u32>().is_err() {
                return Err(CgroupError::parse(
                    "/proc/PID/cgroup",
                    format!("line {line:?} has a non-numeric hierarchy id"),
                ));
            }
            if !path.starts_with('/') {
                return Err(CgroupError::parse(
                    "/proc/PID/cgroup",
                    format!("line {line:?} has a relative path"),
                ));
            }
            if controllers.is_empty() {
                unified = Some(path.to_string());
                continue;
            }
            for controller in controllers.split(',') {
                if KNOWN_V1_CONTROLLERS.contains(&controller) {
                    v1.insert(controller.to_string(), path.to_string());
                }
            }
        }
        if unified.is_none() && v1.is_empty() {
            return Err(CgroupError::parse(
                "/proc/PID/cgroup",
                "no cgroup2 line and no v1 controller line",
            ));
        }
        Ok(ProcessCgroup { unified, v1 })
    }

    /// Reads and parses `<proc_root>/<pid>/cgroup` (`proc_root` is normally `/proc`).
    pub fn of_pid(proc_root: &Path, pid: u32) -> Result<ProcessCgroup, CgroupError> {
        let file = proc_root.join(pid.to_string()).join("cgroup");
        // A page up front: /proc reports size 0, and `fs::read_to_string` would grow a
        // 32-byte probe read by read.
        let mut text = String::with_capacity(4096);
        std::fs::File::open(&file)
            .and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut text))
            .map_err(|e| CgroupError::io(&file, e))?;
        ProcessCgroup::parse(&text)
    }

    /// For a `cgroup:PATH` target: the same path under every controller of the layout
    /// (v2: the unified path). The path must be absolute and must not contain `..`.
    pub fn from_path(layout: &CgroupLayout, path: &str) -> Result<ProcessCgroup, CgroupError> {
        let path = validate_path(path)?;
        match layout.version {
            CgroupVersion::V2 => Ok(ProcessCgroup {
                unified: Some(path),
                v1: BTreeMap::new(),
            }),
            CgroupVersion::V1 | CgroupVersion::Hybrid => Ok(ProcessCgroup {
                unified: None,
                v1: layout
                    .controllers
                    .iter()
                    .map(|controller| (controller.clone(), path.clone()))
                    .collect(),
            }),
        }
    }

    /// The path to show users: the unified path on v2, else the cpu (or memory) controller's path.
    pub fn display_path(&self) -> String {
        if self.v1.is_empty() {
            return self.unified.clone().unwrap_or_else(|| "/".to_string());
        }
        ["cpu", "memory"]
            .iter()
            .find_map(|controller| self.v1.get(*controller))
            .or_else(|| self.v1.values().next())
            .cloned()
            .unwrap_or_else(|| "/".to_string())
    }

    /// True when the membership comes from v1 hierarchies (v1 or hybrid node).
    pub fn is_v1(&self) -> bool {
        !self.v1.is_empty()
    }
}

/// Accepts `/a/b` (and `/`), trims a trailing `/`, rejects relative paths, `..`, `.`, NUL and `//`.
fn validate_path(path: &str) -> Result<String, CgroupError> {
    let invalid = |reason| CgroupError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(invalid("must be absolute (start with /)"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_string());
    }
    for component in trimmed[1..].split('/') {
        match component {
            "" => return Err(invalid("contains an empty component (//)")),
            "." | ".." => return Err(invalid("must not contain . or .. components")),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}
