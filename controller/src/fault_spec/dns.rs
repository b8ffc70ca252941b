//! `dns`: lookups from the target's network namespace faulted by name, first matching rule
//! first; other names resolve as before. In a step, `rules` is a list of `{ name, action,
//! delay | addresses }`; on the command line each `--rule NAME=ACTION` is one, in order.
//! The name's own syntax (a name, `*.suffix`, `*`) is the agent's to check: it refuses a bad
//! one naming the rule, before anything changes.

use std::net::IpAddr;
use std::time::Duration;

use chaos_proto::api;
use clap::Args;
use serde::Deserialize;

use super::{FieldNames, SpecError};
use crate::engine::experiment::values::optional_duration;
use crate::units::duration::{format_duration, parse_duration};

/// The agent's bounds (its `dns::rules`), checked here too so an experiment is refused
/// before it starts.
const MAX_RULES: usize = 64;
const MAX_DELAY: Duration = Duration::from_secs(60);
const MAX_ADDRESSES: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// A rule (repeatable; the first that matches a name wins): NAME=ACTION, where NAME is
    /// a name (db.example.com), *.suffix (the names below it) or * (every name), and ACTION
    /// is nxdomain, servfail, drop, delay:DURATION (then forwarded) or
    /// answer:ADDRESS[,ADDRESS...] (A/AAAA answered with these).
    #[arg(long = "rule", value_name = "NAME=ACTION", value_parser = parse_rule, required = true)]
    pub rules: Vec<DnsRuleSpec>,
}

/// One rule. In a file either as the flag writes it (`"db.test=nxdomain"`) or as a map
/// (`{ name: db.test, action: nxdomain }`); both read into the same rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct DnsRuleSpec {
    pub name: String,
    pub action: DnsActionSpec,
    /// With `action: delay`.
    #[serde(default, deserialize_with = "optional_duration")]
    pub delay: Option<Duration>,
    /// With `action: answer`: IPv4 and IPv6 addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsActionSpec {
    Nxdomain,
    Servfail,
    Drop,
    Delay,
    Answer,
}

impl<'de> Deserialize<'de> for DnsRuleSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Rule;
        impl<'de> serde::de::Visitor<'de> for Rule {
            type Value = DnsRuleSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a rule: \"NAME=ACTION\" or { name, action, delay | addresses }")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DnsRuleSpec, E> {
                parse_rule(text).map_err(E::custom)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<DnsRuleSpec, A::Error> {
                DnsRuleSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_any(Rule)
    }
}

impl DnsActionSpec {
    fn parse(text: &str) -> Option<DnsActionSpec> {
        Some(match text {
            "nxdomain" => DnsActionSpec::Nxdomain,
            "servfail" => DnsActionSpec::Servfail,
            "drop" => DnsActionSpec::Drop,
            "delay" => DnsActionSpec::Delay,
            "answer" => DnsActionSpec::Answer,
            _ => return None,
        })
    }

    fn to_api(self) -> api::DnsAction {
        match self {
            DnsActionSpec::Nxdomain => api::DnsAction::Nxdomain,
            DnsActionSpec::Servfail => api::DnsAction::Servfail,
            DnsActionSpec::Drop => api::DnsAction::Drop,
            DnsActionSpec::Delay => api::DnsAction::Delay,
            DnsActionSpec::Answer => api::DnsAction::Answer,
        }
    }
}

/// `--rule NAME=ACTION[:ARGUMENT]`. What the types cannot say is [`DnsSpec::check`]'s.
fn parse_rule(text: &str) -> Result<DnsRuleSpec, String> {
    let (name, action) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=ACTION, e.g. db.example.com=nxdomain"))?;
    let (action, argument) = match action.split_once(':') {
        Some((action, argument)) => (action, Some(argument)),
        None => (action, None),
    };
    let action = DnsActionSpec::parse(action).ok_or_else(|| {
        format!(
            "{text:?}: action {action:?} is not one of nxdomain, servfail, drop, delay:DURATION, answer:ADDRESS[,ADDRESS]"
        )
    })?;
    let mut rule = DnsRuleSpec {
        name: name.to_string(),
        action,
        delay: None,
        addresses: Vec::new(),
    };
    match (action, argument) {
        (DnsActionSpec::Delay, Some(delay)) => rule.delay = Some(parse_duration(delay)?),
        (DnsActionSpec::Answer, Some(addresses)) => {
            rule.addresses = addresses.split(',').map(str::to_string).collect();
        }
        (DnsActionSpec::Delay | DnsActionSpec::Answer, None) => {}
        (_, Some(_)) => return Err(format!("{text:?}: this action takes no argument")),
        (_, None) => {}
    }
    Ok(rule)
}

impl DnsSpec {
    pub fn to_api(&self) -> api::DnsFault {
        api::DnsFault {
            rules: self
                .rules
                .iter()
                .map(|rule| api::DnsRule {
                    pattern: rule.name.clone(),
                    action: rule.action.to_api() as i32,
                    delay_ms: rule.delay.map_or(0, |d| d.as_millis() as u64),
                    addresses: rule.addresses.clone(),
                })
                .collect(),
        }
    }

    pub fn check(&self, _names: FieldNames) -> Result<(), SpecError> {
        if self.rules.is_empty() {
            return Err(SpecError::of("rules", "needs at least one rule"));
        }
        if self.rules.len() > MAX_RULES {
            return Err(SpecError::of(
                "rules",
                format!("{} rules: at most {MAX_RULES}", self.rules.len()),
            ));
        }
        for (index, rule) in self.rules.iter().enumerate() {
            rule.check().map_err(|reason| {
                SpecError::of(
                    "rules",
                    format!("rule {} ({:?}): {reason}", index + 1, rule.name),
                )
            })?;
        }
        Ok(())
    }
}

impl DnsRuleSpec {
    fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("needs a name: a name, *.suffix, or * for all names".into());
        }
        match (self.action, self.delay) {
            (DnsActionSpec::Delay, None) => return Err("delay needs a duration".into()),
            (DnsActionSpec::Delay, Some(delay)) if delay.is_zero() => {
                return Err("the delay must be above 0".into());
            }
            (DnsActionSpec::Delay, Some(delay)) if delay > MAX_DELAY => {
                return Err(format!(
                    "a delay of {}: at most {}",
                    format_duration(delay),
                    format_duration(MAX_DELAY)
                ));
            }
            (DnsActionSpec::Delay, _) => {}
            (_, Some(_)) => return Err("a delay is for the delay action only".into()),
            (_, None) => {}
        }
        if self.action == DnsActionSpec::Answer {
            if self.addresses.is_empty() {
                return Err("answer needs at least one address".into());
            }
            if self.addresses.len() > MAX_ADDRESSES {
                return Err(format!(
                    "{} addresses: at most {MAX_ADDRESSES}",
                    self.addresses.len()
                ));
            }
            if let Some(bad) = self.addresses.iter().find(|a| a.parse::<IpAddr>().is_err()) {
                return Err(format!("{bad:?} is not an IPv4 or IPv6 address"));
            }
        } else if !self.addresses.is_empty() {
            return Err("addresses are for the answer action only".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: &DnsSpec) -> Result<(), String> {
        spec.check(&super::super::yaml_name)
            .map_err(|e| format!("{:?}: {}", e.field, e.message))
    }

    #[test]
    fn a_rule_flag_reads_each_action() {
        let rule = |text| parse_rule(text).unwrap();
        assert_eq!(rule("db.test=nxdomain").action, DnsActionSpec::Nxdomain);
        assert_eq!(rule("*=servfail").name, "*");
        assert_eq!(rule("x.test=drop").action, DnsActionSpec::Drop);
        assert_eq!(
            rule("*.slow.test=delay:1500ms").delay,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            rule("api.test=answer:10.0.0.9,fd00::9").addresses,
            ["10.0.0.9", "fd00::9"]
        );
        assert!(parse_rule("db.test").unwrap_err().contains("NAME=ACTION"));
        assert!(
            parse_rule("db.test=refuse")
                .unwrap_err()
                .contains("is not one of")
        );
        assert!(
            parse_rule("db.test=drop:5s")
                .unwrap_err()
                .contains("no argument")
        );
    }

    #[test]
    fn the_api_fault_keeps_the_order_and_each_field() {
        let spec = DnsSpec {
            rules: vec![
                parse_rule("a.test=delay:2s").unwrap(),
                parse_rule("*=answer:10.1.1.1").unwrap(),
            ],
        };
        assert_eq!(check(&spec), Ok(()));
        let fault = spec.to_api();
        assert_eq!(fault.rules[0].pattern, "a.test");
        assert_eq!(fault.rules[0].action, api::DnsAction::Delay as i32);
        assert_eq!(fault.rules[0].delay_ms, 2000);
        assert_eq!(fault.rules[1].addresses, ["10.1.1.1"]);
    }

    #[test]
    fn fields_that_do_not_fit_the_action_are_refused() {
        let refused = |text: &str| {
            let spec = DnsSpec {
                rules: vec![parse_rule(text).unwrap()],
            };
            check(&spec).unwrap_err()
        };
        assert!(refused("x.test=delay").contains("needs a duration"));
        assert!(refused("x.test=delay:61s").contains("at most 1m"));
        assert!(refused("x.test=answer").contains("at least one address"));
        assert!(refused("x.test=answer:10.0.0.256").contains("not an IPv4 or IPv6"));
        assert!(refused("=nxdomain").contains("needs a name"));
        let stray = DnsSpec {
            rules: vec![DnsRuleSpec {
                delay: Some(Duration::from_secs(1)),
                addresses: vec!["10.0.0.1".into()],
                ..parse_rule("x.test=nxdomain").unwrap()
            }],
        };
        assert!(check(&stray).unwrap_err().contains("delay action only"));
        assert!(
            check(&DnsSpec::default())
                .unwrap_err()
                .contains("at least one rule")
        );
    }
}
