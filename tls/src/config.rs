//! From three PEM files (the server's certificate chain, its key, and the CA that
//! client certificates must chain to) to a rustls server configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Where a server's TLS files are: a directory and the three names in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub dir: PathBuf,
    pub cert: &'static str,
    pub key: &'static str,
    pub ca: &'static str,
}

impl TlsFiles {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}: {reason}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("the CA in {path} cannot verify client certificates: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("{cert} and {key} are not a usable certificate and key: {source}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The bytes of the three files, as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pems {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl Pems {
    pub fn read(files: &TlsFiles) -> Result<Pems, TlsError> {
        let read = |name: &str| {
            let path = files.path(name);
            std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
        };
        Ok(Pems {
            cert: read(files.cert)?,
            key: read(files.key)?,
            ca: read(files.ca)?,
        })
    }
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Pem {
        path: path.to_path_buf(),
        what: "certificate",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("the file has no CERTIFICATE section".into()));
    }
    Ok(certs)
}

/// A server configuration that demands a client certificate chaining to the CA, and
/// offers HTTP/2 by ALPN (gRPC). The key must match the certificate (rustls compares
/// their public keys), so a key and certificate caught from two different rotations
/// are refused rather than served.
pub fn server_config(pems: &Pems, files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let (cert_path, key_path, ca_path) = (
        files.path(files.cert),
        files.path(files.key),
        files.path(files.ca),
    );
    let chain = certificates(&pems.cert, &cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(&pems.key).map_err(|e| TlsError::Pem {
        path: key_path.clone(),
        what: "private key",
        reason: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(&pems.ca, &ca_path)? {
        roots.add(ca).map_err(|e| TlsError::Ca {
            path: ca_path.clone(),
            reason: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Ca {
            path: ca_path.clone(),
            reason: e.to_string(),
        })?;
    let identity = |source| TlsError::Identity {
        cert: cert_path.clone(),
        key: key_path.clone(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(identity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(identity)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    /// A CA, a server certificate for "server" and a client certificate, as PEM.
    pub struct TestPki {
        pub ca: String,
        pub server: String,
        pub server_key: String,
        pub client: String,
        pub client_key: String,
    }

    pub fn test_pki() -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let leaf = |name: &str| {
            let key = KeyPair::generate().expect("leaf key");
            let cert = CertificateParams::new(vec![name.to_string()])
                .expect("leaf params")
                .signed_by(&key, &ca)
                .expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf("server");
        let (client, client_key) = leaf("client");
        TestPki {
            ca: ca.pem(),
            server,
            server_key,
            client,
            client_key,
        }
    }

    pub fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            dir: dir.to_path_buf(),
            cert: "server.pem",
            key: "server-key.pem",
            ca: "ca.pem",
        }
    }

    /// Writes the server's three files of `pki` into `dir`, under the names of `files`.
    pub fn write(dir: &Path, pki: &TestPki) {
        std::fs::write(dir.join("server.pem"), &pki.server).expect("write cert");
        std::fs::write(dir.join("server-key.pem"), &pki.server_key).expect("write key");
        std::fs::write(dir.join("ca.pem"), &pki.ca).expect("write CA");
    }

    pub fn pems(pki: &TestPki) -> Pems {
        Pems {
            cert: pki.server.clone().into_bytes(),
            key: pki.server_key.clone().into_bytes(),
            ca: pki.ca.clone().into_bytes(),
        }
    }

    #[test]
    fn a_matching_set_makes_a_config_that_offers_h2() {
        // That it demands a client certificate is shown by real handshakes (incoming.rs).
        let pki = test_pki();
        let config = server_config(&pems(&pki), &files(Path::new("/x"))).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn a_key_from_another_rotation_is_refused() {
        let (old, new) = (test_pki(), test_pki());
        let mixed = Pems {
            key: new.server_key.into_bytes(),
            ..pems(&old)
        };
        let err = server_config(&mixed, &files(Path::new("/tls"))).expect_err("mismatch");
        assert!(
            matches!(err, TlsError::Identity { .. }),
            "unexpected error: {err}"
        );
        assert!(err.to_string().contains("/tls/server.pem"), "{err}");
    }

    #[test]
    fn files_without_pem_sections_are_named_in_the_error() {
        let pki = test_pki();
        let no_cert = Pems {
            cert: b"not a certificate".to_vec(),
            ..pems(&pki)
        };
        let err = server_config(&no_cert, &files(Path::new("/tls"))).expect_err("no cert");
        assert!(
            err.to_string()
                .starts_with("/tls/server.pem holds no PEM certificate"),
            "{err}"
        );
        let no_ca = Pems {
            ca: Vec::new(),
            ..pems(&pki)
        };
        let err = server_config(&no_ca, &files(Path::new("/tls"))).expect_err("no CA");
        assert!(err.to_string().starts_with("/tls/ca.pem"), "{err}");
        let no_key = Pems {
            key: pki.server.clone().into_bytes(),
            ..pems(&pki)
        };
        let err = server_config(&no_key, &files(Path::new("/tls"))).expect_err("no key");
        assert!(
            err.to_string()
                .starts_with("/tls/server-key.pem holds no PEM private key"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Pems::read(&files(Path::new("/nonexistent-chaos-tls"))).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent-chaos-tls/server.pem"),
            "{err}"
        );
    }
}
