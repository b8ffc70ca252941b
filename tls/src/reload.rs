//! The configuration new handshakes use, replaced when the files change.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;

use crate::config::{Pems, TlsError, TlsFiles, server_config};

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files hold what is already in use.
    Unchanged,
    /// New files loaded: new connections get them.
    Replaced,
}

struct Loaded {
    pems: Pems,
    config: Arc<ServerConfig>,
}

/// A server's TLS configuration, read from its files at start and again on `reload`.
pub struct ReloadingTls {
    files: TlsFiles,
    loaded: RwLock<Loaded>,
}

impl ReloadingTls {
    /// Reads and checks the files; a server must not start without a usable set.
    pub fn load(files: TlsFiles) -> Result<ReloadingTls, TlsError> {
        let pems = Pems::read(&files)?;
        let config = Arc::new(server_config(&pems, &files)?);
        Ok(ReloadingTls {
            files,
            loaded: RwLock::new(Loaded { pems, config }),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        let loaded = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&loaded.config)
    }

    /// Reads the files again. A set that does not load (a file missing, or a key that
    /// does not match its certificate, as when the files are caught mid-rotation)
    /// leaves the previous configuration in use and is tried again next time: the
    /// bytes are compared with what is in use, not with what failed.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let pems = Pems::read(&self.files)?;
        if self
            .loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pems
            == pems
        {
            return Ok(Reload::Unchanged);
        }
        let config = Arc::new(server_config(&pems, &self.files)?);
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Loaded { pems, config };
        Ok(Reload::Replaced)
    }
}

/// Reloads every `interval`, forever, logging each change and each failure and
/// passing every result to `report` (for a metric).
pub async fn keep_reloading(
    tls: Arc<ReloadingTls>,
    interval: Duration,
    mut report: impl FnMut(&Result<Reload, TlsError>),
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the files were just loaded
    loop {
        ticker.tick().await;
        let result = tls.reload();
        match &result {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Replaced) => tracing::info!(
                dir = %tls.files().dir.display(),
                "TLS files changed: new connections use the new certificate and CA"
            ),
            Err(error) => tracing::warn!(
                %error,
                "TLS files cannot be loaded; new connections keep the previous certificate and CA"
            ),
        }
        report(&result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{files, test_pki, write};

    #[test]
    fn unchanged_files_keep_the_same_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &test_pki());
        let tls = ReloadingTls::load(files(dir.path())).expect("load");
        let before = tls.config();
        assert_eq!(tls.reload().expect("reload"), Reload::Unchanged);
        assert!(Arc::ptr_eq(&before, &tls.config()));
    }

    #[test]
    fn a_rotated_set_replaces_the_config_and_a_broken_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &test_pki());
        let tls = ReloadingTls::load(files(dir.path())).expect("load");
        let first = tls.config();

        write(dir.path(), &test_pki());
        assert_eq!(tls.reload().expect("reload"), Reload::Replaced);
        let second = tls.config();
        assert!(!Arc::ptr_eq(&first, &second));

        // Caught mid-rotation: a new key beside the old certificate.
        let next = test_pki();
        std::fs::write(dir.path().join("server-key.pem"), &next.server_key).expect("key");
        assert!(matches!(tls.reload(), Err(TlsError::Identity { .. })));
        assert!(Arc::ptr_eq(&second, &tls.config()), "a broken set was used");
        // The same broken bytes fail again (compared with what is in use, not cached).
        assert!(tls.reload().is_err());

        // The rest of the rotation lands: loaded on the next try.
        write(dir.path(), &next);
        assert_eq!(tls.reload().expect("reload"), Reload::Replaced);

        std::fs::remove_file(dir.path().join("ca.pem")).expect("remove CA");
        assert!(matches!(tls.reload(), Err(TlsError::Read { .. })));
    }

    #[test]
    fn a_server_does_not_start_on_an_unusable_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (one, other) = (test_pki(), test_pki());
        write(dir.path(), &one);
        std::fs::write(dir.path().join("server-key.pem"), &other.server_key).expect("key");
        assert!(ReloadingTls::load(files(dir.path())).is_err());
    }
}
