//! What the probes of experiments submitted to `chaosctl serve` may reach and read. A
//! submitter chooses the probes' URLs, so without a limit the controller would connect
//! wherever it can route to (the Kubernetes API, a cloud metadata service, a database) on
//! the submitter's behalf, and send a token file of the controller's host there. The
//! operator lists the destinations (host names and networks) and the files that probes
//! may use; everything else is refused at submission, and the address of every
//! connection a submitted probe makes is checked again when it is made (DNS can answer
//! differently later: rebinding).
//!
//! A listed host *name* admits that name whatever it resolves to (the operator trusts
//! the DNS answer for a name they listed, e.g. a Service's); a listed *network* admits
//! addresses in it, and names whose addresses all lie in it at submission, connecting
//! later only to the addresses inside it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tonic::Status;

use crate::engine::experiment::{Experiment, Probe};
use crate::engine::probe::url::{Host, parse_address, parse_host, parse_url};

/// How long a name may take to resolve at submission.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Host names and networks probes may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeDestinations {
    names: BTreeSet<String>,
    networks: Vec<IpNet>,
}

impl ProbeDestinations {
    /// Entries are DNS names (exact), IP addresses, or networks in CIDR form (IPv4, IPv6).
    pub fn parse(entries: &[String]) -> Result<ProbeDestinations, String> {
        let mut destinations = ProbeDestinations::default();
        for (index, entry) in entries.iter().enumerate() {
            let refuse = |why: &str| format!("probe_destinations[{index}]: `{entry}` {why}");
            if entry.contains('*') {
                return Err(refuse(
                    "has a wildcard: list each name, or the network the names resolve into",
                ));
            }
            if entry.contains('/') {
                let network: IpNet = entry
                    .parse()
                    .map_err(|_| refuse("is not a network in CIDR form"))?;
                destinations.networks.push(network.trunc());
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                destinations.networks.push(IpNet::from(ip.to_canonical()));
            } else {
                match parse_host(entry) {
                    Ok(Host::Name(name)) => {
                        destinations.names.insert(name);
                    }
                    Ok(Host::Ip(ip)) => destinations.networks.push(IpNet::from(ip)),
                    Err(e) => return Err(refuse(&format!("is neither an address nor: {e}"))),
                }
            }
        }
        Ok(destinations)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.networks.is_empty()
    }

    /// A listed name: whatever DNS answers for it is allowed.
    pub fn lists_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// An address inside a listed network (IPv4-mapped IPv6 addresses count as IPv4, so
    /// `[::ffff:10.0.0.1]` is neither a way around nor out of an IPv4 entry).
    pub fn contains_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|network| network.contains(&ip))
    }

    /// Whether a probe of `host` may connect to `address` (one `host` resolved to).
    pub fn allows_connection(&self, host: &Host, address: IpAddr) -> bool {
        match host {
            Host::Name(name) if self.lists_name(name) => true,
            _ => self.contains_address(address),
        }
    }
}

/// The destinations and files submitted probes may use: `chaosctl serve`'s
/// `probe_destinations` and `probe_files`. The default allows nothing.
#[derive(Debug, Clone, Default)]
pub struct ProbePolicy {
    pub destinations: Arc<ProbeDestinations>,
    /// Files a probe may name as `bearer_token_file` or `ca_file`, exactly as written.
    pub files: BTreeSet<PathBuf>,
}

/// One destination a probe connects to, and the field that names it.
struct Destination {
    field: String,
    host: Host,
    port: u16,
}

impl ProbePolicy {
    /// Refuses a submitted experiment whose probes reach or read what the policy does not
    /// list (PermissionDenied naming the field, the probe and the destination); on success
    /// every probe carries the destinations, checked again on each connection.
    pub async fn admit(&self, experiment: &mut Experiment) -> Result<(), Status> {
        for (index, probe) in experiment.steady_state.probes.iter().enumerate() {
            let field = format!("steady_state.probes[{index}]");
            for (file_field, path) in files_of(probe, &field) {
                if !self.files.contains(path) {
                    return Err(Status::permission_denied(format!(
                        "experiment_yaml: {file_field}: probe `{}` reads {}, which is not in \
                         the controller's probe_files",
                        probe.name,
                        path.display()
                    )));
                }
            }
            if let Some(destination) = destination_of(probe, &field)? {
                self.check_destination(&probe.name, &destination).await?;
            }
        }
        for probe in &mut experiment.steady_state.probes {
            probe.connect_policy = Some(Arc::clone(&self.destinations));
        }
        Ok(())
    }

    async fn check_destination(&self, probe: &str, d: &Destination) -> Result<(), Status> {
        let outside = |what: String| {
            let hint = if self.destinations.is_empty() {
                " (it lists none: submitted runs may not probe anything until it does)"
            } else {
                ""
            };
            Status::permission_denied(format!(
                "experiment_yaml: {}: probe `{probe}` connects to {what}, which is not in the \
                 controller's probe_destinations{hint}",
                d.field
            ))
        };
        match &d.host {
            Host::Ip(ip) if self.destinations.contains_address(*ip) => Ok(()),
            Host::Ip(_) => Err(outside(format!("{}:{}", d.host, d.port))),
            Host::Name(name) if self.destinations.lists_name(name) => Ok(()),
            Host::Name(name) => {
                let addresses = resolve(name, d.port).await.map_err(|e| {
                    Status::failed_precondition(format!(
                        "experiment_yaml: {}: probe `{probe}`: {e}",
                        d.field
                    ))
                })?;
                match addresses
                    .iter()
                    .find(|ip| !self.destinations.contains_address(**ip))
                {
                    Some(ip) => Err(outside(format!("{name}:{} (resolved to {ip})", d.port))),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Every address `name` resolves to now; an error when none.
async fn resolve(name: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| format!("resolving {name} took more than {RESOLVE_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot resolve {name}: {e}"))?;
    let addresses: Vec<IpAddr> = lookup.map(|a| a.ip()).collect();
    if addresses.is_empty() {
        return Err(format!("{name} resolves to no address"));
    }
    Ok(addresses)
}

fn files_of<'a>(probe: &'a Probe, field: &str) -> Vec<(String, &'a Path)> {
    let (kind, token, ca) = if let Some(http) = &probe.http {
        ("http", &http.bearer_token_file, &http.ca_file)
    } else if let Some(promql) = &probe.promql {
        ("promql", &promql.bearer_token_file, &promql.ca_file)
    } else {
        return Vec::new();
    };
    [("bearer_token_file", token), ("ca_file", ca)]
        .into_iter()
        .filter_map(|(name, path)| {
            path.as_deref()
                .map(|p| (format!("{field}.{kind}.{name}"), p))
        })
        .collect()
}

/// The destination of an http, tcp or promql probe (exec probes connect nowhere).
fn destination_of(probe: &Probe, field: &str) -> Result<Option<Destination>, Status> {
    let invalid = |field: String, e: String| {
        Status::invalid_argument(format!("experiment_yaml: {field}: {e}"))
    };
    let (field, parsed) = if let Some(http) = &probe.http {
        let field = format!("{field}.http.url");
        let url = parse_url(&http.url).map_err(|e| invalid(field.clone(), e))?;
        (field, (url.host, url.port))
    } else if let Some(promql) = &probe.promql {
        let field = format!("{field}.promql.url");
        let url = parse_url(&promql.url).map_err(|e| invalid(field.clone(), e))?;
        (field, (url.host, url.port))
    } else if let Some(tcp) = &probe.tcp {
        let field = format!("{field}.tcp.address");
        let address = parse_address(&tcp.address).map_err(|e| invalid(field.clone(), e))?;
        (field, address)
    } else {
        return Ok(None);
    };
    let (host, port) = parsed;
    Ok(Some(Destination { field, host, port }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destinations(entries: &[&str]) -> ProbeDestinations {
        ProbeDestinations::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
            .unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn matches_names_exactly_and_addresses_by_network() {
        let d = destinations(&[
            "Prometheus.Monitoring.svc.",
            "10.96.0.0/12",
            "192.168.7.9",
            "fd00:1::/32",
            "::1",
        ]);
        assert!(d.lists_name("prometheus.monitoring.svc"));
        assert!(!d.lists_name("monitoring.svc"));
        assert!(!d.lists_name("evil.prometheus.monitoring.svc"));
        assert!(d.contains_address(ip("10.96.0.1")));
        assert!(d.contains_address(ip("10.111.255.255")));
        assert!(!d.contains_address(ip("10.112.0.0")));
        assert!(d.contains_address(ip("192.168.7.9")));
        assert!(!d.contains_address(ip("192.168.7.10")));
        assert!(d.contains_address(ip("fd00:1:ffff::5")));
        assert!(!d.contains_address(ip("fd00:2::5")));
        assert!(d.contains_address(ip("::1")));
        assert!(!d.contains_address(ip("::2")));
        // IPv4-mapped IPv6 is the IPv4 address: inside where it is, outside where it is not.
        assert!(d.contains_address(ip("::ffff:10.96.0.1")));
        assert!(!d.contains_address(ip("::ffff:169.254.169.254")));

        let name = Host::Name("prometheus.monitoring.svc".into());
        assert!(d.allows_connection(&name, ip("203.0.113.1")));
        let other = Host::Name("web.shop.svc".into());
        assert!(d.allows_connection(&other, ip("10.100.0.7")));
        assert!(!d.allows_connection(&other, ip("169.254.169.254")));
    }

    #[test]
    fn a_network_entry_is_its_whole_prefix() {
        // A host address with a prefix means its network, as `ip route` reads it.
        let d = destinations(&["10.1.2.3/24", "0.0.0.0/0"]);
        assert!(d.contains_address(ip("10.1.2.200")));
        assert!(d.contains_address(ip("8.8.8.8")));
        assert!(
            !d.contains_address(ip("2001:db8::1")),
            "0.0.0.0/0 is IPv4 only"
        );
        assert!(destinations(&[]).is_empty());
        assert!(!destinations(&[]).contains_address(ip("127.0.0.1")));
    }

    #[test]
    fn bad_entries_name_their_index() {
        let bad = |entry: &str| {
            ProbeDestinations::parse(&["web".to_string(), entry.to_string()]).unwrap_err()
        };
        for entry in [
            "10.0.0.0/33",
            "10.0.0/8",
            "*.shop.svc",
            "a b",
            "web/",
            "fd00::/129",
        ] {
            let error = bad(entry);
            assert!(
                error.starts_with("probe_destinations[1]: "),
                "{entry}: {error}"
            );
        }
        assert!(bad("*.shop.svc").contains("wildcard"));
    }

    const EXPERIMENT: &str = "\
name: p
steady_state:
  probes:
    - name: web
      http: { url: \"URL\" }
method:
  faults:
    - name: k
      target: { targets: [\"pid:1\"] }
      kill: {}
";

    fn experiment(probe: &str) -> Experiment {
        let text = EXPERIMENT.replace("http: { url: \"URL\" }", probe);
        crate::engine::experiment::parse(&text).unwrap()
    }

    fn policy(entries: &[&str], files: &[&str]) -> ProbePolicy {
        ProbePolicy {
            destinations: Arc::new(destinations(entries)),
            files: files.iter().map(PathBuf::from).collect(),
        }
    }

    #[tokio::test]
    async fn admits_listed_destinations_and_attaches_them() {
        let policy = policy(&["127.0.0.0/8", "web.shop.svc"], &["/run/token"]);
        for probe in [
            "http: { url: \"http://127.0.0.1:8080/health\" }",
            "http: { url: \"https://web.shop.svc/\", bearer_token_file: /run/token }",
            "tcp: { address: \"127.0.0.2:5432\" }",
            "promql: { url: \"http://127.0.0.1:9090\", query: up, min: 1 }",
            // Not listed by name, but it resolves (through /etc/hosts) inside 127.0.0.0/8.
            "http: { url: \"http://localhost:8080/\" }",
            "exec: { command: [\"true\"] }",
        ] {
            let mut e = experiment(probe);
            policy
                .admit(&mut e)
                .await
                .unwrap_or_else(|s| panic!("{probe}: {s}"));
            let attached = e.steady_state.probes[0].connect_policy.as_deref();
            assert_eq!(attached, Some(&*policy.destinations), "{probe}");
        }
    }

    #[tokio::test]
    async fn refuses_what_is_not_listed_naming_field_probe_and_destination() {
        let policy = policy(&["10.0.0.0/8", "web.shop.svc"], &["/run/token"]);
        let cases = [
            (
                "http: { url: \"http://169.254.169.254/latest/meta-data\" }",
                "steady_state.probes[0].http.url: probe `web` connects to 169.254.169.254:80",
            ),
            (
                "tcp: { address: \"[fd00::1]:5432\" }",
                "steady_state.probes[0].tcp.address: probe `web` connects to [fd00::1]:5432",
            ),
            (
                "promql: { url: \"https://10.0.0.1:9090\", query: up, min: 1, ca_file: /etc/ssl/x.pem }",
                "steady_state.probes[0].promql.ca_file: probe `web` reads /etc/ssl/x.pem",
            ),
            (
                "http: { url: \"http://localhost/\" }",
                "steady_state.probes[0].http.url: probe `web` connects to localhost:80 (resolved to 127.0.0.1)",
            ),
            (
                "http: { url: \"http://web.shop.svc/\", ca_file: /etc/shadow }",
                "steady_state.probes[0].http.ca_file: probe `web` reads /etc/shadow, which is not in the controller's probe_files",
            ),
            (
                "promql: { url: \"http://10.0.0.1\", query: up, min: 1, bearer_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token }",
                "steady_state.probes[0].promql.bearer_token_file: probe `web` reads /var/run/secrets",
            ),
        ];
        for (probe, expected) in cases {
            let mut e = experiment(probe);
            let status = policy.admit(&mut e).await.unwrap_err();
            assert!(
                status
                    .message()
                    .starts_with(&format!("experiment_yaml: {expected}")),
                "{probe}: {}",
                status.message()
            );
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
            assert!(e.steady_state.probes[0].connect_policy.is_none());
        }
        let mut e = experiment("http: { url: \"http://10.1.2.3/\" }");
        let status = ProbePolicy::default().admit(&mut e).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("lists none"),
            "{}",
            status.message()
        );
    }
}
