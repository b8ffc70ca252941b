//! Sizes as people type them: `256MiB`, `1GiB`, `500M`, `500MB`, plain bytes. The
//! command line's size flags and the experiment file's size fields both read them here.

/// `256MiB`, `1GiB`, `500M` (binary), `500MB` (decimal), `1024`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let value: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("`{text}`: expected a size like 256MiB"))?;
    let factor: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        // Single letters are binary, as memory limits are set (and as `inject memory` reads them).
        "k" | "K" | "Ki" | "KiB" => 1 << 10,
        "M" | "Mi" | "MiB" => 1 << 20,
        "G" | "Gi" | "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("`{text}`: unknown unit `{other}`")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}`: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(
            parse_size("18446744073709551615G")
                .unwrap_err()
                .contains("too large")
        );
    }
}
