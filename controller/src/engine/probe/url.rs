//! Strict parsing of probe destinations: `http(s)://HOST[:PORT][/PATH][?QUERY]` URLs and
//! `HOST:PORT` addresses. A probe's URL becomes a request line and a Host header, so
//! anything that could split or bend them (CR, LF, spaces, other control characters,
//! userinfo, a fragment, a character outside RFC 3986) is refused here, before anything
//! runs, rather than escaped later. Error messages never echo the offending text: a
//! control character copied into a log or a gRPC status would be an injection itself.

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A destination host: a DNS name (lower case, no trailing dot) or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
        }
    }
}

/// A parsed probe URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUrl {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
    /// `/` when the URL has no path; the query (without `?`) is in `query`.
    pub path: String,
    pub query: Option<String>,
}

impl ProbeUrl {
    /// The Host header: the port only when it is not the scheme's default.
    pub fn host_header(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The request target of the request line: path and query.
    pub fn request_target(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Refuses control characters (CR, LF, tab, NUL, DEL…), spaces and non-ASCII, naming the
/// first one by position (never by copying it).
fn check_characters(text: &str) -> Result<(), String> {
    for (index, byte) in text.bytes().enumerate() {
        let what = match byte {
            b'\r' => "a carriage return (CR)",
            b'\n' => "a line feed (LF)",
            b'\t' => "a tab",
            b' ' => "a space",
            0..=0x1f | 0x7f => "a control character",
            0x80.. => "a non-ASCII character (write international names in punycode)",
            _ => continue,
        };
        return Err(format!("contains {what} at byte {index}"));
    }
    Ok(())
}

/// `http://HOST[:PORT][/PATH][?QUERY]` or `https://…`.
pub fn parse_url(text: &str) -> Result<ProbeUrl, String> {
    check_characters(text)?;
    let (scheme_text, rest) = text
        .split_once("://")
        .ok_or("must start with http:// or https://")?;
    let scheme = if scheme_text.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme_text.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err("the scheme must be http or https".into());
    };
    if rest.contains('#') {
        return Err("must not have a fragment (#…): it is never sent to the server".into());
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(
            "must not carry a user name or password (user@host): use headers or \
                    bearer_token_file"
                .into(),
        );
    }
    let (host, port) = parse_authority(authority, Some(scheme.default_port()))?;
    let (path, query) = match after.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (after, None),
    };
    // Positions count from the start of the URL, as the other messages do.
    let path_offset = text.len() - after.len();
    check_uri_part("the path", path, path_offset, false)?;
    if let Some(query) = query {
        check_uri_part("the query", query, path_offset + path.len() + 1, true)?;
    }
    Ok(ProbeUrl {
        scheme,
        host,
        port,
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        query: query.map(str::to_string),
    })
}

/// `HOST:PORT` (an IPv6 address in brackets), as a TCP probe's address.
pub fn parse_address(text: &str) -> Result<(Host, u16), String> {
    check_characters(text)?;
    if text.contains(['/', '?', '#', '@']) {
        return Err("must be HOST:PORT, not a URL".into());
    }
    parse_authority(text, None)
}

/// `host[:port]`; the port is required when there is no default.
fn parse_authority(authority: &str, default_port: Option<u16>) -> Result<(Host, u16), String> {
    let (host_text, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address needs its closing `]`")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("only `:PORT` may follow an IPv6 address")?,
            ),
        };
        (inside, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host = if authority.starts_with('[') {
        // Zone ids (`%eth0`) and IPv4 in brackets are not addresses a probe should name.
        let ip: std::net::Ipv6Addr = host_text
            .parse()
            .map_err(|_| "the address in brackets is not an IPv6 address".to_string())?;
        Host::Ip(IpAddr::V6(ip))
    } else {
        parse_host(host_text)?
    };
    let port = match (port_text, default_port) {
        (Some(text), _) => text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or("the port must be a number from 1 to 65535")?,
        (None, Some(default)) => default,
        (None, None) => return Err("needs a port (HOST:PORT)".into()),
    };
    Ok((host, port))
}

/// An IPv4 address or a DNS name of letters, digits, `-`, `_` and `.` (labels of 1 to 63).
pub fn parse_host(text: &str) -> Result<Host, String> {
    if text.is_empty() {
        return Err("needs a host".into());
    }
    if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(
            "the host must be an IP address or a DNS name (letters, digits, `-`, `_`, \
                    labels of 1 to 63 separated by `.`)"
                .into(),
        );
    }
    // All-numeric dotted names that are not valid IPv4 (`1.2.3.999`) would be read as
    // addresses by some resolvers and as names by others.
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the host looks like an IPv4 address but is not one".into());
    }
    Ok(Host::Name(name))
}

/// RFC 3986 path or query characters: unreserved, sub-delims, `:`, `@`, `/`, `?` (query
/// only) and `%XX` escapes.
fn check_uri_part(what: &str, text: &str, offset: usize, is_query: bool) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let escape_ok = bytes
                .get(index + 1..index + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !escape_ok {
                return Err(format!(
                    "{what} has a `%` at byte {} that is not followed by two hex digits",
                    offset + index
                ));
            }
            index += 3;
            continue;
        }
        let allowed = byte.is_ascii_alphanumeric()
            || b"-._~!$&'()*+,;=:@/".contains(&byte)
            || (is_query && byte == b'?');
        if !allowed {
            return Err(format!(
                "{what} has `{}` at byte {}: percent-encode it (%{byte:02X})",
                byte as char,
                offset + index
            ));
        }
        index += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_paths_and_queries() {
        let url = parse_url("http://10.0.0.2/health").unwrap();
        assert_eq!(url.scheme, Scheme::Http);
        assert_eq!(url.host, Host::Ip("10.0.0.2".parse().unwrap()));
        assert_eq!(
            (url.port, url.path.as_str(), url.query.as_deref()),
            (80, "/health", None)
        );
        assert_eq!(url.host_header(), "10.0.0.2");

        let url = parse_url("HTTPS://Flask.Shop.svc.cluster.local.:8443").unwrap();
        assert_eq!(url.scheme, Scheme::Https);
        assert_eq!(url.host, Host::Name("flask.shop.svc.cluster.local".into()));
        assert_eq!(url.request_target(), "/");
        assert_eq!(url.host_header(), "flask.shop.svc.cluster.local:8443");

        let url = parse_url("http://[fd00::1]:9090/api/v1/query?query=up%7Bjob%3D%22a%22%7D&x=1")
            .unwrap();
        assert_eq!(url.host, Host::Ip("fd00::1".parse().unwrap()));
        assert_eq!(url.host_header(), "[fd00::1]:9090");
        assert_eq!(
            url.request_target(),
            "/api/v1/query?query=up%7Bjob%3D%22a%22%7D&x=1"
        );
        assert_eq!(parse_url("https://[::1]").unwrap().port, 443);
        assert_eq!(
            parse_url("http://web?a=b").unwrap().request_target(),
            "/?a=b"
        );
    }

    #[test]
    fn control_characters_and_spaces_are_refused_by_position() {
        let cases = [
            (
                "http://web/\r\nX-Injected: 1",
                "carriage return (CR) at byte 11",
            ),
            ("http://web/a\nb", "line feed (LF) at byte 12"),
            ("http://web/a b", "space at byte 12"),
            ("http://web/a\tb", "tab at byte 12"),
            ("http://web/\0", "control character at byte 11"),
            ("http://web/\x7f", "control character at byte 11"),
            ("http://wéb/", "non-ASCII character"),
            (" http://web/", "space at byte 0"),
        ];
        for (url, expected) in cases {
            let error = parse_url(url).unwrap_err();
            assert!(error.contains(expected), "{url:?}: {error}");
            assert!(!error.contains(['\r', '\n', '\t', '\0']), "{error:?}");
        }
        assert!(parse_address("db:5432\r\n").is_err());
    }

    #[test]
    fn schemes_userinfo_fragments_and_odd_characters_are_refused() {
        let cases = [
            ("ftp://web/", "scheme must be http or https"),
            ("file:///etc/passwd", "scheme must be http or https"),
            ("web:8080/health", "must start with http://"),
            ("http://user:secret@web/", "user name or password"),
            ("http://web@10.0.0.2/", "user name or password"),
            ("http://web/#top", "fragment"),
            ("http:///health", "needs a host"),
            ("http://web:/", "port must be a number"),
            ("http://web:0/", "port must be a number"),
            ("http://web:65536/", "port must be a number"),
            ("http://web:+80/", "port must be a number"),
            ("http://[fe80::1%25eth0]/", "not an IPv6 address"),
            ("http://[::1/", "closing `]`"),
            ("http://[::1]x/", "only `:PORT`"),
            ("http://we_b!/", "DNS name"),
            ("http://-web/", "DNS name"),
            ("http://1.2.3.999/", "looks like an IPv4 address"),
            ("http://web/<script>", "`<` at byte 11"),
            ("http://web/a\\b", "`\\` at byte 12"),
            ("http://web/%zz", "not followed by two hex digits"),
            ("http://web/?q={x}", "`{` at byte 14"),
        ];
        for (url, expected) in cases {
            let error = parse_url(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[test]
    fn tcp_addresses() {
        assert_eq!(
            parse_address("db.shop.svc:5432").unwrap(),
            (Host::Name("db.shop.svc".into()), 5432)
        );
        assert_eq!(
            parse_address("[::1]:7").unwrap(),
            (Host::Ip("::1".parse().unwrap()), 7)
        );
        assert!(parse_address("db").unwrap_err().contains("needs a port"));
        assert!(parse_address("::1:80").is_err());
        assert!(
            parse_address("http://db:1")
                .unwrap_err()
                .contains("not a URL")
        );
        assert!(parse_address("a@db:1").unwrap_err().contains("not a URL"));
    }
}
