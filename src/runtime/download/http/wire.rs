//! HTTP/1.1 messages on the wire (RFC 9112): the GET we send, the response head (parsed by
//! `httparse`), body framing (Content-Length, chunked, until close), `Content-Range`, and the
//! validators (ETag / Last-Modified) that make a resume safe.

use super::url::HttpUrl;

/// Largest response head we accept (status line + headers).
pub(super) const MAX_HEAD: usize = 64 * 1024;

/// Most headers in one response head.
const MAX_HEADERS: usize = 100;

/// Longest chunk-size line (with extensions) and most trailer bytes of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

/// How the validator token marks a Last-Modified date (entity tags start with `"` or `W/`).
pub(super) const LAST_MODIFIED_PREFIX: &str = "Last-Modified: ";

/// A response that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum WireError {
    /// Broken framing or syntax: the connection is unusable (retry).
    #[error("malformed response: {0}")]
    Malformed(String),
    /// Well-formed, but something we cannot decode (a content or transfer coding).
    #[error("unsupported response: {0}")]
    Unsupported(String),
}

fn malformed(why: impl Into<String>) -> WireError {
    WireError::Malformed(why.into())
}

/// The GET for `url`: `range` asks for bytes `start..end` (`end` exclusive, `None`: to the end),
/// `precondition` is a header (name, value) that makes the server refuse a different
/// representation. One request per connection (`Connection: close`): a download is one long
/// response, and a fresh connection per attempt leaves no half-read state behind.
pub(super) fn request(
    url: &HttpUrl,
    range: Option<(u64, Option<u64>)>,
    precondition: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut text = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lwm2md/{}\r\nAccept: */*\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n",
        url.target,
        url.authority(),
        env!("CARGO_PKG_VERSION")
    );
    if let Some((start, end)) = range {
        match end {
            Some(end) => text.push_str(&format!("Range: bytes={start}-{}\r\n", end - 1)),
            None => text.push_str(&format!("Range: bytes={start}-\r\n")),
        }
    }
    if let Some((name, value)) = precondition {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    /// Status code.
    pub(super) status: u16,
    /// Reason phrase (for messages only).
    pub(super) reason: String,
    /// Headers, names in lower case, in order.
    headers: Vec<(String, String)>,
}

impl Head {
    /// Parses a head from the start of `buf`: `Ok(None)` while it is incomplete, else the head
    /// and its length (the body starts right after).
    pub(super) fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, WireError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(malformed(format!("head: {e}"))),
        };
        let status = response.code.ok_or_else(|| malformed("no status"))?;
        let headers = response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        Ok(Some((
            Self {
                status,
                reason: response.reason.unwrap_or_default().to_string(),
                headers,
            },
            len,
        )))
    }

    /// The first value of header `name` (lower case).
    pub(super) fn get(&self, name: &'static str) -> Option<&str> {
        self.all(name).next()
    }

    /// Every value of header `name` (lower case).
    fn all(&self, name: &'static str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `status reason`, for messages.
    pub(super) fn status_line(&self) -> String {
        format!("HTTP {} {}", self.status, self.reason)
    }

    /// How the body is delimited (RFC 9112 §6.3).
    pub(super) fn framing(&self) -> Result<Framing, WireError> {
        if (100..200).contains(&self.status) || self.status == 204 || self.status == 304 {
            return Ok(Framing::Empty);
        }
        // We asked for identity: decoding gzip & co. is the server's job, and compressed bytes
        // must never reach the verifier as if they were the package.
        if let Some(coding) = self
            .all("content-encoding")
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .find(|c| !c.is_empty() && c != "identity")
        {
            return Err(WireError::Unsupported(format!("content coding {coding}")));
        }
        let codings: Vec<String> = self
            .all("transfer-encoding")
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        if !codings.is_empty() {
            // Transfer-Encoding overrides Content-Length; only plain "chunked" is decodable.
            return match codings.as_slice() {
                [only] if only == "chunked" => Ok(Framing::Chunked(Chunked::default())),
                _ => Err(WireError::Unsupported(format!(
                    "transfer coding {}",
                    codings.join(", ")
                ))),
            };
        }
        let mut lengths = self.all("content-length").flat_map(|v| v.split(','));
        let Some(first) = lengths.next() else {
            return Ok(Framing::UntilClose);
        };
        let length = parse_decimal(first.trim())
            .ok_or_else(|| malformed(format!("Content-Length {first:?}")))?;
        // Repeated values must agree (RFC 9112 §6.3 item 5), else the framing is ambiguous.
        if lengths.any(|other| parse_decimal(other.trim()) != Some(length)) {
            return Err(malformed("conflicting Content-Length values"));
        }
        Ok(Framing::Length(length))
    }

    /// The `Content-Range` of a 206 / 416.
    pub(super) fn content_range(&self) -> Option<ContentRange> {
        ContentRange::parse(self.get("content-range")?)
    }

    /// The strong entity tag, quotes included (weak tags cannot validate a range).
    fn strong_etag(&self) -> Option<&str> {
        self.get("etag")
            .filter(|e| e.len() >= 2 && e.starts_with('"') && e.ends_with('"'))
    }

    /// The validator token of this response (see `FetchMeta::etag`): the strong ETag, else the
    /// Last-Modified date.
    pub(super) fn validator(&self) -> Option<Vec<u8>> {
        if let Some(etag) = self.strong_etag() {
            return Some(etag.as_bytes().to_vec());
        }
        self.get("last-modified")
            .filter(|d| !d.is_empty())
            .map(|d| format!("{LAST_MODIFIED_PREFIX}{d}").into_bytes())
    }

    /// Whether this response is the representation `token` names: `None` when the response
    /// carries no validator of the same kind (nothing to compare).
    pub(super) fn matches(&self, token: &[u8]) -> Option<bool> {
        match Validator::parse(token) {
            Some(Validator::ETag(want)) => self.strong_etag().map(|got| got == want),
            Some(Validator::LastModified(want)) => self.get("last-modified").map(|got| got == want),
            // A token we cannot have produced (e.g. a CoAP ETag after the URI changed scheme).
            None => self.validator().map(|got| got == token),
        }
    }
}

/// A validator token, as the header to send with a Range request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Validator<'a> {
    /// A strong entity tag, quotes included: `If-Match`.
    ETag(&'a str),
    /// A Last-Modified date: `If-Unmodified-Since`.
    LastModified(&'a str),
}

impl<'a> Validator<'a> {
    /// Reads a token; `None` for one that is neither (or would not be a safe header value).
    pub(super) fn parse(token: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(token).ok()?;
        if !text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return None;
        }
        if let Some(date) = text.strip_prefix(LAST_MODIFIED_PREFIX) {
            return (!date.is_empty()).then_some(Self::LastModified(date));
        }
        (text.len() >= 2 && text.starts_with('"') && text.ends_with('"'))
            .then_some(Self::ETag(text))
    }

    /// The precondition header for a request that must only succeed for this representation.
    pub(super) fn precondition(self) -> (&'static str, &'a str) {
        match self {
            Self::ETag(tag) => ("If-Match", tag),
            Self::LastModified(date) => ("If-Unmodified-Since", date),
        }
    }
}

/// `Content-Range` (RFC 9110 §14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ContentRange {
    /// `bytes first-last/total` (total `*` = unknown).
    Bytes {
        /// First byte.
        first: u64,
        /// Last byte (inclusive).
        last: u64,
        /// Complete length.
        total: Option<u64>,
    },
    /// `bytes */total` (with 416).
    Unsatisfied {
        /// Complete length.
        total: u64,
    },
}

impl ContentRange {
    fn parse(value: &str) -> Option<Self> {
        let spec = value.trim().strip_prefix("bytes")?.trim_start();
        let (range, total) = spec.split_once('/')?;
        let total = match total.trim() {
            "*" => None,
            t => Some(parse_decimal(t)?),
        };
        if range.trim() == "*" {
            return total.map(|total| Self::Unsatisfied { total });
        }
        let (first, last) = range.trim().split_once('-')?;
        let (first, last) = (parse_decimal(first)?, parse_decimal(last)?);
        if last < first || total.is_some_and(|t| last >= t) {
            return None;
        }
        Some(Self::Bytes { first, last, total })
    }
}

/// Digits only (no sign, no spaces), no overflow.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// How a response body ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunked),
    /// Until the server closes (HTTP/1.0 style): a cut connection looks like the end, so such
    /// a body is only as trustworthy as the package signature (over TLS the missing
    /// close_notify gives it away).
    UntilClose,
}

impl Framing {
    /// Decodes `input` (bytes as read): appends body bytes to `out`, returns how many input
    /// bytes were used (less than all only once the body is complete).
    pub(super) fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        match self {
            Self::Empty => Ok(0),
            Self::Length(left) => {
                let take = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                out.extend_from_slice(input.get(..take).unwrap_or_default());
                *left -= take as u64;
                Ok(take)
            }
            Self::Chunked(chunked) => chunked.decode(input, out),
            Self::UntilClose => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
        }
    }

    /// How many more body bytes may be read with no framing bytes among them: `Some` for a
    /// length-framed body (what is left) and an until-close one (unbounded), whose raw bytes
    /// are the body; `None` for chunked (and empty) bodies, which go through [`decode`](Self::decode).
    pub(super) fn unframed_room(&self) -> Option<u64> {
        match self {
            Self::Length(left) if *left > 0 => Some(*left),
            Self::UntilClose => Some(u64::MAX),
            Self::Empty | Self::Length(_) | Self::Chunked(_) => None,
        }
    }

    /// Accounts for `n` body bytes read directly (see [`unframed_room`](Self::unframed_room)).
    pub(super) fn consumed_unframed(&mut self, n: u64) {
        if let Self::Length(left) = self {
            *left = left.saturating_sub(n);
        }
    }

    /// True when the body is complete (nothing more to read).
    pub(super) fn is_complete(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Length(left) => *left == 0,
            Self::Chunked(chunked) => chunked.state == ChunkState::Done,
            Self::UntilClose => false,
        }
    }
}

/// A streaming decoder of the chunked transfer coding (RFC 9112 §7.1): any split of the input
/// works, chunk extensions and trailers are skipped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Chunked {
    state: ChunkState,
    /// The chunk-size line or trailer line being collected.
    line: Vec<u8>,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// Reading `size [; ext] CRLF`.
    #[default]
    Size,
    /// This many data bytes of the current chunk left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines up to the empty line.
    Trailers,
    /// The last chunk and the trailers are through.
    Done,
}

impl Chunked {
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut used = 0;
        while used < input.len() {
            let rest = input.get(used..).unwrap_or_default();
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(rest.get(..take).unwrap_or_default());
                    used += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailers => {
                    let Some(line) = self.take_line(rest, &mut used)? else {
                        break;
                    };
                    self.on_line(&line)?;
                }
            }
        }
        Ok(used)
    }

    /// Collects a line from `rest`; returns it (without CRLF) once complete.
    fn take_line(&mut self, rest: &[u8], used: &mut usize) -> Result<Option<Vec<u8>>, WireError> {
        let (part, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (rest.get(..=at).unwrap_or_default(), true),
            None => (rest, false),
        };
        *used += part.len();
        self.line.extend_from_slice(part);
        let limit = if self.state == ChunkState::Trailers {
            MAX_TRAILERS
        } else {
            MAX_CHUNK_LINE
        };
        if self.line.len() > limit {
            return Err(malformed("chunk line too long"));
        }
        if !complete {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.line);
        line.pop(); // '\n'
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(Some(line))
    }

    fn on_line(&mut self, line: &[u8]) -> Result<(), WireError> {
        match self.state {
            ChunkState::Size => {
                // `size [ BWS ; ext ]`: hex digits up to the first ';', space or tab.
                let end = line
                    .iter()
                    .position(|b| matches!(b, b';' | b' ' | b'\t'))
                    .unwrap_or(line.len());
                let digits = std::str::from_utf8(line.get(..end).unwrap_or_default())
                    .ok()
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| malformed("bad chunk size"))?;
                let size = u64::from_str_radix(digits, 16)
                    .map_err(|_| malformed("chunk size overflow"))?;
                self.state = if size == 0 {
                    ChunkState::Trailers
                } else {
                    ChunkState::Data(size)
                };
            }
            ChunkState::DataEnd => {
                if !line.is_empty() {
                    return Err(malformed("chunk longer than its size"));
                }
                self.state = ChunkState::Size;
            }
            ChunkState::Trailers => {
                self.trailer_bytes += line.len();
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(malformed("trailers too long"));
                }
                if line.is_empty() {
                    self.state = ChunkState::Done;
                }
            }
            ChunkState::Data(_) | ChunkState::Done => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let (head, len) = Head::parse(text.as_bytes()).unwrap().unwrap();
        assert_eq!(len, text.len());
        head
    }

    #[test]
    fn request_text() {
        let url = HttpUrl::parse("http://h:8080/a?b").unwrap();
        let text = String::from_utf8(request(&url, None, None)).unwrap();
        assert!(
            text.starts_with("GET /a?b HTTP/1.1\r\nHost: h:8080\r\n"),
            "{text}"
        );
        assert!(text.contains("Accept-Encoding: identity\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        assert!(!text.contains("Range"));
        let text = String::from_utf8(request(
            &url,
            Some((100, None)),
            Some(("If-Match", "\"x\"")),
        ))
        .unwrap();
        assert!(text.contains("\r\nRange: bytes=100-\r\nIf-Match: \"x\"\r\n\r\n"));
        let text = String::from_utf8(request(&url, Some((0, Some(10))), None)).unwrap();
        assert!(text.contains("\r\nRange: bytes=0-9\r\n"));
    }

    #[test]
    fn head_parsing() {
        assert_eq!(Head::parse(b"HTTP/1.1 200 OK\r\nA: b\r\n"), Ok(None));
        assert!(Head::parse(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        let h = head(
            "HTTP/1.1 206 Partial Content\r\nETag: \"abc\"\r\nContent-Range: bytes 10-19/100\r\nContent-Length:  10 \r\n\r\n",
        );
        assert_eq!(h.status, 206);
        assert_eq!(h.status_line(), "HTTP 206 Partial Content");
        assert_eq!(h.get("etag"), Some("\"abc\""));
        assert_eq!(h.framing(), Ok(Framing::Length(10)));
        assert_eq!(
            h.content_range(),
            Some(ContentRange::Bytes {
                first: 10,
                last: 19,
                total: Some(100)
            })
        );
    }

    #[test]
    fn framing_rules() {
        let f = |headers: &str| head(&format!("HTTP/1.1 200 OK\r\n{headers}\r\n")).framing();
        assert_eq!(f(""), Ok(Framing::UntilClose));
        assert_eq!(
            f("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
            Ok(Framing::Chunked(Chunked::default()))
        );
        assert_eq!(
            f("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Ok(Framing::Length(5))
        );
        assert!(matches!(
            f("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            f("Content-Length: -1\r\n"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            f("Transfer-Encoding: gzip, chunked\r\n"),
            Err(WireError::Unsupported(_))
        ));
        assert!(matches!(
            f("Content-Encoding: gzip\r\nContent-Length: 5\r\n"),
            Err(WireError::Unsupported(_))
        ));
        assert_eq!(
            f("Content-Encoding: identity\r\nContent-Length: 5\r\n"),
            Ok(Framing::Length(5))
        );
        let h = head("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing(), Ok(Framing::Empty));
    }

    #[test]
    fn content_ranges() {
        let p = ContentRange::parse;
        assert_eq!(
            p("bytes 0-0/1"),
            Some(ContentRange::Bytes {
                first: 0,
                last: 0,
                total: Some(1)
            })
        );
        assert_eq!(
            p("bytes 5-9/*"),
            Some(ContentRange::Bytes {
                first: 5,
                last: 9,
                total: None
            })
        );
        assert_eq!(
            p("bytes */42"),
            Some(ContentRange::Unsatisfied { total: 42 })
        );
        for bad in [
            "bytes 9-5/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes */*",
            "bytes 1-2",
            "bytes -1-2/5",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn validators() {
        let h = head(
            "HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nLast-Modified: Tue, 15 Nov 1994 12:45:26 GMT\r\n\r\n",
        );
        assert_eq!(h.validator(), Some(b"\"v1\"".to_vec()));
        assert_eq!(h.matches(b"\"v1\""), Some(true));
        assert_eq!(h.matches(b"\"v2\""), Some(false));
        assert_eq!(
            h.matches(b"Last-Modified: Tue, 15 Nov 1994 12:45:26 GMT"),
            Some(true)
        );
        // A weak tag is no validator: Last-Modified is used instead.
        let h = head("HTTP/1.1 200 OK\r\nETag: W/\"v1\"\r\nLast-Modified: D\r\n\r\n");
        assert_eq!(h.validator(), Some(b"Last-Modified: D".to_vec()));
        assert_eq!(h.matches(b"\"v1\""), None);
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.validator(), None);
        assert_eq!(h.matches(b"\"v1\""), None);
        assert_eq!(
            Validator::parse(b"\"v1\"").map(Validator::precondition),
            Some(("If-Match", "\"v1\""))
        );
        assert_eq!(
            Validator::parse(b"Last-Modified: D").map(Validator::precondition),
            Some(("If-Unmodified-Since", "D"))
        );
        // Not header-safe, or neither kind.
        for bad in [
            &b"\"a\r\nX: y\""[..],
            b"W/\"x\"",
            b"\x02",
            b"plain",
            b"Last-Modified: ",
        ] {
            assert_eq!(Validator::parse(bad), None, "{bad:?}");
        }
        // A foreign token never matches a response that has a validator.
        let h = head("HTTP/1.1 200 OK\r\nETag: \"v1\"\r\n\r\n");
        assert_eq!(h.matches(b"\x01\x02"), Some(false));
    }

    /// Feeds `wire` to a chunked decoder in pieces of `step` bytes.
    fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), WireError> {
        let mut framing = Framing::Chunked(Chunked::default());
        let mut out = Vec::new();
        let mut used = 0;
        for piece in wire.chunks(step) {
            let n = framing.decode(piece, &mut out)?;
            used += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((out, used, framing.is_complete()))
    }

    #[test]
    fn chunked_in_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nEXTRA";
        for step in [1, 2, 3, 7, 1000] {
            let (out, used, done) = dechunk(wire, step).unwrap();
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
            assert!(done);
            assert_eq!(
                used,
                wire.len() - 5,
                "step {step}: stops before the extra bytes"
            );
        }
        // Bare LF line ends are accepted.
        let (out, _, done) = dechunk(b"2\nab\n0\n\n", 1).unwrap();
        assert_eq!((out.as_slice(), done), (&b"ab"[..], true));
        // Incomplete: not done.
        let (_, _, done) = dechunk(b"5\r\nhel", 100).unwrap();
        assert!(!done);
    }

    #[test]
    fn chunked_errors() {
        for bad in [
            &b"g\r\n"[..],
            b"\r\n",
            b"3\r\nabcd\r\n",
            b"ffffffffffffffffff\r\n",
            b"-1\r\n",
        ] {
            assert!(dechunk(bad, 1).is_err(), "{bad:?}");
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(dechunk(&long, 100).is_err());
    }

    #[test]
    fn length_framing_stops_at_the_length() {
        let mut framing = Framing::Length(5);
        let mut out = Vec::new();
        assert_eq!(framing.decode(b"abc", &mut out), Ok(3));
        assert!(!framing.is_complete());
        assert_eq!(framing.decode(b"defgh", &mut out), Ok(2));
        assert!(framing.is_complete());
        assert_eq!(out, b"abcde");
    }
}
