//! `http://` and `https://` pull with a small HTTP/1.1 client of our own over tokio (+
//! tokio-rustls on ring). Chosen over ureq and reqwest by measured size; see the commit message
//! and `tests/bench/download.sh` for the figures, and `wire.rs` for what it speaks:
//! Content-Length, chunked and read-until-close bodies, 1xx skipping, redirects.
//!
//! Resume rules (a resume is any request that starts after byte 0 of what we deliver):
//! - The request carries `Range: bytes=N-` (or `N-M` for a bounded range) and a precondition
//!   from the validator seen so far: `If-Match: "<strong etag>"`, else `If-Unmodified-Since:
//!   <Last-Modified>`. The answer is checked on our side too (some servers ignore If-Match).
//! - No validator at all (no strong ETag, no Last-Modified): nothing ties the bytes already
//!   delivered to what the server would send now, so a resume could splice two packages. The
//!   fetch fails with `EtagChanged` and the caller restarts from zero; that is the only safe
//!   choice.
//! - 206 → continue at the offset in Content-Range (overlap is dropped, a hole is an error).
//! - 200 to a Range request → the server ignored Range, but the precondition passed (or there
//!   was none to pass and the validator still matches): the representation is the same, so the
//!   first N bytes are read and skipped. Costlier than a 206 but correct, and cheaper for the
//!   caller than a restart that re-verifies everything.
//! - 412 → `EtagChanged`. 416 with `Content-Range: bytes */N` at offset N → the range was
//!   already complete (done); at a larger offset → the package shrank: `EtagChanged`.
//! - 404 / 410 → `InvalidUri`; 408, 429 and 5xx → retried with back-off, then `Refused`; other
//!   4xx → `Refused`. Redirects (301, 302, 303, 307, 308) are followed up to 5 times per attempt,
//!   never from https to http; each attempt starts again at the original URI (a redirect target
//!   may be a short-lived signed URL).
//! - Timeouts: `connect_timeout` covers resolving, connecting, the TLS handshake and the
//!   response head; `idle_timeout` every body read; `overall_timeout` the whole fetch (outside).

mod conn;
mod tls;
pub(crate) mod url;
mod wire;

use std::sync::Arc;

use rustls::ClientConfig;

use self::conn::{Conn, ConnError};
pub(crate) use self::url::HttpUrl;
use self::wire::{ContentRange, Framing, Head, Validator, WireError};
use super::retry::Retry;
use super::sink::Delivery;
use super::{DownloadConfig, DownloadError, FetchMeta, FetchRequest};

/// Redirects followed per attempt.
pub(super) const MAX_REDIRECTS: u32 = 5;

/// How an attempt ended, when it did not finish the fetch.
#[derive(Debug)]
enum Failure {
    /// Retry with back-off; give up with this error when the retries are used up.
    Transient(DownloadError),
    /// Give up now.
    Fatal(DownloadError),
}

/// What the fetch knows across attempts.
#[derive(Debug)]
struct Known {
    /// The validator token of the representation (see `FetchMeta::etag`).
    validator: Option<Vec<u8>>,
    /// Its complete length.
    total: Option<u64>,
    /// TLS configuration, built at the first `https` connection.
    tls: Option<Arc<ClientConfig>>,
}

/// Fetches `req.uri` (an `http(s)://` URL) into `delivery`.
pub(super) async fn fetch(
    req: &FetchRequest,
    config: &DownloadConfig,
    delivery: &mut Delivery,
    retry: &mut Retry,
) -> Result<FetchMeta, DownloadError> {
    let origin = HttpUrl::parse(&req.uri)?;
    let mut known = Known {
        validator: req.etag.clone(),
        total: None,
        tls: None,
    };
    loop {
        let before = delivery.next();
        let failure = match attempt(&origin, config, delivery, &mut known).await {
            Ok(()) => {
                return Ok(FetchMeta {
                    etag: known.validator,
                    total: known.total,
                });
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(e)) => e,
        };
        retry
            .after_failure(failure, delivery.next() > before)
            .await?;
    }
}

/// One attempt: requests (following redirects) until the range is delivered or something
/// fails. A server that answers a shorter range than asked gets another request at once.
async fn attempt(
    origin: &HttpUrl,
    config: &DownloadConfig,
    delivery: &mut Delivery,
    known: &mut Known,
) -> Result<(), Failure> {
    loop {
        let offset = delivery.next();
        if offset > 0 && known.validator.is_none() {
            log::warn!("download: the server gave no ETag or Last-Modified; cannot resume safely");
            return Err(Failure::Fatal(DownloadError::EtagChanged));
        }
        let (mut conn, head) = request(origin, config, delivery, known).await?;
        if !check_response(&head, offset, known)? {
            return Ok(());
        }
        let body_offset = if head.status == 206 {
            match head.content_range() {
                Some(ContentRange::Bytes { first, total, .. }) if first <= offset => {
                    known.total = total.or(known.total);
                    first
                }
                other => {
                    return Err(transient(format!(
                        "206 with Content-Range {other:?} for a range from {offset}"
                    )));
                }
            }
        } else {
            0
        };
        let mut framing = head.framing().map_err(wire_failure)?;
        if head.status == 200
            && let Framing::Length(length) = framing
        {
            known.total = Some(length);
        }
        let mut position = body_offset;
        while !delivery.is_done() {
            match conn.body_chunk(&mut framing, config.idle_timeout).await {
                Ok(Some(data)) => {
                    let len = data.len() as u64;
                    delivery
                        .offer(position, data)
                        .await
                        .map_err(Failure::Fatal)?;
                    position += len;
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(transient(format!("body cut off at byte {position}: {e}")));
                }
            }
        }
        // The body is through, or everything wanted is delivered (then the rest is not read:
        // dropping the connection ends it).
        let end_of_representation = match known.total {
            Some(total) => delivery.next() >= total,
            // Without a length, a complete body (length-framed, chunked or closed) is the end.
            None => true,
        };
        if delivery.is_done() || end_of_representation {
            return Ok(());
        }
        if delivery.next() == offset {
            return Err(transient(format!(
                "the server sent nothing from byte {offset} on"
            )));
        }
        log::debug!(
            "download: the server ended the range at {}; asking for the rest",
            delivery.next()
        );
    }
}

/// Opens a connection and sends the GET for the next bytes, following redirects; returns the
/// connection positioned at the body of the final response.
async fn request(
    origin: &HttpUrl,
    config: &DownloadConfig,
    delivery: &Delivery,
    known: &mut Known,
) -> Result<(Conn, Head), Failure> {
    let offset = delivery.next();
    let range = (offset > 0 || delivery.end().is_some()).then_some((offset, delivery.end()));
    let mut url = origin.clone();
    let mut redirects = 0;
    loop {
        if url.tls && known.tls.is_none() {
            let tls = tls::client_config(config.ca_file.as_deref()).map_err(Failure::Fatal)?;
            known.tls = Some(tls);
        }
        let precondition = known
            .validator
            .as_deref()
            .and_then(Validator::parse)
            .map(Validator::precondition);
        let text = wire::request(&url, range, precondition);
        let exchange = async {
            let mut conn = Conn::open(&url, known.tls.as_ref()).await?;
            let head = conn.send(&text).await?;
            Ok::<_, ConnError>((conn, head))
        };
        let (conn, head) = tokio::time::timeout(config.connect_timeout, exchange)
            .await
            .map_err(|_| {
                transient(format!(
                    "{}: no response within {:?}",
                    url.authority(),
                    config.connect_timeout
                ))
            })?
            .map_err(conn_failure)?;
        if !matches!(head.status, 301 | 302 | 303 | 307 | 308) {
            return Ok((conn, head));
        }
        let location = head.get("location").ok_or_else(|| {
            Failure::Fatal(DownloadError::Refused(format!(
                "{} without Location",
                head.status_line()
            )))
        })?;
        redirects += 1;
        if redirects > MAX_REDIRECTS {
            return Err(Failure::Fatal(DownloadError::Refused(format!(
                "more than {MAX_REDIRECTS} redirects"
            ))));
        }
        let next = url.join(location).map_err(Failure::Fatal)?;
        if url.tls && !next.tls {
            return Err(Failure::Fatal(DownloadError::Refused(format!(
                "redirect from https to {location:?} refused"
            ))));
        }
        log::debug!("download: {} → {location}", head.status_line());
        url = next;
    }
}

/// Checks a final response against what we asked for and know. `Ok(true)`: read its body;
/// `Ok(false)`: the range was already complete (416 at the end).
fn check_response(head: &Head, offset: u64, known: &mut Known) -> Result<bool, Failure> {
    let status = head.status;
    match status {
        200 | 206 | 416 => {}
        412 => return Err(Failure::Fatal(DownloadError::EtagChanged)),
        404 | 410 => {
            return Err(Failure::Fatal(DownloadError::InvalidUri(
                head.status_line(),
            )));
        }
        408 | 429 | 500..=599 => {
            return Err(Failure::Transient(DownloadError::Refused(
                head.status_line(),
            )));
        }
        _ => return Err(Failure::Fatal(DownloadError::Refused(head.status_line()))),
    }
    // Our own check, for servers that ignore If-Match / If-Unmodified-Since.
    match &known.validator {
        Some(want) if head.matches(want) == Some(false) => {
            return Err(Failure::Fatal(DownloadError::EtagChanged));
        }
        Some(_) => {}
        // The first response names the representation all later requests must match.
        None => known.validator = head.validator(),
    }
    if status == 416 {
        let total = match head.content_range() {
            Some(ContentRange::Unsatisfied { total }) => Some(total),
            _ => known.total,
        };
        return match total {
            Some(total) if total == offset => {
                known.total = Some(total);
                Ok(false)
            }
            // Shorter than what we already have (or unknown): not the package we were reading.
            _ => Err(Failure::Fatal(DownloadError::EtagChanged)),
        };
    }
    Ok(true)
}

fn transient(why: String) -> Failure {
    Failure::Transient(DownloadError::ConnectionLost(why))
}

fn wire_failure(error: WireError) -> Failure {
    match error {
        WireError::Malformed(_) => transient(error.to_string()),
        WireError::Unsupported(_) => Failure::Fatal(DownloadError::Refused(error.to_string())),
    }
}

fn conn_failure(error: ConnError) -> Failure {
    match error {
        // Retried first (DNS may be down while the link comes up), InvalidUri in the end.
        ConnError::Resolve(e) => Failure::Transient(DownloadError::InvalidUri(e)),
        ConnError::Io(e) => transient(e),
        ConnError::Tls(e) => Failure::Fatal(DownloadError::Tls(e)),
        ConnError::Wire(e) => wire_failure(e),
    }
}
