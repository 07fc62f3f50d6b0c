//! Pull downloads of firmware packages: `coap://` (Block2 on a socket of its own, ETag-checked)
//! and `http://` / `https://` (Range + If-Match). A fetch streams bytes to the caller's channel as
//! they arrive (bounded: the verifier's pace is the download's pace), resumes by itself after a
//! lost connection with back-off, and fails with the error the Update Result is derived from.
//!
//! Both transports are async on the caller's runtime (no blocking calls, no extra threads), so a
//! fetch can run on the daemon's single-threaded runtime next to the main loop.
//!
//! Resume semantics (details in `coap.rs` and `http/mod.rs`):
//! - `coap://`: ask for the block that holds the byte before the next one wanted (so a resume
//!   exactly at the end of the representation sees the last block and ends cleanly), drop what
//!   was delivered already, and check the ETag when the server sends one. A response without an
//!   ETag is not treated as a change (libcoap, for one, tags only transfers that started at
//!   block 0); the package signature is the final guard.
//! - `http(s)://`: `Range: bytes=N-` with `If-Match` (strong ETag) or `If-Unmodified-Since`
//!   (Last-Modified); without either validator a resume could splice two different packages, so
//!   the fetch fails with [`DownloadError::EtagChanged`] and the caller restarts from zero.

mod coap;
mod http;
mod retry;
mod sink;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::CoapsCredential;
use crate::core::coap::endpoint::CoapConfig;
use crate::runtime::dtls::Credentials;

/// What to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// The package URI.
    pub uri: String,
    /// First byte wanted (0, or where an earlier transfer stopped).
    pub start: u64,
    /// One past the last byte wanted (`None`: to the end).
    pub end: Option<u64>,
    /// The representation the earlier transfer saw (CoAP ETag / HTTP entity tag): a different
    /// one means the package changed and the transfer must restart from zero. Pass back
    /// [`FetchMeta::etag`] unchanged; for HTTP it is a validator token (see there).
    pub etag: Option<Vec<u8>>,
}

/// What the server said about the representation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchMeta {
    /// Its entity tag, when the server sends one. For `http(s)://` this is a validator token:
    /// the strong entity tag as sent, quotes included (`"6d1-5e3f"`), or, when the server sends
    /// no strong ETag, its `Last-Modified` header as `Last-Modified: <HTTP-date>` (entity tags
    /// always start with `"` or `W/`, so the two cannot be confused). Weak ETags are not
    /// validators for ranges (RFC 9110 §13.1.1) and are never returned.
    pub etag: Option<Vec<u8>>,
    /// Its total size, when known (Size2, Content-Length / Content-Range).
    pub total: Option<u64>,
}

/// Transfer settings.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// Extra CA certificates (PEM) trusted for `https://` besides the system store.
    pub ca_file: Option<PathBuf>,
    /// Connect / first-response timeout per attempt.
    pub connect_timeout: Duration,
    /// Give up an attempt when no byte arrives for this long.
    pub idle_timeout: Duration,
    /// Give up the whole fetch after this long.
    pub overall_timeout: Duration,
    /// Attempts after a lost connection before giving up. Counts consecutive failures: an
    /// attempt that delivered bytes before it failed restores the budget (and the back-off).
    pub retries: u32,
    /// First back-off between attempts (doubles, with jitter).
    pub retry_initial: Duration,
    /// Back-off cap.
    pub retry_max: Duration,
    /// CoAP transmission parameters for `coap://`.
    pub coap: CoapConfig,
    /// Block size exponent asked for in Block2 (6 = 1024 bytes; larger values are clamped to 6).
    pub block_szx: u8,
    /// DTLS credentials for `coaps://` URIs, by prefix; a `coaps://` URI no prefix matches is
    /// unsupported (Result 9).
    pub coaps: Vec<CoapsCredential>,
}

impl DownloadConfig {
    /// The credentials for the `coaps://` URI `uri` on `host`: those of the longest matching
    /// prefix (compared with the scheme and host in lower case, as URIs compare them).
    pub fn coaps_credentials(&self, uri: &str, host: &str) -> Option<Credentials> {
        let lower = |u: &str| match u.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                format!(
                    "{}://{}{path}",
                    scheme.to_ascii_lowercase(),
                    authority.to_ascii_lowercase()
                )
            }
            None => u.to_string(),
        };
        let uri = lower(uri);
        self.coaps
            .iter()
            .filter(|c| uri.starts_with(&lower(&c.prefix)))
            .max_by_key(|c| c.prefix.len())
            .and_then(|c| Credentials::from_config(&c.security, host))
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The URI is not usable (syntax, unresolvable host, 4.04 / 404 / 410 for the resource).
    #[error("invalid URI: {0}")]
    InvalidUri(String),
    /// A scheme this build cannot fetch.
    #[error("unsupported protocol: {0}")]
    UnsupportedScheme(String),
    /// The representation changed (ETag differs): restart from zero.
    #[error("the package changed on the server")]
    EtagChanged,
    /// The connection was lost and the retries ran out (or the overall timeout passed).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The server refused (other CoAP / HTTP error codes).
    #[error("server answered {0}")]
    Refused(String),
    /// TLS failed (certificate not trusted, host name mismatch).
    #[error("TLS: {0}")]
    Tls(String),
    /// The receiver of the bytes went away (the verifier refused the package).
    #[error("transfer aborted by the receiver")]
    Aborted,
}

impl DownloadError {
    /// The Firmware Update Result this failure is reported as.
    pub fn update_result(&self) -> u8 {
        use crate::update::result;
        match self {
            Self::InvalidUri(_) => result::INVALID_URI,
            Self::UnsupportedScheme(_) => result::UNSUPPORTED_PROTOCOL,
            Self::ConnectionLost(_) | Self::EtagChanged | Self::Aborted => result::CONNECTION_LOST,
            Self::Refused(_) => result::INVALID_URI,
            Self::Tls(_) => result::CONNECTION_LOST,
        }
    }
}

impl Default for DownloadConfig {
    /// Timeouts for a gateway on a cellular link: 30 s to connect, 60 s without a byte, a day in
    /// all; 8 retries, 2 s doubling to 5 min.
    fn default() -> Self {
        Self {
            ca_file: None,
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            overall_timeout: Duration::from_secs(24 * 3600),
            retries: 8,
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            coap: CoapConfig::default(),
            block_szx: 6,
            coaps: Vec::new(),
        }
    }
}

/// The URI schemes [`fetch`] can pull from (for /5/0/8 Firmware Update Protocol Support:
/// 0 CoAP, 2 HTTP/1.1, 3 HTTPS/1.1).
pub const SUPPORTED_SCHEMES: &[&str] = &["coap", "http", "https"];

/// Checks a Package URI when the server writes it: `Ok` if [`fetch`] can use it,
/// `UnsupportedScheme` for a scheme this build cannot fetch (`coaps` until DTLS arrives,
/// `coap+tcp`, `ftp`, …: Update Result 9), `InvalidUri` for a malformed one (Update Result 7).
/// Syntax only: the host is not resolved here.
pub fn scheme_supported(uri: &str) -> Result<(), DownloadError> {
    match Scheme::of(uri)? {
        Scheme::Coap => coap::Target::parse(uri).map(|_| ()),
        Scheme::Http => http::HttpUrl::parse(uri).map(|_| ()),
    }
}

/// Which transport a URI needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Coap,
    Http,
}

impl Scheme {
    fn of(uri: &str) -> Result<Self, DownloadError> {
        let Some((scheme, _)) = uri.split_once("://") else {
            return Err(DownloadError::InvalidUri(format!(
                "{uri:?} is not an absolute URI (scheme://host/path)"
            )));
        };
        // RFC 3986 §3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), case-insensitive.
        let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid {
            return Err(DownloadError::InvalidUri(format!("bad scheme in {uri:?}")));
        }
        match scheme.to_ascii_lowercase().as_str() {
            "coap" | "coaps" => Ok(Self::Coap),
            "http" | "https" => Ok(Self::Http),
            other => Err(DownloadError::UnsupportedScheme(other.to_string())),
        }
    }
}

/// Streams bytes `[start, end)` of `req.uri` into `sink`, in order, resuming by itself after lost
/// connections. Returns when the range was delivered completely (or the representation ended
/// before `end`: [`FetchMeta::total`] then tells the real size). An empty range (`end <= start`)
/// returns at once without contacting the server.
///
/// Runs entirely on the caller's runtime without blocking it. Fails with `Aborted` as soon as the
/// receiver is dropped, and with `ConnectionLost` when `overall_timeout` passes.
pub async fn fetch(
    req: FetchRequest,
    config: &DownloadConfig,
    sink: mpsc::Sender<Vec<u8>>,
) -> Result<FetchMeta, DownloadError> {
    let scheme = Scheme::of(&req.uri)?;
    if req.end.is_some_and(|end| end <= req.start) {
        return Ok(FetchMeta {
            etag: req.etag,
            total: None,
        });
    }
    let deadline = tokio::time::Instant::now() + config.overall_timeout;
    let seed = crate::runtime::setup::random_seed()
        .map_err(|e| DownloadError::ConnectionLost(format!("no randomness: {e}")))?;
    let mut retry = retry::Retry::new(config, deadline, seed);
    let mut delivery = sink::Delivery::new(sink, req.start, req.end);
    let work = async {
        match scheme {
            Scheme::Coap => coap::fetch(&req, config, &mut delivery, &mut retry, seed).await,
            Scheme::Http => http::fetch(&req, config, &mut delivery, &mut retry).await,
        }
    };
    let result = match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(DownloadError::ConnectionLost(format!(
            "not finished within the overall timeout of {:?}",
            config.overall_timeout
        ))),
    };
    // Bytes gathered before the end (or the failure) still reach the receiver: whatever was
    // received intact may complete a chunk, and so a checkpoint to resume from.
    let flushed = delivery.flush().await;
    result.and_then(|meta| flushed.map(|()| meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coaps_credentials_come_from_the_longest_matching_prefix() {
        use crate::config::{CoapsCredential, Secret, ServerSecurity};
        let psk = |id: &str| ServerSecurity::Psk {
            identity: id.as_bytes().to_vec(),
            key: Secret(b"k".to_vec()),
        };
        let config = DownloadConfig {
            coaps: vec![
                CoapsCredential {
                    prefix: "coaps://FW.example.com/".into(),
                    security: psk("any"),
                },
                CoapsCredential {
                    prefix: "coaps://fw.example.com/beta/".into(),
                    security: psk("beta"),
                },
            ],
            ..DownloadConfig::default()
        };
        let identity = |uri: &str| match config.coaps_credentials(uri, "fw.example.com") {
            Some(Credentials::Psk(p)) => Some(String::from_utf8_lossy(&p.identity).into_owned()),
            _ => None,
        };
        assert_eq!(
            identity("coaps://fw.example.com/beta/p.pkg").as_deref(),
            Some("beta")
        );
        assert_eq!(
            identity("COAPS://fw.EXAMPLE.com/p.pkg").as_deref(),
            Some("any")
        );
        assert_eq!(identity("coaps://other.example.com/p.pkg"), None);
    }

    #[test]
    fn schemes_and_syntax() {
        for ok in [
            "coap://example.net/fw.bin",
            "COAP://[::1]:5690/a/b?x=1",
            "http://example.net/pkg",
            "https://example.net:8443/p/q.bin?sig=abc",
            "HTTPS://10.0.0.1/",
            // Syntax only: whether credentials exist is decided when fetching.
            "coaps://example.net/fw",
        ] {
            assert_eq!(scheme_supported(ok), Ok(()), "{ok}");
        }
        for (uri, scheme) in [
            ("coap+tcp://example.net/fw", "coap+tcp"),
            ("ftp://example.net/fw", "ftp"),
        ] {
            assert_eq!(
                scheme_supported(uri),
                Err(DownloadError::UnsupportedScheme(scheme.into()))
            );
        }
        for bad in [
            "",
            "example.net/fw",
            "coap://",
            "http://",
            "http://host:0/",
            "http://user:pw@host/",
            "https://host/a b",
            "coap://host/fw#frag",
            "coap://host/%zz",
            "1http://host/",
        ] {
            assert!(
                matches!(scheme_supported(bad), Err(DownloadError::InvalidUri(_))),
                "{bad}: {:?}",
                scheme_supported(bad)
            );
        }
    }

    #[test]
    fn fetch_futures_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let (tx, _rx) = mpsc::channel(1);
        let config = DownloadConfig::default();
        let req = FetchRequest {
            uri: "coap://localhost/x".into(),
            start: 0,
            end: None,
            etag: None,
        };
        assert_send(&fetch(req, &config, tx));
    }

    #[tokio::test]
    async fn an_empty_range_needs_no_server() {
        let (tx, mut rx) = mpsc::channel(1);
        let req = FetchRequest {
            uri: "http://192.0.2.1/never-contacted".into(),
            start: 10,
            end: Some(10),
            etag: Some(b"\"e\"".to_vec()),
        };
        let meta = fetch(req, &DownloadConfig::default(), tx).await.unwrap();
        assert_eq!(meta.etag.as_deref(), Some(&b"\"e\""[..]));
        assert!(rx.recv().await.is_none());
    }
}
