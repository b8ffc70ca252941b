//! The DNS kind's plan and its validation: the API's rules become the responder's
//! [`Rules`] (its bounds are those of `dns::rules`), each refusal naming the rule by its
//! place in the list. Every target form is taken: what a DNS fault acts on is the target's
//! network namespace, which the fault's own checks refuse when it is the node's.

use std::net::IpAddr;
use std::time::Duration;

use chaos_proto::api;

use crate::dns::rules::{Action, Pattern, Rule, Rules};
use crate::error::AgentError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPlan {
    pub rules: Rules,
}

pub(super) fn validate_dns(fault: &api::DnsFault) -> Result<DnsPlan, AgentError> {
    let invalid = |reason: String| AgentError::invalid("dns.rules", reason);
    let mut rules = Vec::with_capacity(fault.rules.len());
    for (index, rule) in fault.rules.iter().enumerate() {
        let place = format!("rule {} ({:?})", index + 1, rule.pattern);
        let pattern =
            Pattern::parse(&rule.pattern).map_err(|e| invalid(format!("{place}: {e}")))?;
        let action = action(rule).map_err(|reason| invalid(format!("{place}: {reason}")))?;
        rules.push(Rule { pattern, action });
    }
    let rules = Rules::new(rules).map_err(|e| invalid(e.to_string()))?;
    Ok(DnsPlan { rules })
}

/// A rule's action, refusing fields that belong to another action (a delay on an
/// NXDOMAIN rule is a mistake, not something to ignore).
fn action(rule: &api::DnsRule) -> Result<Action, String> {
    let kind = api::DnsAction::try_from(rule.action)
        .map_err(|_| format!("action {} is not a DNS action", rule.action))?;
    let takes_delay = kind == api::DnsAction::Delay;
    let takes_addresses = kind == api::DnsAction::Answer;
    if !takes_delay && rule.delay_ms != 0 {
        return Err("delay_ms is for the delay action only".into());
    }
    if !takes_addresses && !rule.addresses.is_empty() {
        return Err("addresses are for the answer action only".into());
    }
    Ok(match kind {
        api::DnsAction::Unspecified => {
            return Err(
                "needs an action: nxdomain, servfail, drop, delay (with delay_ms) or answer \
                 (with addresses)"
                    .into(),
            );
        }
        api::DnsAction::Nxdomain => Action::NxDomain,
        api::DnsAction::Servfail => Action::ServFail,
        api::DnsAction::Drop => Action::Drop,
        api::DnsAction::Delay => {
            if rule.delay_ms == 0 {
                return Err("the delay action needs delay_ms above 0".into());
            }
            Action::Delay(Duration::from_millis(rule.delay_ms))
        }
        api::DnsAction::Answer => {
            let addresses = rule
                .addresses
                .iter()
                .map(|text| {
                    text.parse::<IpAddr>()
                        .map_err(|_| format!("{text:?} is not an IPv4 or IPv6 address"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Action::Answer(addresses)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, action: api::DnsAction) -> api::DnsRule {
        api::DnsRule {
            pattern: pattern.into(),
            action: action as i32,
            ..Default::default()
        }
    }

    fn refusal(rules: Vec<api::DnsRule>) -> String {
        let err = validate_dns(&api::DnsFault { rules }).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        err.to_string()
    }

    #[test]
    fn each_action_becomes_the_responders_and_the_order_is_kept() {
        let mut delay = rule("*.slow.test", api::DnsAction::Delay);
        delay.delay_ms = 1500;
        let mut answer = rule("db.test", api::DnsAction::Answer);
        answer.addresses = vec!["10.1.2.3".into(), "fd00::7".into()];
        let plan = validate_dns(&api::DnsFault {
            rules: vec![
                rule("Gone.Test.", api::DnsAction::Nxdomain),
                rule("broken.test", api::DnsAction::Servfail),
                rule("silent.test", api::DnsAction::Drop),
                delay,
                answer,
            ],
        })
        .unwrap();
        let actions: Vec<&Action> = plan.rules.rules().iter().map(|r| &r.action).collect();
        assert_eq!(
            actions,
            [
                &Action::NxDomain,
                &Action::ServFail,
                &Action::Drop,
                &Action::Delay(Duration::from_millis(1500)),
                &Action::Answer(vec![
                    "10.1.2.3".parse().unwrap(),
                    "fd00::7".parse().unwrap()
                ]),
            ]
        );
        assert_eq!(
            plan.rules.rules()[0].pattern,
            Pattern::Exact("gone.test".into())
        );
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule() {
        assert!(refusal(vec![]).contains("at least one"));
        let err = refusal(vec![
            rule("ok.test", api::DnsAction::Nxdomain),
            rule("a..b", api::DnsAction::Nxdomain),
        ]);
        assert!(err.contains("rule 2 (\"a..b\")"), "{err}");
        assert!(
            refusal(vec![rule("x.test", api::DnsAction::Unspecified)]).contains("needs an action")
        );
        let mut unknown = rule("x.test", api::DnsAction::Drop);
        unknown.action = 99;
        assert!(refusal(vec![unknown]).contains("99 is not a DNS action"));
        assert!(refusal(vec![rule("x.test", api::DnsAction::Delay)]).contains("delay_ms above 0"));
        let mut stray_delay = rule("x.test", api::DnsAction::Nxdomain);
        stray_delay.delay_ms = 5;
        assert!(refusal(vec![stray_delay]).contains("delay action only"));
        let mut long = rule("x.test", api::DnsAction::Delay);
        long.delay_ms = 61_000;
        assert!(refusal(vec![long]).contains("at most"));
        assert!(
            refusal(vec![rule("x.test", api::DnsAction::Answer)]).contains("at least one address")
        );
        let mut bad_address = rule("x.test", api::DnsAction::Answer);
        bad_address.addresses = vec!["10.0.0.300".into()];
        assert!(refusal(vec![bad_address]).contains("not an IPv4 or IPv6 address"));
        let mut stray_addresses = rule("x.test", api::DnsAction::Drop);
        stray_addresses.addresses = vec!["10.0.0.1".into()];
        assert!(refusal(vec![stray_addresses]).contains("answer action only"));
        let many = (0..65)
            .map(|i| rule(&format!("n{i}.test"), api::DnsAction::Drop))
            .collect();
        assert!(refusal(many).contains("65 rules"));
    }
}
