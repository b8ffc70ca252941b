//! How the experiment file reads durations, sizes and rates: with the same parsers as the
//! command line's flags (`crate::units::duration`, `crate::units::size`, `crate::units::rate`), inside serde's
//! visitors, so that the YAML deserializer attaches the line of a bad value to the error
//! (an error raised after deserializing has no position). For `deserialize_with`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::units::duration::parse_duration;
use crate::units::rate::parse_rate;
use crate::units::size::parse_size;

struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a duration such as 500ms, 30s, 2m")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Duration, E> {
        Err(E::custom(format!("`{value}`: missing unit (ms, s, m, h)")))
    }
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A size: a string with a unit or a plain number of bytes.
pub fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(t) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A rate as `--rate` reads it: a string with a unit or a plain number of bytes per
/// second, which goes through the same parser (so 0 is refused here too).
struct RateVisitor;

impl serde::de::Visitor<'_> for RateVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a rate such as 1mbit, 10MB/s or 125000 (bytes per second)")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<u64, E> {
        parse_rate(text).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<u64, E> {
        parse_rate(&value.to_string()).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<u64, E> {
        Err(E::custom(format!("`{value}`: a rate must be above 0")))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<u64, E> {
        Err(E::custom(format!(
            "`{value}`: a fraction needs a unit, e.g. 1.5mbit (a plain number is whole bytes per second)"
        )))
    }
}

pub fn optional_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(RateVisitor).map(Some)
}
