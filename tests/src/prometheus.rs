//! Debian's Prometheus (2.42) on loopback, serving HTTPS with the controller certificate
//! of a `chaosctl certs` directory and scraping itself over it every second. Killed and
//! reaped on drop; its data directory is removed with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agent::free_port;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// How long Prometheus may take to say it is ready (its TSDB starts empty).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestPrometheus {
    pub address: SocketAddr,
    child: Child,
    log: PathBuf,
    _work: tempfile::TempDir,
}

impl TestPrometheus {
    /// Serves `https://127.0.0.1:PORT` with `controller.pem` / `controller-key.pem` of
    /// `tls_dir`; the job `prometheus` scrapes it through `ca.pem`.
    pub fn start_https(tls_dir: &Path) -> Result<TestPrometheus> {
        if !Path::new(PROMETHEUS).is_file() {
            bail!("{PROMETHEUS} is missing: install Debian's `prometheus` package");
        }
        let work = tempfile::Builder::new()
            .prefix("chaos-test-prometheus-")
            .tempdir()?;
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let web = work.path().join("web.yml");
        std::fs::write(
            &web,
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                tls_dir.join("controller.pem").display(),
                tls_dir.join("controller-key.pem").display()
            ),
        )?;
        let config = work.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    scheme: https
    tls_config:
      ca_file: {}
    static_configs:
      - targets: [\"{address}\"]
",
                tls_dir.join("ca.pem").display()
            ),
        )?;
        let log = work.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.config.file={}", web.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {PROMETHEUS}"))?;
        let mut prometheus = TestPrometheus {
            address,
            child,
            log,
            _work: work,
        };
        prometheus.wait_ready()?;
        Ok(prometheus)
    }

    /// Until Prometheus logs that it serves requests (polled every 100 ms, bounded).
    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if self
                .log()
                .contains("Server is ready to receive web requests")
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("Prometheus exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("Prometheus never became ready:\n{}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
