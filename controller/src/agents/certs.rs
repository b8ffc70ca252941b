//! `chaosctl certs`: a development CA with an agent, a controller (`chaosctl serve`'s
//! API) and a client certificate for mTLS, plus one client certificate per person
//! (`--client NAME:ROLE`). A client certificate's Subject CN is the caller's identity
//! and its Subject O the role the agents' default policy gives it.
//! Production clusters should use cert-manager (see manifests/, docs/eks.md).

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

/// The identity of the default client certificate (client.pem): an admin, so the
/// demo and scripts that use it can do everything they did before roles existed.
pub const DEFAULT_CLIENT_IDENTITY: &str = "chaosctl";

/// The roles a client certificate's Subject O may name (the agents' default policy).
pub const ROLES: [&str; 3] = ["admin", "operator", "viewer"];

/// One extra client certificate: `NAME.pem` / `NAME-key.pem` with CN NAME and O ROLE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub name: String,
    pub role: String,
}

impl std::str::FromStr for ClientSpec {
    type Err = String;

    /// `NAME:ROLE`; NAME becomes a file name, so it is letters, digits, `.`, `_`, `-`.
    fn from_str(text: &str) -> Result<ClientSpec, String> {
        let (name, role) = text
            .split_once(':')
            .ok_or_else(|| format!("--client {text:?}: expected NAME:ROLE"))?;
        let name_ok = !name.is_empty()
            && !name.starts_with('.')
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(format!(
                "--client {text:?}: NAME must be 1-64 letters, digits, '.', '_' or '-' (not starting with '.')"
            ));
        }
        if !ROLES.contains(&role) {
            return Err(format!(
                "--client {text:?}: ROLE must be one of {}",
                ROLES.join(", ")
            ));
        }
        if [
            CA_FILE,
            AGENT_CERT_FILE,
            CONTROLLER_CERT_FILE,
            CLIENT_CERT_FILE,
        ]
        .contains(&format!("{name}.pem").as_str())
            || name.ends_with("-key")
        {
            return Err(format!(
                "--client {text:?}: {name}.pem would clash with another file"
            ));
        }
        Ok(ClientSpec {
            name: name.into(),
            role: role.into(),
        })
    }
}

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
    generate_with_clients(out, agent_names, &[], force)
}

/// A client certificate with Subject CN `identity` and O `role`, signed by `ca`.
fn client_certificate(
    ca: &CertifiedIssuer<'static, KeyPair>,
    identity: &str,
    role: &str,
) -> Result<(String, String), CertsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, identity);
    params
        .distinguished_name
        .push(DnType::OrganizationName, role);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// As [`generate`], and for each of `clients` NAME.pem and NAME-key.pem.
pub fn generate_with_clients(
    out: &Path,
    agent_names: &[String],
    clients: &[ClientSpec],
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

    let (client, client_key) = client_certificate(&ca, DEFAULT_CLIENT_IDENTITY, "admin")?;

    let mut files = vec![
        (CA_FILE.to_string(), ca.pem(), 0o644),
        (AGENT_CERT_FILE.to_string(), agent.pem(), 0o644),
        (AGENT_KEY_FILE.to_string(), agent_key.serialize_pem(), 0o600),
        (CONTROLLER_CERT_FILE.to_string(), controller.pem(), 0o644),
        (
            CONTROLLER_KEY_FILE.to_string(),
            controller_key.serialize_pem(),
            0o600,
        ),
        (CLIENT_CERT_FILE.to_string(), client, 0o644),
        (CLIENT_KEY_FILE.to_string(), client_key, 0o600),
    ];
    for spec in clients {
        let (cert, key) = client_certificate(&ca, &spec.name, &spec.role)?;
        files.push((format!("{}.pem", spec.name), cert, 0o644));
        files.push((format!("{}-key.pem", spec.name), key, 0o600));
    }
    // Check first, so a refusal leaves no half-written set behind.
    if !force && let Some((name, _, _)) = files.iter().find(|(name, _, _)| out.join(name).exists())
    {
        return Err(CertsError::Exists(out.join(name)));
    }
    let mut written = Vec::new();
    for (name, pem, mode) in files {
        let path = out.join(&name);
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

    #[test]
    fn client_specs_are_name_colon_role() {
        let spec: ClientSpec = "alice:operator".parse().unwrap();
        assert_eq!(spec.name, "alice");
        assert_eq!(spec.role, "operator");
        for bad in [
            "alice",
            "alice:root",
            ":admin",
            "../x:admin",
            "client:admin",
            "a-key:admin",
        ] {
            assert!(bad.parse::<ClientSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn per_person_client_certificates_carry_name_and_role() {
        let dir = tempfile::tempdir().unwrap();
        let clients = vec![
            "alice:operator".parse().unwrap(),
            "bob:viewer".parse().unwrap(),
        ];
        let written =
            generate_with_clients(dir.path(), &default_agent_names(), &clients, false).unwrap();
        assert_eq!(written.len(), 11);
        let alice = std::fs::read_to_string(dir.path().join("alice.pem")).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(alice.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let subject = cert.subject().to_string();
        assert!(
            subject.contains("CN=alice") && subject.contains("O=operator"),
            "{subject}"
        );
        let key_mode = std::fs::metadata(dir.path().join("bob-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
    }
}
