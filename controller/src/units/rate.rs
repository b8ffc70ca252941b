//! Bandwidth as people write it: `1mbit`, `100kbit`, `10MB/s`, `512KiB/s`, or plain bytes
//! per second (`125000`). `chaosctl inject network --rate` and the experiment file's
//! `network.rate` both read it here, so the flag and the file take the same words.
//!
//! Rules, chosen so that no spelling means two things:
//! - a plain integer is bytes per second (what `--rate` took before units existed);
//! - bits per second end in `bit`: `bit`, `kbit`, `mbit`, `gbit` (decimal, 1 kbit =
//!   1000 bit, as tc counts) and `kibit`, `mibit`, `gibit` (binary, 1 Kibit = 1024 bit).
//!   Case does not matter here (`Mbit`, `MBIT`, `Kibit`), as in tc: the word `bit` leaves
//!   no doubt about what is counted. A trailing `/s` is allowed (`Mbit/s`);
//! - bytes per second end in `B/s` with a capital `B`: `B/s`, `kB/s` or `KB/s`, `MB/s`,
//!   `GB/s` (decimal) and `KiB/s`, `MiB/s`, `GiB/s` (binary), exactly in that case, as
//!   the prefixes are written (`mB/s` would be millibytes);
//! - everything else is refused with the spellings that would say it: `10mb`, `10M` and
//!   `10Mb/s` could be bits or bytes; `kbps` is kilobytes to tc and kilobits to most
//!   people, so no `bps` form is guessed at.
//!
//! A prefixed unit takes up to [`MAX_DECIMALS`] decimals (`1.5mbit`); the result is
//! rounded to the nearest whole byte per second and must be at least 1 and at most
//! [`MAX_BYTES_PER_SECOND`].

/// The highest rate: its bit rate (how tc and the agent's status show rates) must fit
/// 64 bits. The agent refuses higher rates too; refusing them here names the flag.
pub const MAX_BYTES_PER_SECOND: u64 = u64::MAX / 8;

/// Decimals a prefixed unit may carry: `1.125mbit` is a sensible thing to ask, `1.0000001`
/// asks for a precision no link has.
pub const MAX_DECIMALS: usize = 3;

/// What one unit is worth, as bits per second (`bits_per_unit` / 8 bytes per second).
struct Unit {
    bits: u64,
    /// Whether the unit has a prefix, so that a fraction of it can be more than a byte.
    prefixed: bool,
}

const KILO: u64 = 1_000;
const KIBI: u64 = 1 << 10;

fn bit_unit(unit: &str) -> Option<Unit> {
    let lower = unit.to_ascii_lowercase();
    // `Mbit/s` is how the SI writes it; the `/s` adds nothing but is not wrong.
    let bits = match lower.strip_suffix("/s").unwrap_or(&lower) {
        "bit" => {
            return Some(Unit {
                bits: 1,
                prefixed: false,
            });
        }
        "kbit" => KILO,
        "mbit" => KILO * KILO,
        "gbit" => KILO * KILO * KILO,
        "kibit" => KIBI,
        "mibit" => KIBI * KIBI,
        "gibit" => KIBI * KIBI * KIBI,
        _ => return None,
    };
    Some(Unit {
        bits,
        prefixed: true,
    })
}

fn byte_unit(unit: &str) -> Option<Unit> {
    let bytes = match unit {
        "B/s" => {
            return Some(Unit {
                bits: 8,
                prefixed: false,
            });
        }
        "kB/s" | "KB/s" => KILO,
        "MB/s" => KILO * KILO,
        "GB/s" => KILO * KILO * KILO,
        "KiB/s" => KIBI,
        "MiB/s" => KIBI * KIBI,
        "GiB/s" => KIBI * KIBI * KIBI,
        _ => return None,
    };
    Some(Unit {
        bits: bytes * 8,
        prefixed: true,
    })
}

/// The two spellings a refused unit may have meant, for the message: `10mb` ->
/// "`10mbit` (bits per second) or `10MB/s` (bytes per second)".
fn suggest(number: &str, unit: &str) -> String {
    let mut letters = unit.chars().map(|c| c.to_ascii_lowercase());
    let (prefix, binary) = match (letters.next(), letters.next()) {
        (Some(p @ ('k' | 'm' | 'g')), second) => (Some(p), second == Some('i')),
        _ => (None, false),
    };
    let (bits, bytes) = match (prefix, binary) {
        (None, _) => ("bit".to_string(), "B/s".to_string()),
        (Some(p), false) => (format!("{p}bit"), format!("{}B/s", p.to_ascii_uppercase())),
        (Some(p), true) => (
            format!("{}ibit", p.to_ascii_uppercase()),
            format!("{}iB/s", p.to_ascii_uppercase()),
        ),
    };
    format!("`{number}{bits}` (bits per second) or `{number}{bytes}` (bytes per second)")
}

const UNITS: &str = "bit, kbit, mbit, gbit, Kibit, Mibit, Gibit (bits per second); \
                     B/s, kB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s (bytes per second); \
                     or a plain number of bytes per second";

fn unknown_unit(text: &str, number: &str, unit: &str) -> String {
    let lower = unit.to_ascii_lowercase();
    if lower.ends_with("bps") {
        return format!(
            "`{text}`: `{unit}` is ambiguous: tc reads `kbps` as kilobytes per second, most \
             people mean kilobits; write {}",
            suggest(number, unit)
        );
    }
    let looks_like_a_size = matches!(
        lower.trim_end_matches("/s"),
        "b" | "k" | "m" | "g" | "kb" | "mb" | "gb" | "ki" | "mi" | "gi" | "kib" | "mib" | "gib"
    );
    if looks_like_a_size {
        return format!(
            "`{text}`: `{unit}` could be bits or bytes; write {}",
            suggest(number, unit)
        );
    }
    format!("`{text}`: unknown unit `{unit}`; use {UNITS}")
}

/// Parses a rate into whole bytes per second (see the module's rules).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty rate; e.g. 1mbit, 10MB/s, 125000".into());
    }
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..number_len], text[number_len..].trim_start());
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(whole) || fraction.is_some_and(|f| !digits_only(f)) {
        return Err(format!(
            "`{text}`: expected a number and a unit, e.g. 1mbit, 1.5MB/s, 125000"
        ));
    }
    let unit_found = if unit.is_empty() {
        // A plain number: bytes per second.
        Unit {
            bits: 8,
            prefixed: false,
        }
    } else {
        bit_unit(unit)
            .or_else(|| byte_unit(unit))
            .ok_or_else(|| unknown_unit(text, number, unit))?
    };
    let fraction = fraction.unwrap_or("");
    if !fraction.is_empty() && !unit_found.prefixed {
        return Err(format!(
            "`{text}`: a fraction needs a prefixed unit (kbit, MB/s, ...): a rate is whole bytes per second"
        ));
    }
    if fraction.len() > MAX_DECIMALS {
        return Err(format!(
            "`{text}`: at most {MAX_DECIMALS} decimals (write a smaller unit for more precision)"
        ));
    }
    let too_large =
        || format!("`{text}`: above the highest rate, {MAX_BYTES_PER_SECOND} bytes per second");
    // Exact arithmetic: the number as an integer of tenths (or hundredths, ...), times the
    // unit's bits, over the scale and 8 bits, rounded to the nearest byte.
    let scale = 10u128.pow(fraction.len() as u32);
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| too_large())?
    };
    let scaled = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(fraction_value))
        .and_then(|n| n.checked_mul(u128::from(unit_found.bits)))
        .ok_or_else(too_large)?;
    let divisor = scale * 8;
    let bytes = (scaled + divisor / 2) / divisor;
    if bytes == 0 {
        return Err(if scaled == 0 {
            format!("`{text}`: a rate must be above 0 (leave it out for no limit)")
        } else {
            format!("`{text}`: below 1 byte per second, the smallest rate")
        });
    }
    match u64::try_from(bytes) {
        Ok(bytes) if bytes <= MAX_BYTES_PER_SECOND => Ok(bytes),
        _ => Err(too_large()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        match parse_rate(text) {
            Ok(rate) => panic!("`{text}` parsed as {rate}"),
            Err(message) => message,
        }
    }

    #[test]
    fn a_plain_number_is_bytes_per_second() {
        assert_eq!(parse_rate("125000"), Ok(125_000));
        assert_eq!(parse_rate("1"), Ok(1));
        assert_eq!(parse_rate(" 250000 "), Ok(250_000));
        assert_eq!(parse_rate("007"), Ok(7));
    }

    #[test]
    fn every_bit_unit_counts_as_tc_does() {
        for (text, bytes) in [
            ("8bit", 1),
            ("1kbit", 125),
            ("100kbit", 12_500),
            ("1mbit", 125_000),
            ("10mbit", 1_250_000),
            ("1gbit", 125_000_000),
            ("8kibit", 1024),
            ("1kibit", 128),
            ("1mibit", 131_072),
            ("1gibit", 134_217_728),
        ] {
            assert_eq!(parse_rate(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bit_units_take_any_case_like_tc() {
        for text in ["1mbit", "1Mbit", "1MBIT", "1mBiT"] {
            assert_eq!(parse_rate(text), Ok(125_000), "{text}");
        }
        for text in ["1Kibit", "1KiBit", "1kibit", "1KIBIT"] {
            assert_eq!(parse_rate(text), Ok(128), "{text}");
        }
        assert_eq!(parse_rate("16BIT"), Ok(2));
        assert_eq!(
            parse_rate("1 Gbit"),
            Ok(125_000_000),
            "a space before the unit"
        );
        assert_eq!(parse_rate("1Mbit/s"), Ok(125_000), "the SI's way");
        assert_eq!(parse_rate("1kibit/s"), Ok(128));
    }

    #[test]
    fn every_byte_unit_counts_in_its_own_base() {
        for (text, bytes) in [
            ("1B/s", 1),
            ("1500B/s", 1500),
            ("1kB/s", 1000),
            ("1KB/s", 1000),
            ("10MB/s", 10_000_000),
            ("2GB/s", 2_000_000_000),
            ("1KiB/s", 1024),
            ("512KiB/s", 512 << 10),
            ("1MiB/s", 1 << 20),
            ("1GiB/s", 1 << 30),
        ] {
            assert_eq!(parse_rate(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn byte_units_are_exact_in_case() {
        for text in [
            "1mB/s", "1Mb/s", "1mb/s", "1kib/s", "1MIB/s", "1gB/s", "1b/s",
        ] {
            let message = error(text);
            assert!(message.contains("B/s"), "{text}: {message}");
        }
    }

    #[test]
    fn fractions_of_prefixed_units_round_to_the_nearest_byte() {
        assert_eq!(parse_rate("1.5mbit"), Ok(187_500));
        assert_eq!(parse_rate("0.5MB/s"), Ok(500_000));
        assert_eq!(parse_rate("2.25MiB/s"), Ok(2_359_296));
        // 1.001 kbit = 125.125 B/s -> 125; 1.004 kbit = 125.5 -> 126 (half rounds up).
        assert_eq!(parse_rate("1.001kbit"), Ok(125));
        assert_eq!(parse_rate("1.004kbit"), Ok(126));
        assert_eq!(parse_rate("1.0mbit"), Ok(125_000));
        // Rounding up to 1 byte is a rate; 4 bits is half a byte, which rounds up.
        assert_eq!(parse_rate("4bit"), Ok(1));
        assert_eq!(parse_rate("12bit"), Ok(2));
        assert_eq!(parse_rate("0.004kbit"), Ok(1));
    }

    #[test]
    fn fractions_beyond_sense_are_refused() {
        assert!(error("1.0005mbit").contains("at most 3 decimals"));
        assert!(error("1.5").contains("prefixed unit"));
        assert!(error("1.5bit").contains("prefixed unit"));
        assert!(error("2.5B/s").contains("prefixed unit"));
        for malformed in [
            ".5mbit",
            "1.mbit",
            "1..5mbit",
            "1.2.3mbit",
            "-1mbit",
            "+1mbit",
        ] {
            assert!(
                error(malformed).contains("expected a number"),
                "{malformed}"
            );
        }
        assert!(error("1e6").contains("unknown unit `e6`"));
        assert!(error("1_000").contains("unknown unit"));
    }

    #[test]
    fn zero_and_less_than_a_byte_are_refused() {
        for zero in ["0", "0mbit", "0.000MB/s", "0B/s"] {
            assert!(error(zero).contains("above 0"), "{zero}");
        }
        for tiny in ["1bit", "3bit", "0.003kbit"] {
            assert!(error(tiny).contains("below 1 byte per second"), "{tiny}");
        }
        assert!(error("").contains("empty rate"));
        assert!(error("   ").contains("empty rate"));
    }

    #[test]
    fn the_highest_rate_is_the_one_whose_bit_rate_fits_64_bits() {
        let max = MAX_BYTES_PER_SECOND;
        assert_eq!(parse_rate(&max.to_string()), Ok(max));
        assert_eq!(parse_rate(&format!("{}bit", max * 8)), Ok(max));
        for too_large in [
            (max + 1).to_string(),
            u64::MAX.to_string(),
            "99999999999999999999999999999999999999999999999999".to_string(),
            "999999999999GiB/s".to_string(),
            format!("{}gbit", u64::MAX),
        ] {
            assert!(
                error(&too_large).contains("above the highest rate"),
                "{too_large}"
            );
        }
    }

    #[test]
    fn ambiguous_spellings_are_refused_with_what_would_say_them() {
        let message = error("10mb");
        assert!(
            message.contains("could be bits or bytes")
                && message.contains("`10mbit`")
                && message.contains("`10MB/s`"),
            "{message}"
        );
        let message = error("10MiB");
        assert!(
            message.contains("`10Mibit`") && message.contains("`10MiB/s`"),
            "{message}"
        );
        for text in [
            "10M", "10k", "10G", "10MB", "10Mb/s", "10kb", "10b", "10B", "10Gi",
        ] {
            assert!(
                error(text).contains("could be bits or bytes"),
                "{text}: {}",
                error(text)
            );
        }
    }

    #[test]
    fn bps_forms_are_refused_with_the_ambiguity_explained() {
        for text in [
            "100kbps", "100KBps", "100Kbps", "1mbps", "1MBps", "8bps", "1gbps",
        ] {
            let message = error(text);
            assert!(
                message.contains("ambiguous") && message.contains("kilobytes"),
                "{text}: {message}"
            );
        }
        let message = error("100kbps");
        assert!(
            message.contains("`100kbit`") && message.contains("`100KB/s`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_units_list_the_known_ones() {
        for text in ["1tbit", "1 furlongs", "1mbits", "1MB/sec"] {
            let message = error(text);
            assert!(message.contains("unknown unit"), "{text}: {message}");
            assert!(
                message.contains("kbit") && message.contains("MiB/s"),
                "{message}"
            );
        }
    }
}
