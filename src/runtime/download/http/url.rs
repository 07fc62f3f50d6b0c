//! `http://` / `https://` URLs, just as far as a GET needs them (RFC 3986, RFC 9110 §4.2), and
//! resolving a redirect's `Location` against them. Hand-written because the `url` crate brings
//! IDNA/Unicode tables the daemon does not need: Package URIs are ASCII (an internationalised
//! host name arrives in its `xn--` form).

use crate::runtime::download::DownloadError;

/// A parsed HTTP(S) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    /// `https`.
    pub(crate) tls: bool,
    /// Host name (lower case) or IP literal (IPv6 without brackets).
    pub(crate) host: String,
    /// Port (80 / 443 by default).
    pub(crate) port: u16,
    /// Path and query as sent in the request line (starts with `/`); no fragment.
    pub(crate) target: String,
}

impl HttpUrl {
    /// Parses an absolute `http(s)://host[:port][/path][?query][#fragment]` URL. Credentials in
    /// the URL (`user:pw@`) are refused: they would end up in logs and the server's state.
    pub(crate) fn parse(text: &str) -> Result<Self, DownloadError> {
        let invalid = |why: &str| DownloadError::InvalidUri(format!("{text:?}: {why}"));
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("spaces, controls or non-ASCII characters"));
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("not an absolute URL"))?;
        let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (false, 80),
            "https" => (true, 443),
            other => return Err(DownloadError::UnsupportedScheme(other.to_string())),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| invalid("bad host"))?;
        let port = match port {
            None | Some("") => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("bad port"))?,
        };
        let target = if target.starts_with('/') {
            target.to_string()
        } else {
            format!("/{target}")
        };
        Ok(Self {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            target,
        })
    }

    /// The `Host` header value: the port only when it is not the scheme's default.
    pub(crate) fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The URL a redirect's `Location` points to (RFC 3986 §5.2: absolute, network-path,
    /// absolute-path, query-only or relative-path references).
    pub(crate) fn join(&self, location: &str) -> Result<Self, DownloadError> {
        let location = location.trim();
        let location = location.split('#').next().unwrap_or_default();
        if location.contains("://") {
            return Self::parse(location);
        }
        let scheme = if self.tls { "https" } else { "http" };
        if location.starts_with("//") {
            return Self::parse(&format!("{scheme}:{location}"));
        }
        if !location.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(DownloadError::InvalidUri(format!(
                "redirect to {location:?}: spaces, controls or non-ASCII characters"
            )));
        }
        let (base_path, base_query) = match self.target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.target.as_str(), None),
        };
        let (path, query) = match location.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (location, None),
        };
        let (path, query) = if path.is_empty() {
            // "" keeps path and query, "?q" keeps the path.
            (base_path.to_string(), query.or(base_query))
        } else if path.starts_with('/') {
            (remove_dot_segments(path), query)
        } else {
            let dir = base_path.rfind('/').map_or("/", |at| &base_path[..=at]);
            (remove_dot_segments(&format!("{dir}{path}")), query)
        };
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        Ok(Self {
            target,
            ..self.clone()
        })
    }
}

/// `host[:port]` or `[v6][:port]`; `None` for an empty or malformed host.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        return Some((host, port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    // reg-name as DNS uses it (letters, digits, '-', '.', '_') or an IPv4 address.
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    valid.then_some((host, port))
}

/// RFC 3986 §5.2.4 for an absolute path: resolves `.` and `..` segments.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // A trailing dot segment leaves a directory: "/a/b/.." is "/a/".
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> HttpUrl {
        HttpUrl::parse(s).unwrap()
    }

    #[test]
    fn parses_what_a_get_needs() {
        let u = url("HTTPS://Example.NET:8443/a/b.bin?x=1&y#frag");
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("example.net", 8443));
        assert_eq!(u.target, "/a/b.bin?x=1&y");
        assert_eq!(u.authority(), "example.net:8443");
        let u = url("http://10.0.0.1");
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        assert_eq!(u.authority(), "10.0.0.1");
        let u = url("http://[::1]:8080?q");
        assert_eq!((u.host.as_str(), u.target.as_str()), ("::1", "/?q"));
        assert_eq!(u.authority(), "[::1]:8080");
        assert_eq!(url("https://h:443/").authority(), "h");
        assert_eq!(url("http://h:/").port, 80);
    }

    #[test]
    fn refuses_what_cannot_be_sent() {
        for bad in [
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://u:p@h/",
            "http://h/a b",
            "http://h/\r\nX: y",
            "http://[::1/",
            "http://[nope]/",
            "http://h\u{e9}.net/",
            "http:/h/",
        ] {
            assert!(
                matches!(HttpUrl::parse(bad), Err(DownloadError::InvalidUri(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            HttpUrl::parse("ftp://h/"),
            Err(DownloadError::UnsupportedScheme("ftp".into()))
        );
    }

    #[test]
    fn resolves_redirect_locations() {
        let base = url("http://h:81/a/b/c?q=1");
        let join = |l: &str| base.join(l).unwrap();
        assert_eq!(join("https://x/y"), url("https://x/y"));
        assert_eq!(join("//x:9/y"), url("http://x:9/y"));
        assert_eq!(join("/p?z"), url("http://h:81/p?z"));
        assert_eq!(join("d"), url("http://h:81/a/b/d"));
        assert_eq!(join("../d"), url("http://h:81/a/d"));
        assert_eq!(join("./d/../e"), url("http://h:81/a/b/e"));
        assert_eq!(join("../../../../x"), url("http://h:81/x"));
        assert_eq!(join(".."), url("http://h:81/a/"));
        assert_eq!(join("?n"), url("http://h:81/a/b/c?n"));
        assert_eq!(join(""), base);
        assert_eq!(join("/a#f"), url("http://h:81/a"));
        assert!(base.join("/a b").is_err());
        assert!(base.join("ftp://x/").is_err());
    }

    #[test]
    fn dot_segments() {
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("/.."), "/");
        assert_eq!(remove_dot_segments("/a/."), "/a/");
        assert_eq!(remove_dot_segments("/"), "/");
        assert_eq!(remove_dot_segments("/a//b"), "/a//b");
    }
}
