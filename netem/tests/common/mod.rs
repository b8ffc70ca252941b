//! A test network namespace with a veth pair and a default route, removed on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// Inside the namespace: `chaos-a` (10.199.0.1/24, default route via .2) <-> `chaos-b`.
pub const LINK: &str = "chaos-a";
pub const PEER: &str = "chaos-b";

pub struct TestNetns {
    pub name: String,
}

pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl TestNetns {
    /// A namespace with nothing in it but its loopback.
    pub fn empty(label: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "chaos-test-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]).context("this test needs root and `ip netns`")?;
        // From here on Drop removes the namespace and everything in it.
        Ok(Self { name })
    }

    pub fn new(label: &str) -> Result<Self> {
        let netns = Self::empty(label)?;
        netns.ip(&["link", "add", LINK, "type", "veth", "peer", "name", PEER])?;
        netns.ip(&["addr", "add", "10.199.0.1/24", "dev", LINK])?;
        netns.ip(&["link", "set", LINK, "up"])?;
        netns.ip(&["link", "set", PEER, "up"])?;
        netns.ip(&["route", "add", "default", "via", "10.199.0.2", "dev", LINK])?;
        Ok(netns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn tc(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("tc", &full)
    }

    pub fn ifindex(&self, link: &str) -> Result<u32> {
        let line = self.ip(&["-o", "link", "show", link])?;
        let index = line.split(':').next().context("no ifindex in ip output")?;
        Ok(index.trim().parse()?)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair and its qdiscs with it.
        if let Err(err) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup of {} failed: {err:#}", self.name);
        }
    }
}
