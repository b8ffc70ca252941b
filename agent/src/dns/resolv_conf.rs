//! The nameservers a target resolves through: its own `/etc/resolv.conf`, read inside its
//! root (openat2 with RESOLVE_IN_ROOT, so a symlink in the container's tree, such as
//! systemd-resolved's stub, resolves within it and never reaches the node's files). The
//! parsing is pure.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

/// glibc's MAXNS: a resolver uses the first three `nameserver` lines and ignores the rest, so
/// the fault redirects exactly those.
pub const MAX_NAMESERVERS: usize = 3;
/// A resolv.conf longer than this is not one (kubelet writes a few hundred bytes).
const MAX_RESOLV_CONF: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolvConfError {
    #[error("cannot read /etc/resolv.conf of the target: {0}")]
    Read(String),
    #[error(
        "/etc/resolv.conf of the target names no nameserver: its lookups do not go through a \
         resolver a DNS fault could stand in for"
    )]
    NoNameserver,
    #[error(
        "/etc/resolv.conf of the target names nameserver {0:?}, which is not an IP address this \
         fault can redirect (a link-local address with a zone is not supported)"
    )]
    BadNameserver(String),
}

/// The nameservers `text` (a resolv.conf) names, in order, at most [`MAX_NAMESERVERS`],
/// without repeats. A line is `nameserver ADDRESS`; `#` and `;` start comments, as glibc
/// reads them.
pub fn nameservers(text: &str) -> Result<Vec<IpAddr>, ResolvConfError> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(address) = words.next() else {
            continue;
        };
        if found.len() == MAX_NAMESERVERS {
            break;
        }
        let address: IpAddr = address
            .parse()
            .map_err(|_| ResolvConfError::BadNameserver(address.to_string()))?;
        if !found.contains(&address) {
            found.push(address);
        }
    }
    if found.is_empty() {
        return Err(ResolvConfError::NoNameserver);
    }
    Ok(found)
}

/// Reads `etc/resolv.conf` inside `root` (a target's `/proc/PID/root`).
pub fn read_in_root(root: &Path) -> Result<String, ResolvConfError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let read_error = |e: std::io::Error| ResolvConfError::Read(e.to_string());
    let dir = std::fs::File::open(root).map_err(read_error)?;
    let file = rustix::fs::openat2(
        &dir,
        "etc/resolv.conf",
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| read_error(e.into()))?;
    let mut text = String::new();
    std::fs::File::from(file)
        .take(MAX_RESOLV_CONF)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubelet_resolv_conf_names_its_cluster_dns() {
        let text = "search dev.svc.cluster.local svc.cluster.local cluster.local\n\
                    nameserver 10.96.0.10\noptions ndots:5\n";
        assert_eq!(nameservers(text), Ok(vec!["10.96.0.10".parse().unwrap()]));
    }

    #[test]
    fn the_first_three_distinct_nameservers_count_and_comments_do_not() {
        let text = "# nameserver 9.9.9.9\nnameserver 10.0.0.2 ; primary\n  nameserver\tfd00::53\n\
                    nameserver 10.0.0.2\nnameserver 127.0.0.53\nnameserver 10.0.0.4\nnameserver x\n";
        assert_eq!(
            nameservers(text),
            Ok(vec![
                "10.0.0.2".parse().unwrap(),
                "fd00::53".parse().unwrap(),
                "127.0.0.53".parse().unwrap(),
            ])
        );
    }

    #[test]
    fn no_nameserver_and_a_zoned_address_are_refused() {
        assert_eq!(
            nameservers("search example\n"),
            Err(ResolvConfError::NoNameserver)
        );
        assert_eq!(nameservers(""), Err(ResolvConfError::NoNameserver));
        assert_eq!(
            nameservers("nameserver fe80::1%eth0\n"),
            Err(ResolvConfError::BadNameserver("fe80::1%eth0".into()))
        );
    }

    #[test]
    fn a_symlink_in_the_root_resolves_inside_it() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::create_dir_all(root.path().join("run")).unwrap();
        std::fs::write(root.path().join("run/stub"), "nameserver 10.9.9.9\n").unwrap();
        // Absolute, as systemd-resolved's is: it must land in `root`, not in the node's /run.
        std::os::unix::fs::symlink("/run/stub", root.path().join("etc/resolv.conf")).unwrap();
        let text = read_in_root(root.path()).unwrap();
        assert_eq!(nameservers(&text), Ok(vec!["10.9.9.9".parse().unwrap()]));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_in_root(empty.path()),
            Err(ResolvConfError::Read(_))
        ));
    }
}
