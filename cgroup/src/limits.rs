use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CgroupError;
use crate::fs::CgroupFs;
use crate::membership::ProcessCgroup;

/// The CPU a cgroup may use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuLimit {
    /// CFS quota / period in cores (the tightest along the ancestors); None = no quota.
    pub quota_cores: Option<f64>,
    /// How many CPUs the effective cpuset holds.
    pub cpuset_cpus: usize,
}

impl CpuLimit {
    /// Cores the cgroup can actually use: the quota, capped by the cpuset; the cpuset if no quota.
    /// This is "100 %" for CPU load expressed as a share of the container's limit.
    pub fn effective_cores(&self) -> f64 {
        let cpus = self.cpuset_cpus as f64;
        match self.quota_cores {
            Some(quota) => quota.min(cpus),
            None => cpus,
        }
    }
}

/// A memory limit that bounds a cgroup, and where it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    /// The cgroup whose limit it is, as `/proc/PID/cgroup` spells paths (`/` is the root).
    pub set_by: String,
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1).
    pub file: &'static str,
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes ({} of {})", self.bytes, self.file, self.set_by)
    }
}

impl CpuLimit {
    /// How many CPUs the cgroup can keep busy at once: its usable cores rounded up (a 1.5-core
    /// quota runs on two CPUs at a time), at least one. More stressor workers than this add
    /// nothing but threads waiting for a CPU.
    pub fn usable_cpus(&self) -> u32 {
        // A quota such as 150000/100000 is exact in f64; the small margin keeps a quotient
        // that lands a rounding error above an integer from counting one CPU more.
        let cores = (self.effective_cores() - 1e-9).ceil();
        if cores >= 1.0 { cores as u32 } else { 1 }
    }
}

/// v1 `memory.limit_in_bytes` reports "unlimited" as a huge page-aligned value
/// (9223372036854771712 on x86-64); anything this large is no limit.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

impl CgroupFs {
    /// The cgroup's CPU limit. The quota is the smallest along the cgroup and its ancestors
    /// (a pod-level quota bounds its containers too); the cpuset is the first non-empty
    /// effective set walking up. Without a mounted cpuset controller, the online CPU count.
    pub fn cpu_limit(&self, cg: &ProcessCgroup) -> Result<CpuLimit, CgroupError> {
        let quota_cores = match self.controller_base_and_dir(cg, "cpu") {
            Ok((base, dir)) => {
                require_dir(&dir)?;
                let mut tightest: Option<f64> = None;
                for level in levels(&base, &dir) {
                    let quota = if cg.is_v1() {
                        read_v1_quota(&level)?
                    } else {
                        read_v2_quota(&level)?
                    };
                    if let Some(quota) = quota {
                        tightest = Some(tightest.map_or(quota, |t| t.min(quota)));
                    }
                }
                tightest
            }
            // No cpu controller for this cgroup (v1 not mounted): nothing limits by quota.
            Err(CgroupError::Unsupported { .. }) => None,
            Err(other) => return Err(other),
        };
        let cpuset_cpus = self.effective_cpuset_count(cg)?;
        Ok(CpuLimit {
            quota_cores,
            cpuset_cpus,
        })
    }

    /// The memory limit in bytes (the smallest that bounds the cgroup), None if unlimited.
    pub fn memory_limit(&self, cg: &ProcessCgroup) -> Result<Option<u64>, CgroupError> {
        Ok(self.effective_memory_limit(cg)?.map(|limit| limit.bytes))
    }

    /// The lowest memory limit that bounds the cgroup's usage, and the cgroup that sets it:
    /// its own or an ancestor's (a pod's, a parent slice's), whose limit counts the usage of
    /// everything below it. v2: `memory.max` of the cgroup and every ancestor. v1:
    /// `memory.limit_in_bytes` of the cgroup and of each parent that is hierarchical
    /// (`memory.use_hierarchy` 1; the only mode since Linux 5.11, where the file always reads 1):
    /// a parent with 0 counts none of its children's usage, so it and everything above it bound
    /// nothing here. None if nothing bounds the cgroup.
    pub fn effective_memory_limit(
        &self,
        cg: &ProcessCgroup,
    ) -> Result<Option<MemoryLimit>, CgroupError> {
        let (base, dir) = self.controller_base_and_dir(cg, "memory")?;
        require_dir(&dir)?;
        let file_name = if cg.is_v1() {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        let mut tightest: Option<MemoryLimit> = None;
        for level in levels(&base, &dir) {
            // The root and cgroups without the memory controller have no limit file.
            if let Some(text) = read_optional(&level.join(file_name))?
                && let Some(bytes) = parse_memory_limit(&level.join(file_name), &text)?
                && tightest.as_ref().is_none_or(|t| bytes < t.bytes)
            {
                tightest = Some(MemoryLimit {
                    bytes,
                    set_by: cgroup_path_of(&base, &level),
                    file: file_name,
                });
            }
            if cg.is_v1()
                && let Some(parent) = level.parent().filter(|p| p.starts_with(&base))
                && !v1_is_hierarchical(parent)?
            {
                break;
            }
        }
        Ok(tightest)
    }

    fn effective_cpuset_count(&self, cg: &ProcessCgroup) -> Result<usize, CgroupError> {
        let (base, dir) = match self.controller_base_and_dir(cg, "cpuset") {
            Ok(found) => found,
            Err(CgroupError::Unsupported { .. }) => return Ok(online_cpus()),
            Err(other) => return Err(other),
        };
        let candidates: &[&str] = if cg.is_v1() {
            &["cpuset.effective_cpus", "cpuset.cpus"]
        } else {
            &["cpuset.cpus.effective"]
        };
        for level in levels(&base, &dir) {
            for name in candidates {
                let file = level.join(name);
                if let Some(text) = read_optional(&file)?
                    && !text.trim().is_empty()
                {
                    return parse_cpu_list(text.trim())
                        .map_err(|detail| CgroupError::parse(file.display().to_string(), detail));
                }
            }
        }
        // v2 without the cpuset controller enabled anywhere on the path: all online CPUs.
        Ok(online_cpus())
    }
}

/// Counts the CPUs in a kernel cpu list such as `0-3,8,10-11`.
pub fn parse_cpu_list(list: &str) -> Result<usize, String> {
    let mut count = 0usize;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.parse().map_err(|_| format!("bad range {part:?}"))?;
                let last: usize = last.parse().map_err(|_| format!("bad range {part:?}"))?;
                if last < first {
                    return Err(format!("descending range {part:?}"));
                }
                count += last - first + 1;
            }
            None => {
                part.parse::<usize>()
                    .map_err(|_| format!("bad cpu {part:?}"))?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// The cgroup directory and each ancestor up to and including the hierarchy root.
fn levels(base: &Path, dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .take_while(|level| level.starts_with(base))
        .map(Path::to_path_buf)
        .collect()
}

fn require_dir(dir: &Path) -> Result<(), CgroupError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(CgroupError::NotFound {
            path: dir.to_path_buf(),
        })
    }
}

/// Reads a cgroup file that may legitimately be absent (root cgroup, controller not enabled).
pub(crate) fn read_optional(file: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CgroupError::io(file, e)),
    }
}

/// v2 `cpu.max`: `max 100000` (no quota) or `QUOTA PERIOD` in microseconds.
fn read_v2_quota(level: &Path) -> Result<Option<f64>, CgroupError> {
    let file = level.join("cpu.max");
    let Some(text) = read_optional(&file)? else {
        return Ok(None);
    };
    let bad = || CgroupError::parse(file.display().to_string(), format!("{:?}", text.trim()));
    let mut fields = text.split_whitespace();
    let (Some(quota), Some(period)) = (fields.next(), fields.next()) else {
        return Err(bad());
    };
    if quota == "max" {
        return Ok(None);
    }
    let quota: f64 = quota.parse().map_err(|_| bad())?;
    let period: f64 = period.parse().map_err(|_| bad())?;
    if period <= 0.0 {
        return Err(bad());
    }
    Ok(Some(quota / period))
}

/// v1 `cpu.cfs_quota_us` (-1 = no quota) over `cpu.cfs_period_us`.
fn read_v1_quota(level: &Path) -> Result<Option<f64>, CgroupError> {
    let quota_file = level.join("cpu.cfs_quota_us");
    let Some(quota_text) = read_optional(&quota_file)? else {
        return Ok(None);
    };
    let quota: i64 = quota_text.trim().parse().map_err(|_| {
        CgroupError::parse(
            quota_file.display().to_string(),
            quota_text.trim().to_string(),
        )
    })?;
    if quota < 0 {
        return Ok(None);
    }
    let period_file = level.join("cpu.cfs_period_us");
    let period_text =
        std::fs::read_to_string(&period_file).map_err(|e| CgroupError::io(&period_file, e))?;
    let period: i64 = period_text.trim().parse().map_err(|_| {
        CgroupError::parse(
            period_file.display().to_string(),
            period_text.trim().to_string(),
        )
    })?;
    if period <= 0 {
        return Err(CgroupError::parse(
            period_file.display().to_string(),
            "period must be positive",
        ));
    }
    Ok(Some(quota as f64 / period as f64))
}

/// `max` (v2) or a huge v1 value means unlimited.
fn parse_memory_limit(file: &Path, text: &str) -> Result<Option<u64>, CgroupError> {
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    let bytes: u64 = text
        .parse()
        .map_err(|_| CgroupError::parse(file.display().to_string(), text.to_string()))?;
    if bytes >= V1_UNLIMITED_THRESHOLD {
        Ok(None)
    } else {
        Ok(Some(bytes))
    }
}

/// The cgroup path of a directory under a hierarchy root: `/` for the root itself.
fn cgroup_path_of(base: &Path, level: &Path) -> String {
    let relative = level.strip_prefix(base).unwrap_or(level);
    format!("/{}", relative.display())
}

/// v1 `memory.use_hierarchy`: whether the cgroup's counter includes its children's usage.
/// A missing file (Linux 5.11 on, where hierarchy is the only mode, still has it; a fake tree
/// may not) is hierarchical.
fn v1_is_hierarchical(dir: &Path) -> Result<bool, CgroupError> {
    let file = dir.join("memory.use_hierarchy");
    match read_optional(&file)?.as_deref().map(str::trim) {
        None | Some("1") => Ok(true),
        Some("0") => Ok(false),
        Some(other) => Err(CgroupError::parse(
            file.display().to_string(),
            format!("{other:?} is not 0 or 1"),
        )),
    }
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).ok().filter(|n| *n > 0).unwrap_or(1)
}
