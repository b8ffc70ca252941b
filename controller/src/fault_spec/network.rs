//! `network`: the target's traffic impaired with netem (delay, loss, ...) or limited to a
//! rate (a tbf alone), in its network namespace, on all of it or on chosen destinations,
//! ports and protocols.

use std::time::Duration;

use chaos_proto::api;
use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::{FieldNames, SpecError};
use crate::engine::experiment::values::{optional_duration, optional_rate, optional_size};
use crate::units::duration::parse_duration;
use crate::units::rate::parse_rate;
use crate::units::size::parse_size;

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Added delay, e.g. 100ms.
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "optional_duration")]
    pub delay: Option<Duration>,
    /// Random variation of the delay, e.g. 10ms.
    #[arg(long, value_parser = parse_duration, requires = "delay")]
    #[serde(default, deserialize_with = "optional_duration")]
    pub jitter: Option<Duration>,
    /// The jitter's shape (default uniform).
    #[arg(long, value_enum, ignore_case = true, requires = "jitter")]
    #[serde(default)]
    pub distribution: Option<JitterDistribution>,
    /// Percent of packets dropped.
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    #[serde(default)]
    pub loss: f64,
    /// Percent of packets sent twice.
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    #[serde(default)]
    pub duplicate: f64,
    /// Percent of packets with a flipped bit.
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    #[serde(default)]
    pub corrupt: f64,
    /// Percent of packets sent without the delay, ahead of the others (needs --delay).
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    #[serde(default)]
    pub reorder: f64,
    /// Bandwidth limit: 1mbit, 100kbit, 10MB/s, 512KiB/s, or bytes per second (125000).
    /// Alone it is a tbf (needs no netem module); with other impairments it is netem's
    /// rate. Bit units take any case; byte units end in B/s (kbps, 10mb: refused).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "optional_rate")]
    pub rate: Option<u64>,
    /// With a rate alone: the tbf's bucket, e.g. 32KiB (default 10 ms at the rate, at
    /// least 16KiB); at least one full frame of the interface.
    #[arg(long, value_name = "SIZE", value_parser = tbf_size, requires = "rate")]
    #[serde(default, deserialize_with = "optional_size")]
    pub burst: Option<u64>,
    /// With a rate alone: the tbf's queue, bytes that may wait before packets drop, e.g.
    /// 256KiB (default the bucket plus 100 ms at the rate).
    #[arg(long, value_name = "SIZE", value_parser = tbf_size, requires = "rate")]
    #[serde(default, deserialize_with = "optional_size")]
    pub queue: Option<u64>,
    /// Interface inside the target's namespace (default: the default route's).
    #[arg(long)]
    #[serde(default)]
    pub interface: Option<String>,
    /// Only traffic to this IPv4 or IPv6 CIDR (repeatable; with --direction ingress: from it).
    #[arg(long, value_name = "CIDR")]
    #[serde(default)]
    pub to: Vec<String>,
    /// Only traffic to this port (repeatable; with --direction ingress: from it).
    #[arg(long = "port", value_name = "PORT")]
    #[serde(default)]
    pub ports: Vec<u32>,
    /// Only this protocol (ports without a protocol mean tcp and udp).
    #[arg(long, value_enum, default_value = "any")]
    #[serde(default)]
    pub protocol: TrafficProtocol,
    /// Keep traffic to this CIDR untouched (repeatable), e.g. the DNS server's.
    #[arg(long, value_name = "CIDR")]
    #[serde(default)]
    pub exclude_to: Vec<String>,
    /// Keep traffic to this port untouched (repeatable), e.g. 53.
    #[arg(long = "exclude-port", value_name = "PORT")]
    #[serde(default)]
    pub exclude_ports: Vec<u32>,
    /// egress, or ingress (through an ifb device made for the fault).
    #[arg(long, value_enum, default_value = "egress")]
    #[serde(default)]
    pub direction: TrafficDirection,
}

/// `--burst`, `--queue`: a size above 0 (0 is the agent's default in the API).
fn tbf_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err("must be above 0 (leave it out for the default)".into()),
        bytes => Ok(bytes),
    }
}

/// The shape of netem's jitter: the same words in the file and after `--distribution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JitterDistribution {
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

impl JitterDistribution {
    pub fn to_api(self) -> api::Distribution {
        match self {
            JitterDistribution::Uniform => api::Distribution::Uniform,
            JitterDistribution::Normal => api::Distribution::Normal,
            JitterDistribution::Pareto => api::Distribution::Pareto,
            JitterDistribution::Paretonormal => api::Distribution::Paretonormal,
        }
    }
}

/// Also a `chaosctl inject network` option, so the file and the flag take the same words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrafficProtocol {
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl TrafficProtocol {
    pub fn to_api(self) -> api::Protocol {
        match self {
            TrafficProtocol::Any => api::Protocol::Any,
            TrafficProtocol::Tcp => api::Protocol::Tcp,
            TrafficProtocol::Udp => api::Protocol::Udp,
            TrafficProtocol::Icmp => api::Protocol::Icmp,
        }
    }
}

/// Also a `chaosctl inject network` option, so the file and the flag take the same words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrafficDirection {
    #[default]
    Egress,
    Ingress,
}

impl TrafficDirection {
    pub fn to_api(self) -> api::Direction {
        match self {
            TrafficDirection::Egress => api::Direction::Egress,
            TrafficDirection::Ingress => api::Direction::Ingress,
        }
    }
}

fn micros(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_micros() as u64)
}

impl NetworkSpec {
    /// What is left out is 0 or empty, the API's "not this one"; no distribution is
    /// unspecified, which the agent reads as uniform, as iproute2 does.
    pub fn to_api(&self) -> api::NetworkFault {
        api::NetworkFault {
            interface: self.interface.clone().unwrap_or_default(),
            delay_us: micros(self.delay),
            jitter_us: micros(self.jitter),
            distribution: self
                .distribution
                .map_or(api::Distribution::Unspecified, JitterDistribution::to_api)
                as i32,
            loss_percent: self.loss,
            duplicate_percent: self.duplicate,
            corrupt_percent: self.corrupt,
            reorder_percent: self.reorder,
            rate_bytes_per_second: self.rate.unwrap_or(0),
            rate_burst_bytes: self.burst.unwrap_or(0),
            rate_queue_bytes: self.queue.unwrap_or(0),
            destinations: self.to.clone(),
            ports: self.ports.clone(),
            protocol: self.protocol.to_api() as i32,
            direction: self.direction.to_api() as i32,
            exclude_destinations: self.exclude_to.clone(),
            exclude_ports: self.exclude_ports.clone(),
            ..Default::default()
        }
    }

    /// Percentages within 0 to 100, and the fields that shape another only with it: the
    /// jitter and reorder with a delay, the distribution with a jitter, a burst and a
    /// queue with a rate (above 0). That the rate is alone (a tbf, not netem's rate) and
    /// the sizes hold a frame is the agent's to tell: it knows the interface.
    pub fn check(&self, names: FieldNames) -> Result<(), SpecError> {
        for (field, percent) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=100.0).contains(&percent) {
                return Err(SpecError::of(field, "must be a percent, 0 to 100"));
            }
        }
        if self.delay.is_none() {
            if self.jitter.is_some() {
                return Err(SpecError::of(
                    "jitter",
                    format!("needs a {} (it varies the delay)", names("delay")),
                ));
            }
            if self.reorder > 0.0 {
                return Err(SpecError::of(
                    "reorder",
                    format!(
                        "needs a {} (netem reorders by sending some packets without it)",
                        names("delay")
                    ),
                ));
            }
        }
        if self.distribution.is_some() && self.jitter.is_none() {
            return Err(SpecError::of(
                "distribution",
                format!("needs a {} (it shapes the jitter)", names("jitter")),
            ));
        }
        for (field, size) in [("burst", self.burst), ("queue", self.queue)] {
            match size {
                Some(0) => {
                    return Err(SpecError::of(
                        field,
                        "must be above 0 (leave it out for the default)",
                    ));
                }
                Some(_) if self.rate.is_none() => {
                    return Err(SpecError::of(
                        field,
                        format!("needs a {} (it sizes the rate's tbf)", names("rate")),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
