//! `chaosctl certs`: a development CA with an agent, a controller (`chaosctl serve`'s
//! API) and a client certificate for mTLS. Production clusters should use cert-manager (see manifests/).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The name clients expect in the agent's certificate, whatever address they dial:
/// agents are reached by pod IP, so the certificate cannot name them all.
pub const AGENT_SERVER_NAME: &str = "chaos-agent";

/// The name clients expect in the certificate of `chaosctl serve`'s API.
pub const CONTROLLER_SERVER_NAME: &str = "chaos-controller";

pub const CA_FILE: &str = "ca.pem";
pub const AGENT_CERT_FILE: &str = "agent.pem";
pub const AGENT_KEY_FILE: &str = "agent-key.pem";
pub const CONTROLLER_CERT_FILE: &str = "controller.pem";
pub const CONTROLLER_KEY_FILE: &str = "controller-key.pem";
pub const CLIENT_CERT_FILE: &str = "client.pem";
pub const CLIENT_KEY_FILE: &str = "client-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists; pass --force to overwrite")]
    Exists(PathBuf),
}

/// The default subject alternative names of the agent certificate.
pub fn default_agent_names() -> Vec<String> {
    [
        AGENT_SERVER_NAME,
        "chaos-agent.chaos-control.svc",
        "chaos-agent.chaos-control.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "::1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The subject alternative names of the controller certificate.
pub fn controller_names() -> Vec<String> {
    [
        CONTROLLER_SERVER_NAME,
        "chaos-controller.chaos-control.svc",
        "chaos-controller.chaos-control.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "::1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), CertsError> {
    if path.exists() && !force {
        return Err(CertsError::Exists(path.to_path_buf()));
    }
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    Ok(())
}

/// Writes ca.pem, agent.pem, agent-key.pem, controller.pem, controller-key.pem,
/// client.pem and client-key.pem into `out`.
/// The CA's private key is not kept: regenerate everything to rotate.
pub fn generate(
    out: &Path,
    agent_names: &[String],
    force: bool,
) -> Result<Vec<PathBuf>, CertsError> {
    std::fs::create_dir_all(out).map_err(|source| CertsError::Io {
        path: out.to_path_buf(),
        source,
    })?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Chaos Control development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut agent_params = CertificateParams::new(agent_names.to_vec())?;
    agent_params
        .distinguished_name
        .push(DnType::CommonName, AGENT_SERVER_NAME);
    agent_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    agent_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let agent_key = KeyPair::generate()?;
    let agent = agent_params.signed_by(&agent_key, &ca)?;

    let mut controller_params = CertificateParams::new(controller_names())?;
    controller_params
        .distinguished_name
        .push(DnType::CommonName, CONTROLLER_SERVER_NAME);
    controller_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    controller_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let controller_key = KeyPair::generate()?;
    let controller = controller_params.signed_by(&controller_key, &ca)?;

    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "chaosctl");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let client_key = KeyPair::generate()?;
    let client = client_params.signed_by(&client_key, &ca)?;

    let files = [
        (CA_FILE, ca.pem(), 0o644),
        (AGENT_CERT_FILE, agent.pem(), 0o644),
        (AGENT_KEY_FILE, agent_key.serialize_pem(), 0o600),
        (CONTROLLER_CERT_FILE, controller.pem(), 0o644),
        (CONTROLLER_KEY_FILE, controller_key.serialize_pem(), 0o600),
        (CLIENT_CERT_FILE, client.pem(), 0o644),
        (CLIENT_KEY_FILE, client_key.serialize_pem(), 0o600),
    ];
    // Check first, so a refusal leaves no half-written set behind.
    if !force && let Some((name, _, _)) = files.iter().find(|(name, _, _)| out.join(name).exists())
    {
        return Err(CertsError::Exists(out.join(name)));
    }
    let mut written = Vec::new();
    for (name, pem, mode) in files {
        let path = out.join(name);
        write_file(&path, &pem, mode, true)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_seven_pem_files_with_private_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(dir.path(), &default_agent_names(), false).unwrap();
        assert_eq!(written.len(), 7);
        for path in &written {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("-----BEGIN"), "{}", path.display());
        }
        let key_mode = std::fs::metadata(dir.path().join(AGENT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let controller_key_mode = std::fs::metadata(dir.path().join(CONTROLLER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(controller_key_mode & 0o777, 0o600);
        assert!(matches!(
            generate(dir.path(), &default_agent_names(), false),
            Err(CertsError::Exists(_))
        ));
        generate(dir.path(), &default_agent_names(), true).unwrap();
    }
}
