//! A real PostgreSQL server (Debian's postgresql-15) in a containerd container, for
//! experiments that kill a database and measure pgbench through it.
//!
//! The container's root is the usual busybox one; the host's `/usr/lib`, `/usr/lib64` and
//! `/usr/share` are mounted read-only for the server's binary, libraries and time zones,
//! and a data directory made by `initdb` on the host is its one read-write volume. Its
//! init is a shell that starts the server again a second after it dies, as a pod's
//! restart would; the server runs as the host's `postgres` user (it refuses root).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::containerd::{ContainerSpec, TestContainer};
use crate::netns::TestNetns;

/// The newest `/usr/lib/postgresql/N/bin`: the server and initdb live there.
fn server_bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context(
            "no /usr/lib/postgresql: apt-get install postgresql-15 (scripts/lib/dependencies.sh)",
        )?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL server under /usr/lib/postgresql/*/bin")
}

fn id_of(flag: &str) -> Result<u32> {
    let out = Command::new("id").args([flag, "postgres"]).output()?;
    if !out.status.success() {
        bail!("no `postgres` user (the postgresql-15 package makes it)");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

pub struct PostgresContainer {
    pub container: TestContainer,
    pub address: IpAddr,
    /// Holds the data directory and the container's /etc; removed on drop, after the
    /// container (fields drop in order).
    _files: TempDir,
}

impl PostgresContainer {
    /// Starts the server in `netns` as container `postgres` of pod `db/POD` and waits
    /// until it answers SQL; then `pgbench -i` fills its `postgres` database.
    pub fn start(netns: &TestNetns, pod: &str) -> Result<PostgresContainer> {
        let bin = server_bin_dir()?;
        let (uid, gid) = (id_of("-u")?, id_of("-g")?);
        let files = tempfile::Builder::new()
            .prefix("chaos-test-pg.")
            .tempdir()?;
        std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755))?;
        let data = files.path().join("data");
        std::fs::create_dir(&data)?;
        std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
        initdb(&bin, &data)?;

        let etc = files.path().join("etc");
        std::fs::create_dir(&etc)?;
        std::fs::write(
            etc.join("passwd"),
            format!("root:x:0:0::/root:/bin/sh\npostgres:x:{uid}:{gid}::/data:/bin/sh\n"),
        )?;
        std::fs::write(etc.join("group"), format!("root:x:0:\npostgres:x:{gid}:\n"))?;

        let server = bin.join("postgres");
        let script = format!(
            "while :; do su postgres -s /bin/sh -c 'exec {} -D /data'; sleep 1; done",
            server.display()
        );
        let mut spec = ContainerSpec::pod("db", pod, "postgres");
        spec.command = vec!["/bin/sh".into(), "-c".into(), script];
        spec.netns = Some(netns.path());
        spec.bind_mounts = vec![(data.clone(), "/data".into())];
        spec.read_only_mounts = vec![
            ("/usr/lib".into(), "/usr/lib".into()),
            ("/usr/lib".into(), "/lib".into()),
            ("/usr/lib64".into(), "/lib64".into()),
            ("/usr/share".into(), "/usr/share".into()),
            (etc, "/etc".into()),
        ];
        let container = TestContainer::start(spec)?;
        let postgres = PostgresContainer {
            container,
            address: netns.inner_ip().into(),
            _files: files,
        };
        postgres.wait_ready(Duration::from_secs(60))?;
        let init = Command::new("pgbench")
            .args(["-i", "-s", "1", "-q", &postgres.url()])
            .output()?;
        if !init.status.success() {
            bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
        }
        Ok(postgres)
    }

    /// A libpq URL of the `postgres` database as the `postgres` user (trusted).
    pub fn url(&self) -> String {
        format!("postgresql://postgres@{}:5432/postgres", self.address)
    }

    /// Waits until `select 1` answers.
    pub fn wait_ready(&self, within: Duration) -> Result<()> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < within {
            let out = Command::new("psql")
                .args([&self.url(), "-tAc", "select 1"])
                .env("PGCONNECT_TIMEOUT", "2")
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "PostgreSQL never answered within {within:?}: {last}; its log: {}",
            self.container.log().unwrap_or_default()
        )
    }
}

/// `initdb` as `postgres`, trusting every connection (a test server in its own netns),
/// listening on every address of the netns, no Unix socket (its directory is not there).
fn initdb(bin: &Path, data: &Path) -> Result<()> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("initdb"))
        .args(["-A", "trust", "--locale=C", "-E", "UTF8", "--no-sync", "-D"])
        .arg(data)
        .output()?;
    if !out.status.success() {
        bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
    }
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)?;
    text.push_str("\nlisten_addresses = '*'\nunix_socket_directories = ''\n");
    std::fs::write(&conf, text)?;
    let hba = data.join("pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba)?;
    text.push_str("\nhost all all 0.0.0.0/0 trust\n");
    std::fs::write(&hba, text)?;
    Ok(())
}
