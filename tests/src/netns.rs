//! A network namespace wired to the host by a veth pair, like a CNI plugin prepares for a pod.
//!
//! Each fixture owns one /30 out of 10.213.0.0/16: the host side gets `.1`, the namespace side
//! (`eth0`, as in a pod) gets `.2` and a default route via the host side. The /30 is leased
//! with an exclusive `flock` on a file under [`LEASE_DIR`], so fixtures in parallel test
//! processes never share addresses or interface names, and a crashed process's lease is
//! released by the kernel. Dropping the fixture deletes the veth pair, the namespace and the
//! lease file.

use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::command::{CommandOutput, run_bounded, run_checked};

/// Lease files, one per /30 in use (`<index as 4 hex digits>`).
pub const LEASE_DIR: &str = "/run/chaos-test-netns-leases";
/// The private range the fixtures carve /30s out of.
pub const SUBNET_BASE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
/// A /16 holds 16384 /30s.
const SUBNET_COUNT: u32 = 1 << 14;
pub const PREFIX_LEN: u8 = 30;
/// Name of the namespace side of the veth, as a pod sees its interface.
pub const INNER_IFNAME: &str = "eth0";
/// IPv6 networks of the fixtures ([`TestNetns::add_ipv6`]): `fd00:c4a0:0:<lease>::/64`.
pub const IPV6_BASE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc4a0, 0, 0, 0, 0, 0, 0);
pub const IPV6_PREFIX_LEN: u8 = 64;
/// Where `ip netns add` puts the namespace handle.
const NETNS_DIR: &str = "/var/run/netns";
const IP_TIMEOUT: Duration = Duration::from_secs(30);
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Spreads the first lease attempt of fixtures created by one process.
static FIXTURE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace `chaos-test-net-XXXX` with veth `chaos-test-XXXX` (host) ↔ `eth0` (inside).
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    host_ifname: String,
    host_ip: Ipv4Addr,
    inner_ip: Ipv4Addr,
    /// Declared last: released only after the links and the namespace are gone.
    lease: SubnetLease,
}

impl TestNetns {
    /// Creates the namespace, the veth pair, addresses, links up, `lo` up and the default route.
    pub fn create() -> Result<TestNetns> {
        let lease = SubnetLease::acquire()?;
        let index = lease.index;
        let base = u32::from(SUBNET_BASE) + index * 4;
        let netns = TestNetns {
            name: format!("chaos-test-net-{index:04x}"),
            // IFNAMSIZ allows 15 characters: "chaos-test-" plus four hex digits.
            host_ifname: format!("chaos-test-{index:04x}"),
            host_ip: Ipv4Addr::from(base + 1),
            inner_ip: Ipv4Addr::from(base + 2),
            lease,
        };
        // A process that died without cleaning up may have left links under this lease's names;
        // the lease is ours now, so they are orphans.
        netns.delete_links_and_namespace();
        netns
            .build()
            .with_context(|| format!("creating network namespace {}", netns.name))?;
        Ok(netns)
    }

    fn build(&self) -> Result<()> {
        let (name, host, inner) = (self.name.as_str(), self.host_ifname.as_str(), INNER_IFNAME);
        let host_cidr = format!("{}/{PREFIX_LEN}", self.host_ip);
        let inner_cidr = format!("{}/{PREFIX_LEN}", self.inner_ip);
        let host_ip = self.host_ip.to_string();
        ip(&["netns", "add", name])?;
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", inner, "netns", name,
        ])?;
        ip(&["addr", "add", &host_cidr, "dev", host])?;
        ip(&["link", "set", host, "up"])?;
        ip(&["-n", name, "addr", "add", &inner_cidr, "dev", inner])?;
        ip(&["-n", name, "link", "set", inner, "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        ip(&["-n", name, "route", "add", "default", "via", &host_ip])?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/NAME`, for `ctr run --with-ns network:PATH` or setns(2).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    pub fn inner_ip(&self) -> Ipv4Addr {
        self.inner_ip
    }

    pub fn prefix_len(&self) -> u8 {
        PREFIX_LEN
    }

    /// Adds IPv6 to the veth pair (fixtures have IPv4 only unless asked): the lease's /64
    /// out of [`IPV6_BASE`], `::1` and `::3` on the host end, `::2` inside, without
    /// duplicate address detection so they work at once. Removed with the links.
    pub fn add_ipv6(&self) -> Result<()> {
        let with_prefix = |addr: Ipv6Addr| format!("{addr}/{IPV6_PREFIX_LEN}");
        for addr in [self.host_ipv6(), self.second_host_ipv6()] {
            ip(&[
                "-6",
                "addr",
                "add",
                &with_prefix(addr),
                "dev",
                &self.host_ifname,
                "nodad",
            ])?;
        }
        ip(&[
            "-n",
            &self.name,
            "-6",
            "addr",
            "add",
            &with_prefix(self.inner_ipv6()),
            "dev",
            INNER_IFNAME,
            "nodad",
        ])?;
        Ok(())
    }

    fn ipv6(&self, host: u16) -> Ipv6Addr {
        let mut segments = IPV6_BASE.segments();
        segments[3] = self.lease.index as u16;
        segments[7] = host;
        Ipv6Addr::from(segments)
    }

    /// The lease's IPv6 /64 network address (after [`TestNetns::add_ipv6`]).
    pub fn ipv6_network(&self) -> Ipv6Addr {
        self.ipv6(0)
    }

    /// The host end's IPv6 address `::1` (after [`TestNetns::add_ipv6`]).
    pub fn host_ipv6(&self) -> Ipv6Addr {
        self.ipv6(1)
    }

    /// A second IPv6 address of the host end, `::3`: another peer on the same link.
    pub fn second_host_ipv6(&self) -> Ipv6Addr {
        self.ipv6(3)
    }

    /// The namespace side's IPv6 address `::2`.
    pub fn inner_ipv6(&self) -> Ipv6Addr {
        self.ipv6(2)
    }

    /// The veth end in the root namespace.
    pub fn host_ifname(&self) -> &str {
        &self.host_ifname
    }

    /// The veth end inside the namespace (`eth0`).
    pub fn inner_ifname(&self) -> &str {
        INNER_IFNAME
    }

    /// Pins the host end's MAC as a permanent neighbour inside the namespace, so no ARP request
    /// or probe has to cross `eth0`. A test that counts packets through a lossy qdisc needs this:
    /// a dropped ARP request parks the first packets in the neighbour queue, which drops what
    /// overflows it, and that loss is not the qdisc's.
    pub fn pin_host_neighbour(&self) -> Result<()> {
        let mac_path = format!("/sys/class/net/{}/address", self.host_ifname);
        let mac =
            std::fs::read_to_string(&mac_path).with_context(|| format!("reading {mac_path}"))?;
        let host_ip = self.host_ip.to_string();
        ip(&[
            "-n",
            &self.name,
            "neigh",
            "replace",
            &host_ip,
            "lladdr",
            mac.trim(),
            "dev",
            INNER_IFNAME,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    /// Runs `argv` inside the namespace (`ip netns exec`), bounded in time; the result carries
    /// the exit status (call `.check()` to require success). For long-running servers spawn
    /// `ip netns exec NAME ...` yourself and kill it in a guard.
    pub fn exec(&self, argv: &[&str]) -> Result<CommandOutput> {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(argv);
        run_bounded("ip", &args, EXEC_TIMEOUT)
    }

    /// Best effort: deleting either veth end deletes the pair.
    fn delete_links_and_namespace(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if Path::new("/sys/class/net").join(&self.host_ifname).exists()
            && let Err(error) = ip(&["link", "del", &self.host_ifname])
        {
            problems.push(error.to_string());
        }
        if self.path().exists()
            && let Err(error) = ip(&["netns", "del", &self.name])
        {
            problems.push(error.to_string());
        }
        problems
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        for problem in self.delete_links_and_namespace() {
            eprintln!(
                "chaos-tests: cleaning up netns {} (lease {}): {problem}",
                self.name, self.lease.index
            );
        }
    }
}

fn ip(args: &[&str]) -> Result<CommandOutput> {
    run_checked("ip", args, IP_TIMEOUT)
}

/// Exclusive ownership of /30 number `index`, held as a `flock` on `LEASE_DIR/<index>`.
#[derive(Debug)]
struct SubnetLease {
    index: u32,
    path: PathBuf,
    /// The open, locked file: dropping it releases the lock.
    _file: Flock<File>,
}

impl SubnetLease {
    fn acquire() -> Result<SubnetLease> {
        fs::create_dir_all(LEASE_DIR).with_context(|| format!("creating {LEASE_DIR}"))?;
        let counter = FIXTURE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let start = first_candidate(std::process::id(), counter);
        for step in 0..SUBNET_COUNT {
            let index = (start + step) % SUBNET_COUNT;
            if let Some(lease) = Self::try_lock(index)? {
                return Ok(lease);
            }
        }
        bail!("all {SUBNET_COUNT} test subnets in {SUBNET_BASE}/16 are leased (see {LEASE_DIR})")
    }

    fn try_lock(index: u32) -> Result<Option<SubnetLease>> {
        let path = Path::new(LEASE_DIR).join(format!("{index:04x}"));
        let file = open_lease_file(&path)?;
        let Ok(file) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            return Ok(None);
        };
        // A releasing owner unlinks the file before closing it, so we may have locked an
        // unlinked inode while someone else locks a new file at the same path: only a lock on
        // the file currently at the path counts.
        let locked = file.metadata().context("stat of the locked lease")?;
        match fs::metadata(&path) {
            Ok(current) if current.ino() == locked.ino() && current.dev() == locked.dev() => {
                Ok(Some(SubnetLease {
                    index,
                    path,
                    _file: file,
                }))
            }
            _ => Ok(None),
        }
    }
}

impl Drop for SubnetLease {
    fn drop(&mut self) {
        // Unlink while still holding the lock (see try_lock); the lock goes with the file.
        let _ = fs::remove_file(&self.path);
        // Leaves the directory behind only while other leases are in it.
        let _ = fs::remove_dir(LEASE_DIR);
    }
}

/// Opens (creating) a lease file. Another process releasing the last lease may remove
/// [`LEASE_DIR`] between our `create_dir_all` and `open`, so a missing directory is re-created.
fn open_lease_file(path: &Path) -> Result<File> {
    let mut attempts_left = 5;
    loop {
        match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
        {
            Ok(file) => return Ok(file),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && attempts_left > 0 => {
                attempts_left -= 1;
                fs::create_dir_all(LEASE_DIR).with_context(|| format!("creating {LEASE_DIR}"))?;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("opening lease {}", path.display()));
            }
        }
    }
}

/// Where a process starts probing, so that parallel processes rarely contend for one lease.
fn first_candidate(pid: u32, counter: u32) -> u32 {
    pid.wrapping_mul(2_654_435_761)
        .wrapping_add(counter.wrapping_mul(97))
        % SUBNET_COUNT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_stay_in_range() {
        for pid in [1, 4947, 4_194_304] {
            for counter in [0, 1, 1000] {
                assert!(first_candidate(pid, counter) < SUBNET_COUNT);
            }
        }
        assert_ne!(first_candidate(100, 0), first_candidate(100, 1));
    }

    #[test]
    fn last_subnet_stays_inside_the_range() {
        let last = u32::from(SUBNET_BASE) + (SUBNET_COUNT - 1) * 4;
        assert_eq!(Ipv4Addr::from(last + 2), Ipv4Addr::new(10, 213, 255, 254));
    }
}
