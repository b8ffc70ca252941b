use std::path::Path;

use crate::error::CgroupError;
use crate::fs::CgroupFs;
use crate::membership::ProcessCgroup;

impl CgroupFs {
    /// Cumulative CPU time of every process in the cgroup, in nanoseconds
    /// (v2 `cpu.stat` usage_usec, v1 `cpuacct.usage`).
    pub fn cpu_usage_ns(&self, cg: &ProcessCgroup) -> Result<u64, CgroupError> {
        if cg.is_v1() {
            let file = self.controller_dir(cg, "cpuacct")?.join("cpuacct.usage");
            read_u64(&file)
        } else {
            let file = self.controller_dir(cg, "cpu")?.join("cpu.stat");
            Ok(read_keyed(&file, "usage_usec")?.saturating_mul(1000))
        }
    }

    /// Memory charged to the cgroup in bytes (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub fn memory_usage(&self, cg: &ProcessCgroup) -> Result<u64, CgroupError> {
        let dir = self.controller_dir(cg, "memory")?;
        if cg.is_v1() {
            read_u64(&dir.join("memory.usage_in_bytes"))
        } else {
            read_u64(&dir.join("memory.current"))
        }
    }

    /// How many processes the OOM killer has killed in this cgroup
    /// (v2 `memory.events` oom_kill, v1 `memory.oom_control` oom_kill).
    pub fn oom_kills(&self, cg: &ProcessCgroup) -> Result<u64, CgroupError> {
        let dir = self.controller_dir(cg, "memory")?;
        if cg.is_v1() {
            read_keyed(&dir.join("memory.oom_control"), "oom_kill")
        } else {
            read_keyed(&dir.join("memory.events"), "oom_kill")
        }
    }
}

fn read_u64(file: &Path) -> Result<u64, CgroupError> {
    let text = std::fs::read_to_string(file).map_err(|e| CgroupError::io(file, e))?;
    text.trim()
        .parse()
        .map_err(|_| CgroupError::parse(file.display().to_string(), text.trim().to_string()))
}

/// Reads `key VALUE` from a flat-keyed cgroup file such as `cpu.stat` or `memory.events`.
fn read_keyed(file: &Path, key: &str) -> Result<u64, CgroupError> {
    let text = std::fs::read_to_string(file).map_err(|e| CgroupError::io(file, e))?;
    let value = text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(key))
            .then(|| fields.next())
            .flatten()
    });
    let Some(value) = value else {
        return Err(CgroupError::parse(
            file.display().to_string(),
            format!("no {key} line"),
        ));
    };
    value.parse().map_err(|_| {
        CgroupError::parse(
            file.display().to_string(),
            format!("{key} {value:?} is not a number"),
        )
    })
}
