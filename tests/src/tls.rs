//! TLS directories for tests: laid out as the kubelet mounts a secret, so a test can
//! rotate certificates as cert-manager and the kubelet do.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

/// The agent's files in its TLS directory; the key is the last.
pub const AGENT_TLS_FILES: [&str; 3] = ["ca.pem", "agent.pem", "agent-key.pem"];
/// `chaosctl serve`'s API files; the key is the last.
pub const CONTROLLER_TLS_FILES: [&str; 3] = ["ca.pem", "controller.pem", "controller-key.pem"];

/// Each file a symlink through `..data` to a directory of one generation; an update
/// writes a new generation and renames a new `..data` over the old, atomically.
pub struct SecretVolume {
    pub root: tempfile::TempDir,
    files: [&'static str; 3],
    generation: u32,
}

impl SecretVolume {
    /// A volume holding `files` copied from `first` (a directory `chaosctl certs` wrote).
    pub fn new(first: &Path, files: &[&'static str; 3]) -> Result<SecretVolume> {
        let root = tempfile::Builder::new()
            .prefix("chaos-test-secret-")
            .tempdir()?;
        let mut volume = SecretVolume {
            root,
            files: *files,
            generation: 0,
        };
        volume.update(first, None)?;
        for name in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.root.path().join(name))?;
        }
        Ok(volume)
    }

    /// Publishes the files of `certs`, with the key taken from `key_from` if given (a
    /// set caught mid-rotation).
    pub fn update(&mut self, certs: &Path, key_from: Option<&Path>) -> Result<()> {
        self.generation += 1;
        let name = format!("..gen_{}", self.generation);
        let generation = self.root.path().join(&name);
        std::fs::create_dir(&generation)?;
        let key = self.files[2];
        for file in self.files {
            let from = match key_from {
                Some(other) if file == key => other,
                _ => certs,
            };
            std::fs::copy(from.join(file), generation.join(file))?;
        }
        let staged = self.root.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &staged)?;
        std::fs::rename(&staged, self.root.path().join("..data"))?;
        Ok(())
    }
}

/// Polls `check` every 200 ms until it holds, for up to 15 s (scaled).
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + crate::scaled(Duration::from_secs(15));
    while !check().await {
        if Instant::now() > deadline {
            anyhow::bail!("not in time: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
