//! Connecting to an agent: mTLS with the client certificate from the TLS dir, or
//! plain text when explicitly asked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chaos_proto::api::agent_client::AgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::agents::certs::{AGENT_SERVER_NAME, CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no TLS directory: pass --tls-dir (or CHAOS_TLS_DIR) with ca.pem, client.pem, client-key.pem, or --insecure-plaintext"
    )]
    NoTls,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent address `{0}` is not valid: {1}")]
    Address(String, String),
    #[error("cannot reach the agent at {0}: {1}")]
    Transport(String, String),
}

#[derive(Debug, Clone)]
pub struct AgentAddress {
    pub address: String,
    pub tls_dir: Option<PathBuf>,
    pub plaintext: bool,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, ConnectError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| ConnectError::Read { path, source })
}

pub fn endpoint(target: &AgentAddress) -> Result<Endpoint, ConnectError> {
    endpoint_for(target, AGENT_SERVER_NAME)
}

/// An endpoint whose TLS peer must present a certificate for `server_name` (the agent's,
/// or the controller's for `chaosctl submit`).
pub fn endpoint_for(target: &AgentAddress, server_name: &str) -> Result<Endpoint, ConnectError> {
    let scheme = if target.plaintext { "http" } else { "https" };
    let uri = if target.address.contains("://") {
        target.address.clone()
    } else {
        format!("{scheme}://{}", target.address)
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ConnectError::Address(target.address.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    if !target.plaintext {
        let dir = target.tls_dir.as_deref().ok_or(ConnectError::NoTls)?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(dir, CA_FILE)?))
            .identity(Identity::from_pem(
                read(dir, CLIENT_CERT_FILE)?,
                read(dir, CLIENT_KEY_FILE)?,
            ))
            .domain_name(server_name);
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ConnectError::Address(target.address.clone(), e.to_string()))?;
    }
    Ok(endpoint)
}

pub async fn connect(target: &AgentAddress) -> Result<AgentClient<Channel>, ConnectError> {
    let channel = endpoint(target)?
        .connect()
        .await
        .map_err(|e| ConnectError::Transport(target.address.clone(), error_chain(&e)))?;
    Ok(AgentClient::new(channel))
}

/// The whole chain of causes: transport errors hide the useful part (a refused
/// certificate, a closed port) in their sources.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
