//! Host processes for tests: a child killed and reaped however the test ends, and the
//! children of a process as the kernel lists them.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// A host process the test started; killed and reaped on drop.
pub struct HostProcess(pub Child);

impl HostProcess {
    /// `sleep 1000`: a plain process of the node, outside any container.
    pub fn sleep() -> Result<HostProcess> {
        Ok(HostProcess(Command::new("sleep").arg("1000").spawn()?))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first child of `parent` (e.g. a worker a container's shell started), waited for
/// at most 20 s.
pub fn first_child(parent: u32) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(first) = children.split_whitespace().next() {
            return Ok(first.parse()?);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("process {parent} has no child after 20 s")
}

/// The process's state letter in /proc (`T`: stopped, `Z`: a zombie), or None when it is
/// gone.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}
