//! The CoAP message as the core sees it (RFC 7252 §3): type, code, message ID, token, options in
//! number order, payload. Wire encoding lives in `codec.rs`.

use std::fmt;

/// Message type (RFC 7252 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// Confirmable.
    Con,
    /// Non-confirmable.
    Non,
    /// Acknowledgement.
    Ack,
    /// Reset.
    Rst,
}

/// A request method or response code, `class.detail` packed in one byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u8);

impl Code {
    /// 0.00: empty message.
    pub const EMPTY: Self = Self(0x00);
    /// 0.01 GET.
    pub const GET: Self = Self(0x01);
    /// 0.02 POST.
    pub const POST: Self = Self(0x02);
    /// 0.03 PUT.
    pub const PUT: Self = Self(0x03);
    /// 0.04 DELETE.
    pub const DELETE: Self = Self(0x04);
    /// 0.05 FETCH.
    pub const FETCH: Self = Self(0x05);
    /// 0.06 PATCH.
    pub const PATCH: Self = Self(0x06);
    /// 0.07 iPATCH.
    pub const IPATCH: Self = Self(0x07);
    /// 2.01 Created.
    pub const CREATED: Self = Self::new(2, 1);
    /// 2.02 Deleted.
    pub const DELETED: Self = Self::new(2, 2);
    /// 2.03 Valid.
    pub const VALID: Self = Self::new(2, 3);
    /// 2.04 Changed.
    pub const CHANGED: Self = Self::new(2, 4);
    /// 2.05 Content.
    pub const CONTENT: Self = Self::new(2, 5);
    /// 2.31 Continue.
    pub const CONTINUE: Self = Self::new(2, 31);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Self = Self::new(4, 0);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Self = Self::new(4, 1);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Self = Self::new(4, 2);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Self = Self::new(4, 3);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Self = Self::new(4, 4);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Self = Self::new(4, 5);
    /// 4.06 Not Acceptable.
    pub const NOT_ACCEPTABLE: Self = Self::new(4, 6);
    /// 4.08 Request Entity Incomplete.
    pub const REQUEST_ENTITY_INCOMPLETE: Self = Self::new(4, 8);
    /// 4.09 Conflict.
    pub const CONFLICT: Self = Self::new(4, 9);
    /// 4.12 Precondition Failed.
    pub const PRECONDITION_FAILED: Self = Self::new(4, 12);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Self = Self::new(4, 13);
    /// 4.15 Unsupported Content-Format.
    pub const UNSUPPORTED_CONTENT_FORMAT: Self = Self::new(4, 15);
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Self = Self::new(5, 0);
    /// 5.01 Not Implemented.
    pub const NOT_IMPLEMENTED: Self = Self::new(5, 1);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Self = Self::new(5, 3);
    /// 5.05 Proxying Not Supported.
    pub const PROXYING_NOT_SUPPORTED: Self = Self::new(5, 5);

    /// Builds `class.detail`.
    pub const fn new(class: u8, detail: u8) -> Self {
        Self((class << 5) | (detail & 0x1f))
    }

    /// The class (0 request, 2 success, 4 client error, 5 server error).
    pub const fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail.
    pub const fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    /// 0.01..=0.31.
    pub const fn is_request(self) -> bool {
        self.class() == 0 && self.0 != 0
    }

    /// Classes 2 to 5.
    pub const fn is_response(self) -> bool {
        self.class() >= 2 && self.class() <= 5
    }

    /// 2.xx.
    pub const fn is_success(self) -> bool {
        self.class() == 2
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({self})")
    }
}

/// Option numbers used by lwm2md (RFC 7252 §5.10, RFC 7641, RFC 7959, RFC 9175).
pub mod opt {
    /// If-Match.
    pub const IF_MATCH: u16 = 1;
    /// Uri-Host.
    pub const URI_HOST: u16 = 3;
    /// ETag.
    pub const ETAG: u16 = 4;
    /// If-None-Match.
    pub const IF_NONE_MATCH: u16 = 5;
    /// Observe.
    pub const OBSERVE: u16 = 6;
    /// Uri-Port.
    pub const URI_PORT: u16 = 7;
    /// Location-Path.
    pub const LOCATION_PATH: u16 = 8;
    /// Uri-Path.
    pub const URI_PATH: u16 = 11;
    /// Content-Format.
    pub const CONTENT_FORMAT: u16 = 12;
    /// Max-Age.
    pub const MAX_AGE: u16 = 14;
    /// Uri-Query.
    pub const URI_QUERY: u16 = 15;
    /// Accept.
    pub const ACCEPT: u16 = 17;
    /// Location-Query.
    pub const LOCATION_QUERY: u16 = 20;
    /// Block2.
    pub const BLOCK2: u16 = 23;
    /// Block1.
    pub const BLOCK1: u16 = 27;
    /// Size2.
    pub const SIZE2: u16 = 28;
    /// Proxy-Uri.
    pub const PROXY_URI: u16 = 35;
    /// Proxy-Scheme.
    pub const PROXY_SCHEME: u16 = 39;
    /// Size1.
    pub const SIZE1: u16 = 60;
    /// Echo.
    pub const ECHO: u16 = 252;
    /// No-Response.
    pub const NO_RESPONSE: u16 = 258;
    /// Request-Tag.
    pub const REQUEST_TAG: u16 = 292;

    /// True for options we understand; an unknown critical (odd) option in a request gets 4.02.
    pub fn is_known(number: u16) -> bool {
        matches!(
            number,
            IF_MATCH
                | URI_HOST
                | ETAG
                | IF_NONE_MATCH
                | OBSERVE
                | URI_PORT
                | LOCATION_PATH
                | URI_PATH
                | CONTENT_FORMAT
                | MAX_AGE
                | URI_QUERY
                | ACCEPT
                | LOCATION_QUERY
                | BLOCK2
                | BLOCK1
                | SIZE2
                | PROXY_URI
                | PROXY_SCHEME
                | SIZE1
                | ECHO
                | NO_RESPONSE
                | REQUEST_TAG
        )
    }

    /// Critical options have odd numbers (RFC 7252 §5.4.6).
    pub const fn is_critical(number: u16) -> bool {
        number & 1 == 1
    }
}

/// A CoAP message. Options are kept sorted by number; repeated options keep their order.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Type.
    pub mtype: MsgType,
    /// Method or response code.
    pub code: Code,
    /// Message ID.
    pub mid: u16,
    /// Token (0 to 8 bytes).
    pub token: Vec<u8>,
    /// Options as (number, raw value), sorted by number.
    pub options: Vec<(u16, Vec<u8>)>,
    /// Payload (empty when absent).
    pub payload: Vec<u8>,
}

impl Message {
    /// A message with no token, options or payload.
    pub fn new(mtype: MsgType, code: Code) -> Self {
        Self {
            mtype,
            code,
            mid: 0,
            token: Vec::new(),
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// A confirmable request.
    pub fn request(code: Code) -> Self {
        Self::new(MsgType::Con, code)
    }

    /// A response body (type and MID are filled in by the message layer).
    pub fn response(code: Code) -> Self {
        Self::new(MsgType::Ack, code)
    }

    /// All values of option `number`, in order.
    pub fn option_values(&self, number: u16) -> impl Iterator<Item = &[u8]> {
        self.options
            .iter()
            .filter(move |(n, _)| *n == number)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of option `number`.
    pub fn option(&self, number: u16) -> Option<&[u8]> {
        self.option_values(number).next()
    }

    /// True if option `number` is present.
    pub fn has_option(&self, number: u16) -> bool {
        self.options.iter().any(|(n, _)| *n == number)
    }

    /// Appends a value for option `number`, keeping options sorted.
    pub fn add_option(&mut self, number: u16, value: Vec<u8>) {
        let at = self.options.partition_point(|(n, _)| *n <= number);
        self.options.insert(at, (number, value));
    }

    /// Replaces every value of option `number` with one value.
    pub fn set_option(&mut self, number: u16, value: Vec<u8>) {
        self.remove_option(number);
        self.add_option(number, value);
    }

    /// Removes every value of option `number`.
    pub fn remove_option(&mut self, number: u16) {
        self.options.retain(|(n, _)| *n != number);
    }

    /// Appends a uint option in its shortest form (RFC 7252 §3.2: no leading zero bytes).
    pub fn add_uint_option(&mut self, number: u16, value: u64) {
        self.add_option(number, encode_uint(value));
    }

    /// Sets a uint option in its shortest form.
    pub fn set_uint_option(&mut self, number: u16, value: u64) {
        self.set_option(number, encode_uint(value));
    }

    /// Reads a uint option; `Err` if it is longer than `max_len` bytes.
    pub fn uint_option(&self, number: u16, max_len: usize) -> Result<Option<u64>, BadOption> {
        match self.option(number) {
            None => Ok(None),
            Some(v) if v.len() > max_len => Err(BadOption(number)),
            Some(v) => Ok(Some(decode_uint(v))),
        }
    }

    /// Uri-Path segments as strings; `Err` for a segment that is not UTF-8.
    pub fn uri_path(&self) -> Result<Vec<&str>, BadOption> {
        self.option_values(opt::URI_PATH)
            .map(|v| std::str::from_utf8(v).map_err(|_| BadOption(opt::URI_PATH)))
            .collect()
    }

    /// Uri-Query items as strings; `Err` for an item that is not UTF-8.
    pub fn uri_query(&self) -> Result<Vec<&str>, BadOption> {
        self.option_values(opt::URI_QUERY)
            .map(|v| std::str::from_utf8(v).map_err(|_| BadOption(opt::URI_QUERY)))
            .collect()
    }

    /// Adds one Uri-Path option per `/`-separated segment of `path` (leading slash ignored).
    pub fn set_uri_path(&mut self, path: &str) {
        self.remove_option(opt::URI_PATH);
        for seg in path
            .trim_start_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
        {
            self.add_option(opt::URI_PATH, seg.as_bytes().to_vec());
        }
    }

    /// Content-Format (at most 2 bytes).
    pub fn content_format(&self) -> Result<Option<u16>, BadOption> {
        Ok(self.uint_option(opt::CONTENT_FORMAT, 2)?.map(|v| v as u16))
    }

    /// Accept (at most 2 bytes).
    pub fn accept(&self) -> Result<Option<u16>, BadOption> {
        Ok(self.uint_option(opt::ACCEPT, 2)?.map(|v| v as u16))
    }

    /// Observe (at most 3 bytes, RFC 7641 §2).
    pub fn observe(&self) -> Result<Option<u32>, BadOption> {
        Ok(self.uint_option(opt::OBSERVE, 3)?.map(|v| v as u32))
    }

    /// True for an empty message (code 0.00).
    pub fn is_empty(&self) -> bool {
        self.code == Code::EMPTY
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {} mid={} token=", self.mtype, self.code, self.mid)?;
        for b in &self.token {
            write!(f, "{b:02x}")?;
        }
        for (n, v) in &self.options {
            match *n {
                opt::URI_PATH | opt::URI_QUERY | opt::LOCATION_PATH => {
                    write!(f, " {n}={:?}", String::from_utf8_lossy(v))?
                }
                _ => write!(f, " {n}={}", decode_uint(v))?,
            }
        }
        write!(f, " payload={}B", self.payload.len())
    }
}

/// An option value that is malformed for its number (too long, not UTF-8...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed value for option {0}")]
pub struct BadOption(pub u16);

/// Encodes a uint option value without leading zero bytes (0 is the empty string).
pub fn encode_uint(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[skip..].to_vec()
}

/// Decodes a uint option value of up to 8 bytes (longer values keep the low 8 bytes).
pub fn decode_uint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_print_as_class_detail() {
        assert_eq!(Code::CONTINUE.to_string(), "2.31");
        assert_eq!(Code::REQUEST_ENTITY_TOO_LARGE.to_string(), "4.13");
        assert_eq!(Code::CONTINUE.0, 0x5f);
        assert!(Code::GET.is_request() && !Code::EMPTY.is_request());
        assert!(Code::NOT_FOUND.is_response() && !Code::NOT_FOUND.is_success());
    }

    #[test]
    fn options_stay_sorted_and_ordered() {
        let mut m = Message::request(Code::GET);
        m.add_option(opt::URI_QUERY, b"b".to_vec());
        m.set_uri_path("/rd/abc");
        m.add_uint_option(opt::ACCEPT, 112);
        m.add_option(opt::URI_QUERY, b"c".to_vec());
        let numbers: Vec<u16> = m.options.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![11, 11, 15, 15, 17]);
        assert_eq!(m.uri_path(), Ok(vec!["rd", "abc"]));
        assert_eq!(m.uri_query(), Ok(vec!["b", "c"]));
        assert_eq!(m.accept(), Ok(Some(112)));
    }

    #[test]
    fn uint_options_are_minimal() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(11542), vec![0x2d, 0x16]);
        assert_eq!(decode_uint(&[0x2d, 0x16]), 11542);
        let mut m = Message::request(Code::GET);
        m.set_option(opt::OBSERVE, vec![1, 2, 3, 4]);
        assert_eq!(m.observe(), Err(BadOption(opt::OBSERVE)));
    }
}
