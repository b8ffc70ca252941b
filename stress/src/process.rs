use crate::error::StressError;

/// Exit status of a stressor whose parent was already gone when it started.
pub const PARENT_GONE_EXIT_CODE: i32 = 3;

/// First call in a stressor child: ask for SIGKILL when the parent dies, then check the parent
/// is still `expected_parent` (it may have died before the request took effect) and exit at once
/// if not. Nothing then outlives the agent.
///
/// Linux delivers the death signal when the parent THREAD that forked the child exits, so the
/// agent must spawn stressors from a thread that lives as long as the fault.
pub fn prepare_child(expected_parent: i32) -> Result<(), StressError> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(StressError::Os {
            what: "prctl(PR_SET_PDEATHSIG)",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != expected_parent {
        std::process::exit(PARENT_GONE_EXIT_CODE);
    }
    Ok(())
}

/// CPU time consumed by every thread of this process, in nanoseconds.
pub fn process_cpu_time_ns() -> Result<u64, StressError> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return Err(StressError::Os {
            what: "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}
