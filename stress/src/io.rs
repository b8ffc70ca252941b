//! The IO stressor: one file in a directory the agent opened for it (inside the target's
//! root), written in aligned blocks and read back, again and again until the deadline, at
//! most at its share of a rate when one is given.
//!
//! The file is opened with O_DIRECT so every block reaches the device from this process,
//! which is what cgroup v1 charges to the process's cgroup (its buffered writes would be
//! written back later by the kernel, for the root cgroup) and what makes the reads go to
//! the device rather than the page cache. A filesystem that refuses O_DIRECT (tmpfs before
//! Linux 6.6) gets buffered IO, with an fdatasync after each pass and the cached pages
//! dropped, so the next pass reads from the device again where there is one.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

use crate::error::StressError;

/// The block of an unpaced worker.
pub const BLOCK_BYTES: usize = 1 << 20;
/// O_DIRECT's alignment of buffers, offsets and lengths (a page covers every logical
/// block size in use).
const ALIGN: usize = 4096;

#[derive(Debug)]
pub struct IoStressConfig {
    /// The directory to create the file in (opened by the caller).
    pub dir: OwnedFd,
    pub name: String,
    pub file_bytes: u64,
    /// This worker's share of the rate, reads and writes together; 0 = unpaced.
    pub bytes_per_second: u64,
    pub deadline: SystemTime,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStressReport {
    pub written_bytes: u64,
    pub read_bytes: u64,
    /// False when the filesystem refused O_DIRECT.
    pub direct: bool,
}

/// The block size of a worker paced at `bytes_per_second`: an eighth of a second's worth
/// (so a rate holds over short windows, not only on average), aligned, at most
/// [`BLOCK_BYTES`].
pub fn block_bytes(bytes_per_second: u64) -> usize {
    if bytes_per_second == 0 {
        return BLOCK_BYTES;
    }
    let eighth = usize::try_from(bytes_per_second / 8).unwrap_or(BLOCK_BYTES);
    (eighth / ALIGN * ALIGN).clamp(ALIGN, BLOCK_BYTES)
}

/// Paces IO to a rate: a block is submitted only once the rate allows it (paid before,
/// so what was done by any moment never exceeds the rate times the time since the
/// start). A worker that fell behind (a slow device) gets no credit for it: bursts to
/// catch up would exceed the rate over the window they happen in.
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_second: u64,
    /// Since the origin: when the bytes done so far were all due.
    due: Duration,
}

impl Pacer {
    pub fn new(bytes_per_second: u64) -> Pacer {
        Pacer {
            bytes_per_second,
            due: Duration::ZERO,
        }
    }

    /// How long to wait before submitting `bytes`, at `elapsed` since the origin.
    pub fn delay(&mut self, bytes: u64, elapsed: Duration) -> Duration {
        if self.bytes_per_second == 0 {
            return Duration::ZERO;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        // Behind: start again from now.
        let from = self.due.max(elapsed);
        self.due = from + cost;
        self.due.saturating_sub(elapsed)
    }
}

/// A buffer aligned for O_DIRECT.
struct AlignedBuffer {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuffer {
    fn new(len: usize) -> Result<AlignedBuffer, StressError> {
        let layout = std::alloc::Layout::from_size_align(len, ALIGN)
            .map_err(|e| StressError::InvalidConfig(format!("a {len}-byte buffer: {e}")))?;
        // SAFETY: the layout's size is at least ALIGN (never zero).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(StressError::Map {
                bytes: len as u64,
                source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            });
        }
        // Not all zeros: a filesystem that compresses or dedups would skip the IO.
        // SAFETY: ptr is valid for len bytes, owned by this buffer.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        Ok(AlignedBuffer { ptr, layout })
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn last_error(what: &'static str) -> StressError {
    StressError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Creates `name` in `dir` (never an existing file, never through a symlink).
fn create(dir: &OwnedFd, name: &str) -> Result<OwnedFd, StressError> {
    let name = CString::new(name)
        .map_err(|_| StressError::InvalidConfig(format!("file name {name:?} holds a NUL")))?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(last_error("creating the stressor's file"));
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets O_DIRECT; false if the filesystem refuses it.
fn set_direct(file: &OwnedFd, on: bool) -> bool {
    // SAFETY: fcntl on a valid descriptor with integer arguments.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags) == 0
    }
}

/// Removes the file, once the work is done (the agent removes it too, at every end).
fn remove(dir: &OwnedFd, name: &str) {
    if let Ok(name) = CString::new(name) {
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    }
}

/// Writes and reads the file until the deadline; removes it at the end.
pub fn run(
    config: &IoStressConfig,
    progress: &mut dyn Write,
) -> Result<IoStressReport, StressError> {
    if config.file_bytes < ALIGN as u64 {
        return Err(StressError::InvalidConfig(format!(
            "a file of {} bytes is below one block",
            config.file_bytes
        )));
    }
    let end = Instant::now()
        + config
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
    let file = create(&config.dir, &config.name)?;
    let result = work(config, &file, end, progress);
    drop(file);
    remove(&config.dir, &config.name);
    result
}

fn work(
    config: &IoStressConfig,
    file: &OwnedFd,
    end: Instant,
    progress: &mut dyn Write,
) -> Result<IoStressReport, StressError> {
    let block = block_bytes(config.bytes_per_second);
    let buffer = AlignedBuffer::new(block)?;
    // Whole blocks only: O_DIRECT takes aligned lengths.
    let blocks = (config.file_bytes / block as u64).max(1);
    let mut report = IoStressReport {
        direct: set_direct(file, true),
        ..Default::default()
    };
    let mut pacer = Pacer::new(config.bytes_per_second);
    let start = Instant::now();
    let fd = file.as_raw_fd();
    'passes: loop {
        for write in [true, false] {
            for index in 0..blocks {
                let wait = pacer.delay(block as u64, start.elapsed());
                if Instant::now() + wait >= end {
                    break 'passes;
                }
                std::thread::sleep(wait);
                let offset = (index * block as u64) as libc::off_t;
                // SAFETY: the buffer is valid for `block` bytes for its whole life.
                let done = unsafe {
                    if write {
                        libc::pwrite(fd, buffer.ptr.cast(), block, offset)
                    } else {
                        libc::pread(fd, buffer.ptr.cast(), block, offset)
                    }
                };
                if done < 0 {
                    let err = std::io::Error::last_os_error();
                    // A filesystem may take O_DIRECT yet refuse this alignment: buffered
                    // IO still loads it, less exactly charged on v1.
                    if report.direct && err.raw_os_error() == Some(libc::EINVAL) {
                        report.direct = !set_direct(file, false);
                        if !report.direct {
                            continue;
                        }
                    }
                    return Err(StressError::Os {
                        what: if write {
                            "writing the stressor's file"
                        } else {
                            "reading the stressor's file"
                        },
                        source: err,
                    });
                }
                if write {
                    report.written_bytes += done as u64;
                } else {
                    report.read_bytes += done as u64;
                }
            }
            if write && !report.direct {
                // SAFETY: plain calls on a valid descriptor.
                unsafe {
                    if libc::fdatasync(fd) != 0 {
                        return Err(last_error("fdatasync of the stressor's file"));
                    }
                    libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
                }
            }
        }
        writeln!(
            progress,
            "written {} read {}",
            report.written_bytes, report.read_bytes
        )
        .map_err(StressError::Progress)?;
    }
    let _ = progress.flush();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_paced_block_is_an_eighth_of_a_second_aligned_within_bounds() {
        assert_eq!(block_bytes(0), BLOCK_BYTES);
        assert_eq!(block_bytes(MIB), 128 * 1024);
        assert_eq!(block_bytes(1000 * MIB), BLOCK_BYTES);
        // 8 KiB/s (64 KiB/s shared by 8 workers): one page per block.
        assert_eq!(block_bytes(8192), ALIGN);
        assert_eq!(block_bytes(100_000) % ALIGN, 0);
    }

    #[test]
    fn the_pacer_pays_before_and_never_banks_credit() {
        let mut pacer = Pacer::new(MIB);
        let ms = Duration::from_millis;
        // The first quarter MiB waits its quarter second: done never exceeds rate × time.
        assert_eq!(pacer.delay(MIB / 4, ms(0)), ms(250));
        assert_eq!(pacer.delay(MIB / 4, ms(250)), ms(250));
        // Asked early: waits for the previous block's due time too.
        assert_eq!(pacer.delay(MIB / 4, ms(300)), ms(450));
        // Far behind (a slow device): from now on, no burst to catch up.
        assert_eq!(pacer.delay(MIB / 4, ms(5000)), ms(250));
        assert_eq!(Pacer::new(0).delay(MIB, ms(0)), Duration::ZERO);
    }

    #[test]
    fn a_worker_writes_and_reads_its_file_until_the_deadline_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir: OwnedFd = std::fs::File::open(tmp.path()).unwrap().into();
        let config = IoStressConfig {
            dir,
            name: ".chaos-io-stress-test-0".into(),
            file_bytes: MIB,
            bytes_per_second: 4 * MIB,
            deadline: SystemTime::now() + Duration::from_millis(600),
        };
        let mut progress = Vec::new();
        let started = Instant::now();
        let report = run(&config, &mut progress).unwrap();
        let took = started.elapsed();
        // Paced at 4 MiB/s over 0.6 s: at most 2.4 MiB, and at least the first write.
        let total = report.written_bytes + report.read_bytes;
        assert!(report.written_bytes >= MIB, "{report:?}");
        assert!(total <= 24 * MIB / 10, "{report:?}");
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(!tmp.path().join(".chaos-io-stress-test-0").exists());
        // An existing file is never taken over.
        std::fs::write(tmp.path().join(".chaos-io-stress-test-0"), b"x").unwrap();
        let err = run(&config, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("creating"), "{err}");
        assert_eq!(
            std::fs::read(tmp.path().join(".chaos-io-stress-test-0")).unwrap(),
            b"x"
        );
    }

    #[test]
    fn a_worker_loads_a_tmpfs_directory_too() {
        // tmpfs refused O_DIRECT before Linux 6.6 (the worker then falls back to buffered
        // IO); later kernels take it, so which path runs depends on the kernel.
        let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
        let config = IoStressConfig {
            dir: std::fs::File::open(tmp.path()).unwrap().into(),
            name: ".chaos-io-stress-shm-0".into(),
            file_bytes: MIB,
            bytes_per_second: 0,
            deadline: SystemTime::now() + Duration::from_millis(300),
        };
        let report = run(&config, &mut Vec::new()).unwrap();
        assert!(
            report.written_bytes >= MIB && report.read_bytes >= MIB,
            "{report:?}"
        );
        assert!(!tmp.path().join(".chaos-io-stress-shm-0").exists());
    }
}
