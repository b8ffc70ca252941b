//! Who may do what: the caller's identity from its client certificate, its role from
//! the policy, and what each role may do. Pure decisions, unit-tested without TLS.
//!
//! Identity is the certificate's Subject CN. The default role is the one the Subject O
//! (organization) names, as Kubernetes reads client certificates: the CA that signs
//! the certificate is the authority for both. A policy file (`--authz-policy`) names
//! identities or `*` patterns and overrides that default for them.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use tonic::{Request, Status};

/// What a caller may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Capabilities, List, Get, ListTargets.
    Viewer,
    /// Also Inject and Revert of its own faults and RenewLease of its own leases,
    /// for targets in pods (optionally only in some namespaces).
    Operator,
    /// Everything: targets outside pods, any namespace, others' faults.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role a certificate's organization names; anything else is a viewer, so a
    /// certificate issued without thinking about roles can only look.
    pub fn from_organization(organization: Option<&str>) -> Role {
        match organization {
            Some("admin") => Role::Admin,
            Some("operator") => Role::Operator,
            _ => Role::Viewer,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names a client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateNames {
    pub common_name: String,
    pub organization: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("the client certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("the client certificate has no Subject CN: the CN is the caller's identity")]
    NoCommonName,
    #[error("{path}: {reason}")]
    Policy { path: String, reason: String },
}

/// Reads CN and O from a DER client certificate (the leaf the TLS handshake verified).
pub fn certificate_names(der: &[u8]) -> Result<CertificateNames, AuthzError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AuthzError::Certificate(e.to_string()))?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or(AuthzError::NoCommonName)?
        .to_string();
    let organization = subject
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .map(str::to_string);
    Ok(CertificateNames {
        common_name,
        organization,
    })
}

/// A caller as the agent decides about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: String,
    pub role: Role,
    /// Pod namespaces an operator is limited to; `None`: any (the policy decides which
    /// namespaces are protected for everyone).
    pub namespaces: Option<Vec<String>>,
}

impl Caller {
    /// `--insecure-plaintext` has no certificate: whoever reaches the port is trusted
    /// with everything, which that flag already says loudly.
    pub fn plaintext() -> Caller {
        Caller {
            identity: "insecure-plaintext".into(),
            role: Role::Admin,
            namespaces: None,
        }
    }

    /// Refuses a call the role does not include, naming identity, role and what it lacks.
    pub fn require(&self, needed: Role, what: &str) -> Result<(), String> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(format!(
                "{} (role {}) may not {what}: that needs role {needed}",
                self.identity, self.role
            ))
        }
    }

    /// Whether a target in pod namespace `namespace` (`None`: no pod, e.g. a host
    /// process or a node cgroup) is within this caller's reach.
    pub fn check_target(&self, target: &str, namespace: Option<&str>) -> Result<(), String> {
        if self.role == Role::Admin {
            return Ok(());
        }
        self.require(Role::Operator, &format!("inject into {target}"))?;
        let Some(namespace) = namespace.filter(|ns| !ns.is_empty()) else {
            return Err(format!(
                "{} (role {}) may not inject into {target}: it is in no pod, which needs role admin",
                self.identity, self.role
            ));
        };
        match &self.namespaces {
            Some(allowed) if !allowed.iter().any(|a| a == namespace) => Err(format!(
                "{} (role {}) may not inject into {target}: its namespace {namespace} is not one of [{}]",
                self.identity,
                self.role,
                allowed.join(", ")
            )),
            _ => Ok(()),
        }
    }

    /// Whether this caller may end or renew what `owner` created.
    pub fn may_touch(&self, owner: &str) -> bool {
        self.role == Role::Admin || owner.is_empty() || owner == self.identity
    }
}

/// One policy rule: identities (exact or with `*`) -> a role and, for operators,
/// namespaces.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub identity: String,
    pub role: Role,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
}

/// The authorization policy: rules in order, the first matching one wins; an identity
/// no rule names gets the role its certificate's O names, in every namespace.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Policy {
    pub fn parse(text: &str, path: &str) -> Result<Policy, AuthzError> {
        let policy: Policy = serde_norway::from_str(text).map_err(|e| AuthzError::Policy {
            path: path.into(),
            reason: e.to_string(),
        })?;
        for (i, rule) in policy.rules.iter().enumerate() {
            if rule.identity.is_empty() {
                return Err(AuthzError::Policy {
                    path: path.into(),
                    reason: format!("rules[{i}].identity is empty"),
                });
            }
            if rule.namespaces.is_some() && rule.role != Role::Operator {
                return Err(AuthzError::Policy {
                    path: path.into(),
                    reason: format!(
                        "rules[{i}].namespaces: only an operator is limited to namespaces (role {})",
                        rule.role
                    ),
                });
            }
        }
        Ok(policy)
    }

    pub fn load(path: &Path) -> Result<Policy, AuthzError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthzError::Policy {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Policy::parse(&text, &path.display().to_string())
    }

    pub fn caller(&self, names: &CertificateNames) -> Caller {
        match self
            .rules
            .iter()
            .find(|r| glob_matches(&r.identity, &names.common_name))
        {
            Some(rule) => Caller {
                identity: names.common_name.clone(),
                role: rule.role,
                namespaces: rule.namespaces.clone(),
            },
            None => Caller {
                identity: names.common_name.clone(),
                role: Role::from_organization(names.organization.as_deref()),
                namespaces: None,
            },
        }
    }
}

/// `*` matches any run of characters (also none); everything else matches itself.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let tail: Vec<&str> = parts.collect();
    let Some((last, middle)) = tail.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// How callers are known.
pub enum Access {
    /// mTLS: the verified client certificate names the caller, the policy its role.
    Certificates(Policy),
    /// `--insecure-plaintext`: no identity; every caller is `insecure-plaintext`, admin.
    Plaintext,
}

impl Access {
    /// The caller of a request; a TLS connection without a usable client certificate
    /// is Unauthenticated (the handshake already required one from the CA).
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let policy = match self {
            Access::Plaintext => return Ok(Caller::plaintext()),
            Access::Certificates(policy) => policy,
        };
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let names =
            certificate_names(leaf.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(policy.caller(&names))
    }
}

/// One audit line: who did what to which target and fault, and how it ended.
pub fn audit(
    peer: &str,
    caller: Option<&Caller>,
    method: &str,
    target: &str,
    fault: &str,
    result: Result<(), &Status>,
) {
    let identity = caller.map(|c| c.identity.as_str()).unwrap_or("unknown");
    let role = caller.map(|c| c.role.as_str()).unwrap_or("none");
    match result {
        Ok(()) => {
            tracing::info!(target: "audit", %peer, identity, role, method, target, fault, result = "ok")
        }
        Err(status) => tracing::warn!(
            target: "audit",
            %peer,
            identity,
            role,
            method,
            target,
            fault,
            result = ?status.code(),
            message = status.message()
        ),
    }
}

/// The caller's address, for logs.
pub fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(cn: &str, o: Option<&str>) -> CertificateNames {
        CertificateNames {
            common_name: cn.into(),
            organization: o.map(str::to_string),
        }
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_matches("alice", "alice"));
        assert!(!glob_matches("alice", "alice2"));
        assert!(glob_matches("team-*", "team-shop"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXbYc"));
        assert!(!glob_matches("a*b*c", "aXcYb"));
        assert!(!glob_matches("ab*ba", "aba"));
    }

    #[test]
    fn the_default_role_is_the_certificates_organization_else_viewer() {
        let policy = Policy::default();
        assert_eq!(policy.caller(&names("a", Some("admin"))).role, Role::Admin);
        assert_eq!(
            policy.caller(&names("o", Some("operator"))).role,
            Role::Operator
        );
        assert_eq!(policy.caller(&names("v", None)).role, Role::Viewer);
        assert_eq!(policy.caller(&names("x", Some("root"))).role, Role::Viewer);
    }

    #[test]
    fn a_policy_rule_overrides_the_organization_first_match_wins() {
        let policy = Policy::parse(
            "rules:\n  - identity: alice\n    role: operator\n    namespaces: [shop]\n  - identity: 'ci-*'\n    role: viewer\n",
            "p.yaml",
        )
        .unwrap();
        let alice = policy.caller(&names("alice", Some("admin")));
        assert_eq!(alice.role, Role::Operator);
        assert_eq!(alice.namespaces, Some(vec!["shop".to_string()]));
        assert_eq!(
            policy.caller(&names("ci-42", Some("admin"))).role,
            Role::Viewer
        );
        assert_eq!(
            policy.caller(&names("bob", Some("admin"))).role,
            Role::Admin
        );
    }

    #[test]
    fn bad_policies_are_refused_naming_the_field() {
        let err = Policy::parse("rules:\n  - identity: a\n    role: root\n", "p").unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        let err = Policy::parse(
            "rules:\n  - identity: a\n    role: admin\n    namespaces: [x]\n",
            "p",
        )
        .unwrap_err();
        assert!(err.to_string().contains("rules[0].namespaces"), "{err}");
        let err = Policy::parse("rule: []\n", "p").unwrap_err();
        assert!(err.to_string().contains("rule"), "{err}");
    }

    #[test]
    fn operators_reach_pods_in_their_namespaces_only() {
        let op = Caller {
            identity: "alice".into(),
            role: Role::Operator,
            namespaces: Some(vec!["shop".into()]),
        };
        assert!(op.check_target("pod:shop/web", Some("shop")).is_ok());
        let err = op.check_target("pod:db/pg", Some("db")).unwrap_err();
        assert!(
            err.contains("alice (role operator)") && err.contains("db"),
            "{err}"
        );
        let err = op.check_target("pid:1", None).unwrap_err();
        assert!(err.contains("needs role admin"), "{err}");
        let viewer = Caller {
            role: Role::Viewer,
            namespaces: None,
            ..op.clone()
        };
        let err = viewer
            .check_target("pod:shop/web", Some("shop"))
            .unwrap_err();
        assert!(
            err.contains("role viewer") && err.contains("needs role operator"),
            "{err}"
        );
        assert!(Caller::plaintext().check_target("pid:1", None).is_ok());
    }

    #[test]
    fn only_the_owner_or_an_admin_touches_a_fault() {
        let op = Caller {
            identity: "alice".into(),
            role: Role::Operator,
            namespaces: None,
        };
        assert!(op.may_touch("alice"));
        assert!(!op.may_touch("bob"));
        assert!(Caller::plaintext().may_touch("bob"));
    }

    #[test]
    fn reads_cn_and_o_from_a_certificate() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "operator");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_names(cert.der()).unwrap(),
            names("alice", Some("operator"))
        );
        assert!(certificate_names(b"not a certificate").is_err());
    }
}
