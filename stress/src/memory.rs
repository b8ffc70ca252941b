//! The memory stressor: anonymous private memory, every page made resident (and charged to
//! the cgroup), optionally ramped linearly, then held with ~0 CPU until the deadline.
//!
//! The pages are populated by the kernel (`MADV_POPULATE_WRITE`, Linux 5.14): one system
//! call per slice instead of one page fault per page, which is the bulk of a fill's time.
//! Where the kernel lacks it (or refuses a slice), every page of the slice is written
//! instead, which faults it in the same way, one page at a time.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use crate::error::StressError;

/// Ramp granularity: one progress line and one slice of pages per step.
const RAMP_STEP: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryStressConfig {
    pub bytes: u64,
    /// Zero = touch everything at once.
    pub ramp: Duration,
    pub deadline: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryStressReport {
    /// Bytes resident when the hold ended (less than asked if the deadline came during the ramp).
    pub held_bytes: u64,
}

/// Holds the memory until the deadline, then unmaps it. Writes `held <bytes>` after each ramp
/// step (once without a ramp) and `released <bytes>` at the end.
pub fn run(
    config: &MemoryStressConfig,
    progress: &mut dyn Write,
) -> Result<MemoryStressReport, StressError> {
    if config.bytes == 0 {
        return Err(StressError::InvalidConfig("memory size is 0".to_string()));
    }
    let len = usize::try_from(config.bytes)
        .map_err(|_| StressError::InvalidConfig(format!("{} bytes", config.bytes)))?;
    let remaining = config
        .deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let start = Instant::now();
    let end = start + remaining;
    let mapping = Mapping::new(len)?;
    let page = page_size();

    let steps = if config.ramp.is_zero() {
        1
    } else {
        (config.ramp.as_millis() / RAMP_STEP.as_millis()).max(1) as usize
    };
    let mut touched = 0usize;
    for step in 1..=steps {
        if Instant::now() >= end {
            break;
        }
        // Page-aligned cumulative goal for this step; the last step reaches `len` exactly.
        let goal = if step == steps {
            len
        } else {
            (len / steps * step) / page * page
        };
        mapping.populate(touched, goal, page);
        touched = goal;
        say(progress, &format!("held {touched}"))?;
        if step < steps {
            let due = start + config.ramp.mul_f64(step as f64 / steps as f64);
            sleep_until(due.min(end));
        }
    }
    sleep_until(end);
    let held_bytes = touched as u64;
    drop(mapping);
    say(progress, &format!("released {held_bytes}"))?;
    Ok(MemoryStressReport { held_bytes })
}

fn say(progress: &mut dyn Write, line: &str) -> Result<(), StressError> {
    writeln!(progress, "{line}")
        .and_then(|()| progress.flush())
        .map_err(StressError::Progress)
}

fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        std::thread::sleep(when - now);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(4096)
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Mapping, StressError> {
        // SAFETY: an anonymous mapping with a null hint has no preconditions; failure is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(StressError::Map {
                bytes: len as u64,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Makes `[from, to)` resident: populated by the kernel for writing, or page by page.
    /// `from` is page-aligned (every slice but the last ends on a page). True when the kernel
    /// populated it.
    fn populate(&self, from: usize, to: usize, page: usize) -> bool {
        let to = to.min(self.len);
        if from >= to {
            return true;
        }
        // SAFETY: [from, to) lies inside the live mapping and `from` is page-aligned, as
        // madvise requires; the advice only faults pages in, as writes would.
        let done = unsafe {
            libc::madvise(
                self.ptr.add(from).cast(),
                to - from,
                libc::MADV_POPULATE_WRITE,
            )
        } == 0;
        if !done {
            // EINVAL: a kernel before 5.14. Any other refusal (ENOMEM at the cgroup's
            // limit, EINTR): writing the pages behaves as the fill always did there.
            self.touch(from, to, page);
        }
        done
    }

    /// Writes one byte in every page of `[from, to)`: the write fault makes the page resident
    /// (a read would map the shared zero page and charge nothing).
    fn touch(&self, from: usize, to: usize, page: usize) {
        let to = to.min(self.len);
        let mut offset = from;
        while offset < to {
            // SAFETY: offset < len, inside the live mapping, which is readable and writable.
            unsafe { std::ptr::write_volatile(self.ptr.add(offset), 0xA5) };
            offset += page;
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing references the memory now.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Both ways of making pages resident, each on its own mapping; the test threads share
    /// one process, so they run one after the other here.
    #[test]
    fn populating_or_touching_makes_pages_resident_and_drop_releases_them() {
        let populate = |m: &Mapping, from, to, page| {
            // Every kernel this is tested on (host and VM) is 5.14 or later.
            assert!(m.populate(from, to, page), "MADV_POPULATE_WRITE refused");
        };
        let touch = |m: &Mapping, from, to, page| m.touch(from, to, page);
        type Fill<'a> = &'a dyn Fn(&Mapping, usize, usize, usize);
        for (how, fill) in [("populate", &populate as Fill), ("touch", &touch as Fill)] {
            let before = resident_kib();
            let mapping = Mapping::new(64 << 20).unwrap();
            assert!(
                resident_kib() < before + 1024,
                "an untouched mapping is not resident"
            );
            fill(&mapping, 0, 64 << 20, page_size());
            let held = resident_kib();
            // Other test threads allocate too: allow a little slack above 64 MiB.
            assert!(
                held >= before + 64 * 1024 - 256,
                "{how}: {before} -> {held} KiB"
            );
            drop(mapping);
            assert!(resident_kib() < held - 60 * 1024, "{how}");
        }
    }

    #[test]
    fn ramps_in_steps_and_reports_progress() {
        let mut out = Vec::new();
        let config = MemoryStressConfig {
            bytes: 8 << 20,
            ramp: Duration::from_millis(300),
            deadline: SystemTime::now() + Duration::from_millis(500),
        };
        let started = Instant::now();
        let report = run(&config, &mut out).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(report.held_bytes, 8 << 20);
        let text = String::from_utf8(out).unwrap();
        let held: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("held "))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(held.len(), 3, "{text}");
        assert!(held.windows(2).all(|w| w[0] < w[1]), "{held:?}");
        assert_eq!(held.last(), Some(&(8 << 20)));
        assert!(text.ends_with(&format!("released {}\n", 8 << 20)), "{text}");
        assert!(elapsed >= Duration::from_millis(480) && elapsed < Duration::from_secs(2));
    }

    #[test]
    fn rejects_zero_bytes() {
        let config = MemoryStressConfig {
            bytes: 0,
            ramp: Duration::ZERO,
            deadline: SystemTime::now(),
        };
        let err = run(&config, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, StressError::InvalidConfig(_)), "{err}");
    }
}
