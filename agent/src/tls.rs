//! The agent's mTLS configuration: its certificate, and the CA that client
//! certificates must chain to. A client without a valid certificate is refused
//! during the handshake.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

pub const CA_FILE: &str = "ca.pem";
pub const AGENT_CERT_FILE: &str = "agent.pem";
pub const AGENT_KEY_FILE: &str = "agent-key.pem";

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source} (create the files with `chaosctl certs --out DIR`)")]
pub struct TlsError {
    path: PathBuf,
    source: std::io::Error,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, TlsError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| TlsError { path, source })
}

pub fn server_config(dir: &Path) -> Result<ServerTlsConfig, TlsError> {
    let identity = Identity::from_pem(read(dir, AGENT_CERT_FILE)?, read(dir, AGENT_KEY_FILE)?);
    let ca = Certificate::from_pem(read(dir, CA_FILE)?);
    // client_ca_root makes client certificates mandatory (client_auth_optional is false).
    Ok(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
}
