//! Parsing of target strings (`pid:`, `container:`, `pod:`, `cgroup:`). Pure: what a
//! target names, not where it is on this node (see `resolve`).

use std::fmt;

use crate::error::AgentError;

/// What a request names as its target, syntactically valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    Pid(u32),
    Container(String),
    Pod {
        namespace: String,
        name: String,
        container: Option<String>,
    },
    Cgroup(String),
}

const FIELD: &str = "target";

impl TargetSpec {
    pub fn parse(text: &str) -> Result<TargetSpec, AgentError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(AgentError::invalid(
                FIELD,
                "is empty; expected pid:N, container:ID, pod:NS/NAME[/CONTAINER] or cgroup:PATH",
            ));
        }
        // Kubernetes reports container ids as `containerd://<id>`.
        if let Some(id) = text.strip_prefix("containerd://") {
            return parse_container_id(id);
        }
        let Some((kind, rest)) = text.split_once(':') else {
            return Err(AgentError::invalid(
                FIELD,
                format!(
                    "`{text}` has no kind; expected pid:N, container:ID, pod:NS/NAME[/CONTAINER] or cgroup:PATH"
                ),
            ));
        };
        match kind {
            "pid" => parse_pid(rest),
            "container" => parse_container_id(rest.strip_prefix("containerd://").unwrap_or(rest)),
            "pod" => parse_pod(rest),
            "cgroup" => parse_cgroup(rest),
            other => Err(AgentError::invalid(
                FIELD,
                format!("unknown kind `{other}`; expected pid, container, pod or cgroup"),
            )),
        }
    }
}

fn parse_pid(text: &str) -> Result<TargetSpec, AgentError> {
    match text.parse::<u32>() {
        Ok(0) => Err(AgentError::invalid(FIELD, "pid 0 is not a process")),
        Ok(pid) => Ok(TargetSpec::Pid(pid)),
        Err(_) => Err(AgentError::invalid(
            FIELD,
            format!("pid `{text}` is not a positive integer"),
        )),
    }
}

fn parse_container_id(id: &str) -> Result<TargetSpec, AgentError> {
    // containerd ids: letters, digits, `_`, `-`, `.`, at most 76 chars; refusing anything
    // else also keeps ids from being read as paths.
    let valid = !id.is_empty()
        && id.len() <= 76
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if valid {
        Ok(TargetSpec::Container(id.to_string()))
    } else {
        Err(AgentError::invalid(
            FIELD,
            format!("container id `{id}` is not a valid containerd id"),
        ))
    }
}

fn parse_pod(text: &str) -> Result<TargetSpec, AgentError> {
    let parts: Vec<&str> = text.split('/').collect();
    let (namespace, name, container) = match parts.as_slice() {
        [ns, name] => (*ns, *name, None),
        [ns, name, container] => (*ns, *name, Some(*container)),
        _ => {
            return Err(AgentError::invalid(
                FIELD,
                format!("pod target `{text}` must be NAMESPACE/NAME or NAMESPACE/NAME/CONTAINER"),
            ));
        }
    };
    for (what, value, max) in [("namespace", namespace, 63), ("pod name", name, 253)] {
        if !is_dns_name(value, max) {
            return Err(AgentError::invalid(
                FIELD,
                format!("{what} `{value}` is not a valid Kubernetes name"),
            ));
        }
    }
    if let Some(c) = container
        && !is_dns_name(c, 63)
    {
        return Err(AgentError::invalid(
            FIELD,
            format!("container name `{c}` is not a valid Kubernetes name"),
        ));
    }
    Ok(TargetSpec::Pod {
        namespace: namespace.to_string(),
        name: name.to_string(),
        container: container.map(str::to_string),
    })
}

/// RFC 1123 names as Kubernetes uses them (lowercase alphanumerics, `-` and `.`).
fn is_dns_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

fn parse_cgroup(path: &str) -> Result<TargetSpec, AgentError> {
    if !path.starts_with('/') {
        return Err(AgentError::invalid(
            FIELD,
            format!("cgroup path `{path}` must be absolute (relative to the cgroup root)"),
        ));
    }
    if path.split('/').any(|part| part == ".." || part == ".") || path.contains('\0') {
        return Err(AgentError::invalid(
            FIELD,
            format!("cgroup path `{path}` must not contain `.` or `..` components"),
        ));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(AgentError::invalid(
            FIELD,
            "cgroup `/` is the whole node; name a container's cgroup",
        ));
    }
    // `/a \n/` would act on the cgroup `/a \n` but print as `cgroup:/a \n`, which parses
    // (trimmed) as `/a`: the fault's reported target would name another cgroup (found by
    // the fuzz targets agent_requests and target_string).
    if trimmed.ends_with(char::is_whitespace) {
        return Err(AgentError::invalid(
            FIELD,
            format!("cgroup path `{path}` must not end in whitespace"),
        ));
    }
    Ok(TargetSpec::Cgroup(trimmed.to_string()))
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Pid(pid) => write!(f, "pid:{pid}"),
            TargetSpec::Container(id) => write!(f, "container:{id}"),
            TargetSpec::Pod {
                namespace,
                name,
                container: Some(c),
            } => write!(f, "pod:{namespace}/{name}/{c}"),
            TargetSpec::Pod {
                namespace, name, ..
            } => write!(f, "pod:{namespace}/{name}"),
            TargetSpec::Cgroup(path) => write!(f, "cgroup:{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_reason(text: &str) -> String {
        match TargetSpec::parse(text) {
            Err(AgentError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "target");
                reason
            }
            other => panic!("{text}: expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(TargetSpec::parse("pid:42").unwrap(), TargetSpec::Pid(42));
        assert_eq!(
            TargetSpec::parse("container:abc123").unwrap(),
            TargetSpec::Container("abc123".into())
        );
        assert_eq!(
            TargetSpec::parse("containerd://abc123").unwrap(),
            TargetSpec::Container("abc123".into())
        );
        assert_eq!(
            TargetSpec::parse("container:containerd://abc123").unwrap(),
            TargetSpec::Container("abc123".into())
        );
        assert_eq!(
            TargetSpec::parse("pod:dev/db-0").unwrap(),
            TargetSpec::Pod {
                namespace: "dev".into(),
                name: "db-0".into(),
                container: None
            }
        );
        assert_eq!(
            TargetSpec::parse("pod:dev/db-0/postgres").unwrap(),
            TargetSpec::Pod {
                namespace: "dev".into(),
                name: "db-0".into(),
                container: Some("postgres".into())
            }
        );
        assert_eq!(
            TargetSpec::parse("cgroup:/kubepods/burstable/pod1/abc/").unwrap(),
            TargetSpec::Cgroup("/kubepods/burstable/pod1/abc".into())
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "pid:7",
            "container:x1",
            "pod:a/b",
            "pod:a/b/c",
            "cgroup:/a/b",
        ] {
            assert_eq!(TargetSpec::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_targets_naming_the_field() {
        assert!(invalid_reason("").contains("empty"));
        assert!(invalid_reason("1234").contains("no kind"));
        assert!(invalid_reason("node:x").contains("unknown kind"));
        assert!(invalid_reason("pid:abc").contains("positive integer"));
        assert!(invalid_reason("pid:-1").contains("positive integer"));
        assert!(invalid_reason("pid:0").contains("pid 0"));
        assert!(invalid_reason("container:").contains("not a valid containerd id"));
        assert!(invalid_reason("container:../../etc").contains("not a valid containerd id"));
        assert!(invalid_reason("pod:dev").contains("NAMESPACE/NAME"));
        assert!(invalid_reason("pod:dev/a/b/c").contains("NAMESPACE/NAME"));
        assert!(invalid_reason("pod:Dev/db").contains("namespace"));
        assert!(invalid_reason("pod:dev/db_0").contains("pod name"));
        assert!(invalid_reason("pod:dev/db/Post").contains("container name"));
        assert!(invalid_reason("cgroup:relative").contains("absolute"));
        assert!(invalid_reason("cgroup:/a/../b").contains(".."));
        assert!(invalid_reason("cgroup:/").contains("whole node"));
    }

    /// Found by the fuzz targets: a cgroup path ending in whitespace before its last `/`
    /// printed as a target that parses to another cgroup.
    #[test]
    fn a_cgroup_path_ending_in_whitespace_is_refused() {
        for text in [
            "cgroup:/*\n/",
            "cgroup:/kubepOs/d/cuj\x0c\n/",
            "cgroup:/a /",
            "cgroup:/a\t//",
        ] {
            assert!(invalid_reason(text).contains("whitespace"), "{text:?}");
        }
        // Inside a path, whitespace is a cgroup name's own and prints back as it is.
        let inner = TargetSpec::parse("cgroup:/a b/c").unwrap();
        assert_eq!(TargetSpec::parse(&inner.to_string()).unwrap(), inner);
    }
}
