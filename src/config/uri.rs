//! LwM2M server URIs: `coap://host[:port][/path]` and `coaps://…` (DTLS).
//!
//! A hand-written parser for this one shape, rather than a general URI crate, because the shape
//! is small and the errors should say what an administrator got wrong ("IPv6 addresses must be
//! written in brackets") rather than which RFC 3986 production failed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The default CoAP port (RFC 7252 §6.1).
const DEFAULT_PORT: u16 = 5683;
/// The default CoAP-over-DTLS port.
const DEFAULT_SECURE_PORT: u16 = 5684;

/// A validated `coap://` or `coaps://` server URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUri {
    original: String,
    secure: bool,
    host: ServerHost,
    port: u16,
    path: Vec<String>,
}

/// The host part of a [`ServerUri`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerHost {
    /// A DNS name, resolved by the runtime (it may change between registrations).
    Name(String),
    /// An IPv4 address or a bracketed IPv6 literal.
    Ip(IpAddr),
}

impl ServerUri {
    /// The host to send to.
    pub fn host(&self) -> &ServerHost {
        &self.host
    }

    /// `coaps://`: the server is reached over DTLS.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The UDP port (5683, or 5684 for `coaps://`, when the URI names none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The percent-decoded path segments, each one Uri-Path option (empty for `coap://host`).
    pub fn path_segments(&self) -> &[String] {
        &self.path
    }

    /// The URI as configured.
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// Parses `coap://host[:port][/path]`; the error is the reason, for a `ConfigError`.
    pub(super) fn parse(s: &str) -> Result<Self, String> {
        const SHAPE: &str = "expected coap://host[:port][/path] or coaps://…";
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!("{SHAPE}, found \"{s}\""));
        };
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "coap" => false,
            "coaps" => true,
            _ => {
                return Err(format!(
                    "unsupported scheme \"{scheme}\": only coap:// (CoAP over UDP) and coaps:// \
                     (over DTLS) are supported"
                ));
            }
        };
        if rest.contains(['?', '#']) {
            return Err("a server URI takes no query or fragment".to_owned());
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err("a server URI takes no user information (user@host)".to_owned());
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None if secure => DEFAULT_SECURE_PORT,
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port != 0 && p.bytes().all(|b| b.is_ascii_digit()) => port,
                _ => return Err(format!("invalid port \"{p}\": must be between 1 and 65535")),
            },
        };
        Ok(Self {
            original: s.to_owned(),
            secure,
            host,
            port,
            path: parse_path(path)?,
        })
    }
}

impl fmt::Display for ServerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(authority: &str) -> Result<(ServerHost, Option<&str>), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return Err("unterminated IPv6 literal: missing ']'".to_owned());
        };
        let ip: Ipv6Addr = literal
            .parse()
            .map_err(|_| format!("invalid IPv6 address \"{literal}\""))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected \"{after}\" after the IPv6 address"))?,
            ),
        };
        return Ok((ServerHost::Ip(IpAddr::V6(ip)), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if port.is_some_and(|p| p.contains(':')) {
        return Err(
            "IPv6 addresses must be written in brackets, e.g. coap://[2001:db8::1]:5683".to_owned(),
        );
    }
    if host.is_empty() {
        return Err("missing host".to_owned());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((ServerHost::Ip(IpAddr::V4(ip)), port));
    }
    if !is_dns_name(host) {
        return Err(format!("invalid host name \"{host}\""));
    }
    Ok((ServerHost::Name(host.to_owned()), port))
}

/// Letters, digits, `-` and `_` in non-empty dot-separated labels (a trailing dot is allowed),
/// and not all-numeric (that would be a mistyped IPv4 address such as `192.168.1.300`).
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    labels_ok && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Splits the path after the authority into percent-decoded segments. A single trailing `/` is
/// ignored; empty segments elsewhere are rejected because they are almost always a typo.
fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if path.is_empty() {
        return Ok(Vec::new());
    }
    path.split('/')
        .map(|segment| {
            if segment.is_empty() {
                return Err("empty path segment (\"//\")".to_owned());
            }
            percent_decode(segment)
        })
        .collect()
}

fn percent_decode(segment: &str) -> Result<String, String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in path segment \"{segment}\""))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("path segment \"{segment}\" is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_addresses_ports_and_paths() {
        let uri = ServerUri::parse("coap://lwm2m.example.net").unwrap();
        assert_eq!(uri.host(), &ServerHost::Name("lwm2m.example.net".into()));
        assert_eq!(uri.port(), 5683);
        assert!(uri.path_segments().is_empty());

        let uri = ServerUri::parse("COAP://192.0.2.7:15683/lwm2m/rd%20x/").unwrap();
        assert_eq!(uri.host(), &ServerHost::Ip("192.0.2.7".parse().unwrap()));
        assert_eq!(uri.port(), 15683);
        assert_eq!(uri.path_segments(), ["lwm2m", "rd x"]);

        let uri = ServerUri::parse("coap://[2001:db8::1]:5684").unwrap();
        assert_eq!(uri.host(), &ServerHost::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(uri.port(), 5684);
        assert_eq!(
            ServerUri::parse("coap://[::1]").unwrap().host(),
            &ServerHost::Ip("::1".parse().unwrap())
        );
        assert_eq!(uri.to_string(), "coap://[2001:db8::1]:5684");
    }

    #[test]
    fn rejects_malformed_uris_with_a_reason() {
        let cases = [
            ("http://h", "unsupported scheme \"http\""),
            ("lwm2m.example.net", "expected coap://host[:port][/path]"),
            ("coap://", "missing host"),
            ("coap://:5683", "missing host"),
            ("coap://h:0", "invalid port \"0\""),
            ("coap://h:65536", "invalid port \"65536\""),
            ("coap://h:+1", "invalid port \"+1\""),
            ("coap://h:", "invalid port \"\""),
            (
                "coap://2001:db8::1",
                "IPv6 addresses must be written in brackets",
            ),
            ("coap://[2001:db8::1", "missing ']'"),
            ("coap://[2001:db8::g]", "invalid IPv6 address"),
            ("coap://[::1]5683", "unexpected \"5683\""),
            ("coap://192.168.1.300", "invalid host name"),
            ("coap://bad host", "invalid host name"),
            ("coap://u@h", "no user information"),
            ("coap://h/rd?x=1", "no query or fragment"),
            ("coap://h/a//b", "empty path segment"),
            ("coap://h/a%2", "invalid percent-encoding"),
        ];
        for (uri, expected) in cases {
            let err = ServerUri::parse(uri).expect_err(uri);
            assert!(err.contains(expected), "{uri}: {err}");
        }
    }
}
