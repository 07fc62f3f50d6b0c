//! Pull downloads of firmware packages: `coap://` (Block2 on a socket of its own, ETag-checked)
//! and `http://` / `https://` (Range + If-Match). A fetch streams bytes to the caller's channel as
//! they arrive (bounded: the verifier's pace is the download's pace), resumes by itself after a
//! lost connection with back-off, and fails with the error the Update Result is derived from.
//!
//! (Implementation: another engineer; this file fixes the API the rest of the code uses.)

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::coap::endpoint::CoapConfig;

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
    /// one means the package changed and the transfer must restart from zero.
    pub etag: Option<Vec<u8>>,
}

/// What the server said about the representation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchMeta {
    /// Its entity tag, when the server sends one.
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
    /// Attempts after a lost connection before giving up.
    pub retries: u32,
    /// First back-off between attempts (doubles, with jitter).
    pub retry_initial: Duration,
    /// Back-off cap.
    pub retry_max: Duration,
    /// CoAP transmission parameters for `coap://`.
    pub coap: CoapConfig,
    /// Block size exponent asked for in Block2 (6 = 1024 bytes).
    pub block_szx: u8,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The URI is not usable (syntax, unresolvable host, 4.04 / 404 for the resource).
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

/// Streams bytes `[start, end)` of `req.uri` into `sink`, in order, resuming by itself after lost
/// connections. Returns when the range was delivered completely.
pub async fn fetch(
    _req: FetchRequest,
    _config: &DownloadConfig,
    _sink: mpsc::Sender<Vec<u8>>,
) -> Result<FetchMeta, DownloadError> {
    todo!("download::fetch")
}
