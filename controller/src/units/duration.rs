//! Durations as people type them: `500ms`, `30s`, `2m`, `1h`, `1m30s`.

use std::time::Duration;

/// Parses with checked arithmetic: a number or a sum too large for a [`Duration`] is an
/// error, never a panic or a wrapped value. How long a field may be is its own check.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let too_large = || format!("`{text}`: too large");
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{text}`: expected a number, e.g. 30s, 500ms, 2m"));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| too_large())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds = |per_unit: u64| {
            value
                .checked_mul(per_unit)
                .map(Duration::from_secs)
                .ok_or_else(too_large)
        };
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => seconds(60)?,
            "h" => seconds(3600)?,
            "" => return Err(format!("`{text}`: missing unit (ms, s, m, h)")),
            other => return Err(format!("`{text}`: unknown unit `{other}` (ms, s, m, h)")),
        };
        total = total.checked_add(part).ok_or_else(too_large)?;
    }
    Ok(total)
}

/// The duration as [`parse_duration`] reads it (`1h30m`, `2s500ms`, `0s`), for messages.
pub fn format_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    if total_ms == 0 {
        return "0s".into();
    }
    let (hours, rest) = (total_ms / 3_600_000, total_ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (seconds, millis) = (rest / 1000, rest % 1000);
    let mut text = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")] {
        if value > 0 {
            text.push_str(&format!("{value}{unit}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for bad in ["", "30", "s", "3x", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_what_it_parses() {
        for text in ["0s", "500ms", "30s", "1m30s", "6h", "6h53m", "1h1s250ms"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(format_duration(parsed), text);
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        // u64::MAX hours, u64::MAX minutes, more digits than a u64, and a sum past Duration::MAX.
        for huge in [
            "18446744073709551615h",
            "18446744073709551615m",
            "99999999999999999999s",
            "18446744073709551615s18446744073709551615s",
        ] {
            let error = parse_duration(huge).unwrap_err();
            assert!(error.contains("too large"), "{huge}: {error}");
        }
        // The largest whole number of seconds still parses; limits per field come later.
        assert_eq!(
            parse_duration("9223372036854775808s").unwrap(),
            Duration::from_secs(1 << 63)
        );
    }
}
