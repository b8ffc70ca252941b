//! The agent's mTLS files: its certificate, and the CA that client certificates must
//! chain to. A client without a valid certificate is refused during the handshake.
//! They are read again while the agent runs (chaos-tls), so a renewed certificate is
//! served before the old one expires.

use std::path::Path;

use chaos_tls::TlsFiles;

pub const CA_FILE: &str = "ca.pem";
pub const AGENT_CERT_FILE: &str = "agent.pem";
pub const AGENT_KEY_FILE: &str = "agent-key.pem";

pub fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        dir: dir.to_path_buf(),
        cert: AGENT_CERT_FILE,
        key: AGENT_KEY_FILE,
        ca: CA_FILE,
    }
}
