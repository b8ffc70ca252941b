//! The DNS fault's decisions: which queries it faults and how. Pure (no sockets, no wire
//! format), so every case is unit-tested; the responder maps a parsed query onto
//! [`Rules::decide`] and carries the [`Decision`] out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// At most this many rules per fault: the list is scanned for every query.
pub const MAX_RULES: usize = 64;
/// The longest pattern (and the longest DNS name in text form, RFC 1035's 255 octets on the
/// wire).
pub const MAX_PATTERN_LEN: usize = 253;
/// A label's limit (RFC 1035).
const MAX_LABEL_LEN: usize = 63;
/// The longest delay: a resolver has given up long before (glibc: 5 s per try).
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// At most this many addresses in one answer rule: the answer stays small (a UDP answer over
/// the client's limit is sent truncated, and the client asks again over TCP).
pub const MAX_ADDRESSES: usize = 16;

/// Why a rule list was refused. The messages are written for the person who asked for the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("no rules: a DNS fault needs at least one")]
    Empty,
    #[error("{0} rules: at most {MAX_RULES}")]
    TooMany(usize),
    #[error("empty name pattern: give a name, *.suffix, or * for all names")]
    EmptyPattern,
    #[error("name pattern of {0} characters: at most {MAX_PATTERN_LEN}")]
    PatternTooLong(usize),
    #[error(
        "name pattern {pattern:?}: {reason} (give a name such as db.example.com, \
         *.example.com, or * for all names)"
    )]
    BadPattern {
        pattern: String,
        reason: &'static str,
    },
    #[error("delay of {0:?}: at most {MAX_DELAY:?}")]
    DelayTooLong(Duration),
    #[error("an answer rule needs at least one address")]
    NoAddresses,
    #[error("{0} addresses in one answer: at most {MAX_ADDRESSES}")]
    TooManyAddresses(usize),
}

/// Which names a rule applies to. Names are kept lowercase without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every name.
    All,
    /// `db.example.com`: that name only.
    Exact(String),
    /// `*.example.com`: names below example.com (at any depth), not example.com itself, as a
    /// zone's wildcard record does.
    Below(String),
}

impl Pattern {
    /// Parses `*`, `*.suffix` or a name; case and a trailing dot do not matter.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        if text.len() > MAX_PATTERN_LEN {
            return Err(RuleError::PatternTooLong(text.len()));
        }
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty() {
            return Err(RuleError::EmptyPattern);
        }
        if text == "*" {
            return Ok(Pattern::All);
        }
        let bad = |reason| RuleError::BadPattern {
            pattern: text.to_string(),
            reason,
        };
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        for label in name.split('.') {
            if label.is_empty() {
                return Err(bad("empty label"));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(bad("a label is longer than 63 characters"));
            }
            if label == "*" || label.contains('*') {
                return Err(bad("* is only allowed alone or as the first label"));
            }
            // Host names' letters, digits and hyphens, plus the underscore of service names
            // (_sip._tcp); anything else is a typo rather than a name a pod looks up.
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad("only letters, digits, - and _ are allowed in a label"));
            }
        }
        let name = name.to_ascii_lowercase();
        Ok(if wildcard {
            Pattern::Below(name)
        } else {
            Pattern::Exact(name)
        })
    }

    /// Whether `name` (already normalized by [`normalize`]) matches.
    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Exact(exact) => name == exact,
            Pattern::Below(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

/// What a rule does to a matching query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer "no such name".
    NxDomain,
    /// Answer "server failure".
    ServFail,
    /// Do not answer: the client times out and retries.
    Drop,
    /// Forward as usual, but only after this long.
    Delay(Duration),
    /// Answer A queries with the IPv4 addresses and AAAA queries with the IPv6 ones; any other
    /// type (and a family with no address given) gets an empty NOERROR answer, as a real zone
    /// with only these records would give.
    Answer(Vec<IpAddr>),
}

impl Action {
    fn validate(&self) -> Result<(), RuleError> {
        match self {
            Action::Delay(delay) if *delay > MAX_DELAY => Err(RuleError::DelayTooLong(*delay)),
            Action::Answer(addresses) if addresses.is_empty() => Err(RuleError::NoAddresses),
            Action::Answer(addresses) if addresses.len() > MAX_ADDRESSES => {
                Err(RuleError::TooManyAddresses(addresses.len()))
            }
            _ => Ok(()),
        }
    }
}

/// One rule: a pattern and what to do with the names it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: Pattern,
    pub action: Action,
}

/// The query types the decisions tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    A,
    Aaaa,
    Other,
}

/// What to answer (the responder builds the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    NxDomain,
    ServFail,
    /// NOERROR with these records of the asked type; empty: a "no data" answer.
    V4(Vec<Ipv4Addr>),
    V6(Vec<Ipv6Addr>),
}

/// What the responder does with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No rule matched: the original resolver answers.
    Forward,
    /// Wait, then forward.
    DelayThenForward(Duration),
    /// Send nothing back.
    Drop,
    /// Answer here, without asking the original resolver.
    Reply(Reply),
}

/// A checked rule list; the first matching rule wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// Checks the bounds (1 to [`MAX_RULES`] rules, each action within its limits).
    pub fn new(rules: Vec<Rule>) -> Result<Self, RuleError> {
        if rules.is_empty() {
            return Err(RuleError::Empty);
        }
        if rules.len() > MAX_RULES {
            return Err(RuleError::TooMany(rules.len()));
        }
        for rule in &rules {
            rule.action.validate()?;
        }
        Ok(Rules(rules))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.0
    }

    /// The decision for a query of `query_type` for `name` (as it came on the wire, in any case,
    /// with or without the trailing dot).
    pub fn decide(&self, name: &str, query_type: QueryType) -> Decision {
        let name = normalize(name);
        let Some(rule) = self.0.iter().find(|rule| rule.pattern.matches(&name)) else {
            return Decision::Forward;
        };
        match &rule.action {
            Action::NxDomain => Decision::Reply(Reply::NxDomain),
            Action::ServFail => Decision::Reply(Reply::ServFail),
            Action::Drop => Decision::Drop,
            Action::Delay(delay) => Decision::DelayThenForward(*delay),
            Action::Answer(addresses) => Decision::Reply(match query_type {
                QueryType::A => Reply::V4(
                    addresses
                        .iter()
                        .filter_map(|address| match address {
                            IpAddr::V4(v4) => Some(*v4),
                            IpAddr::V6(_) => None,
                        })
                        .collect(),
                ),
                QueryType::Aaaa => Reply::V6(
                    addresses
                        .iter()
                        .filter_map(|address| match address {
                            IpAddr::V6(v6) => Some(*v6),
                            IpAddr::V4(_) => None,
                        })
                        .collect(),
                ),
                QueryType::Other => Reply::V4(Vec::new()),
            }),
        }
    }
}

/// Lowercase, without the trailing dot: DNS names compare case-insensitively (RFC 4343), and
/// `example.com.` and `example.com` are the same name.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(&str, Action)]) -> Rules {
        Rules::new(
            list.iter()
                .map(|(pattern, action)| Rule {
                    pattern: Pattern::parse(pattern).expect("pattern"),
                    action: action.clone(),
                })
                .collect(),
        )
        .expect("rules")
    }

    #[test]
    fn patterns_parse_normalized() {
        assert_eq!(Pattern::parse("*"), Ok(Pattern::All));
        assert_eq!(Pattern::parse("*."), Ok(Pattern::All));
        assert_eq!(
            Pattern::parse("DB.Example.com."),
            Ok(Pattern::Exact("db.example.com".into()))
        );
        assert_eq!(
            Pattern::parse("*.Example.COM"),
            Ok(Pattern::Below("example.com".into()))
        );
        assert_eq!(
            Pattern::parse("_sip._tcp.example.com"),
            Ok(Pattern::Exact("_sip._tcp.example.com".into()))
        );
        assert_eq!(
            Pattern::parse("localhost"),
            Ok(Pattern::Exact("localhost".into()))
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(Pattern::parse(""), Err(RuleError::EmptyPattern));
        assert_eq!(Pattern::parse("."), Err(RuleError::EmptyPattern));
        for bad in [
            "a..b",
            ".a",
            "a.*.b",
            "a*.b",
            "**.b",
            "*.*",
            "a b.c",
            "exämple.com",
            "a/b",
        ] {
            assert!(
                matches!(Pattern::parse(bad), Err(RuleError::BadPattern { .. })),
                "{bad:?} -> {:?}",
                Pattern::parse(bad)
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            Pattern::parse(&long_label),
            Err(RuleError::BadPattern { .. })
        ));
        let label63 = "a".repeat(63);
        let at_limit = [label63.as_str(); 4].join(".");
        assert_eq!(at_limit.len(), 255);
        assert_eq!(
            Pattern::parse(&at_limit),
            Err(RuleError::PatternTooLong(255))
        );
        let fits = format!("{}.{}", [label63.as_str(); 3].join("."), "a".repeat(61));
        assert_eq!(fits.len(), 253);
        assert!(Pattern::parse(&fits).is_ok());
    }

    #[test]
    fn names_match_case_insensitively_without_trailing_dot() {
        let r = rules(&[("Faulted.Test", Action::NxDomain)]);
        for name in ["faulted.test", "FAULTED.TEST.", "faulted.test."] {
            assert_eq!(
                r.decide(name, QueryType::A),
                Decision::Reply(Reply::NxDomain),
                "{name}"
            );
        }
        for name in [
            "ok.test",
            "a.faulted.test",
            "faulted.test.x",
            "xfaulted.test",
            "",
        ] {
            assert_eq!(r.decide(name, QueryType::A), Decision::Forward, "{name}");
        }
    }

    #[test]
    fn wildcard_matches_below_not_the_suffix_itself() {
        let r = rules(&[("*.svc.cluster.local", Action::ServFail)]);
        for name in [
            "db.svc.cluster.local",
            "a.b.svc.cluster.local.",
            "DB.SVC.Cluster.Local",
        ] {
            assert_eq!(
                r.decide(name, QueryType::Aaaa),
                Decision::Reply(Reply::ServFail),
                "{name}"
            );
        }
        for name in [
            "svc.cluster.local",
            "xsvc.cluster.local",
            ".svc.cluster.local",
            "cluster.local",
        ] {
            assert_eq!(r.decide(name, QueryType::A), Decision::Forward, "{name}");
        }
    }

    #[test]
    fn all_matches_every_name_including_the_root() {
        let r = rules(&[("*", Action::Drop)]);
        for name in ["", ".", "a", "x.y.z."] {
            assert_eq!(r.decide(name, QueryType::Other), Decision::Drop, "{name}");
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let r = rules(&[
            (
                "keep.example.com",
                Action::Delay(Duration::from_millis(300)),
            ),
            ("*.example.com", Action::NxDomain),
            ("*", Action::ServFail),
        ]);
        assert_eq!(
            r.decide("keep.example.com", QueryType::A),
            Decision::DelayThenForward(Duration::from_millis(300))
        );
        assert_eq!(
            r.decide("other.example.com", QueryType::A),
            Decision::Reply(Reply::NxDomain)
        );
        assert_eq!(
            r.decide("example.com", QueryType::A),
            Decision::Reply(Reply::ServFail)
        );
    }

    #[test]
    fn answer_gives_the_family_asked_for() {
        let v4: IpAddr = "10.9.9.9".parse().expect("v4");
        let v4b: IpAddr = "10.9.9.10".parse().expect("v4");
        let v6: IpAddr = "fd00::9".parse().expect("v6");
        let r = rules(&[
            ("both.test", Action::Answer(vec![v4, v6, v4b])),
            ("v4only.test", Action::Answer(vec![v4])),
        ]);
        assert_eq!(
            r.decide("both.test", QueryType::A),
            Decision::Reply(Reply::V4(vec![
                "10.9.9.9".parse().expect("v4"),
                "10.9.9.10".parse().expect("v4")
            ]))
        );
        assert_eq!(
            r.decide("both.test", QueryType::Aaaa),
            Decision::Reply(Reply::V6(vec!["fd00::9".parse().expect("v6")]))
        );
        // No IPv6 address given, or another type: an empty NOERROR answer.
        assert_eq!(
            r.decide("v4only.test", QueryType::Aaaa),
            Decision::Reply(Reply::V6(Vec::new()))
        );
        assert_eq!(
            r.decide("both.test", QueryType::Other),
            Decision::Reply(Reply::V4(Vec::new()))
        );
    }

    #[test]
    fn rule_list_bounds() {
        assert_eq!(Rules::new(Vec::new()), Err(RuleError::Empty));
        let rule = Rule {
            pattern: Pattern::All,
            action: Action::NxDomain,
        };
        assert!(Rules::new(vec![rule.clone(); MAX_RULES]).is_ok());
        assert_eq!(
            Rules::new(vec![rule; MAX_RULES + 1]),
            Err(RuleError::TooMany(MAX_RULES + 1))
        );
        let with = |action| {
            Rules::new(vec![Rule {
                pattern: Pattern::All,
                action,
            }])
        };
        assert!(with(Action::Delay(MAX_DELAY)).is_ok());
        assert_eq!(
            with(Action::Delay(MAX_DELAY + Duration::from_millis(1))),
            Err(RuleError::DelayTooLong(
                MAX_DELAY + Duration::from_millis(1)
            ))
        );
        assert_eq!(
            with(Action::Answer(Vec::new())),
            Err(RuleError::NoAddresses)
        );
        let address: IpAddr = "10.0.0.1".parse().expect("v4");
        assert!(with(Action::Answer(vec![address; MAX_ADDRESSES])).is_ok());
        assert_eq!(
            with(Action::Answer(vec![address; MAX_ADDRESSES + 1])),
            Err(RuleError::TooManyAddresses(MAX_ADDRESSES + 1))
        );
    }

    #[test]
    fn errors_read_well() {
        let error = Pattern::parse("a..b").expect_err("bad");
        assert_eq!(
            error.to_string(),
            "name pattern \"a..b\": empty label (give a name such as db.example.com, \
             *.example.com, or * for all names)"
        );
    }
}
