//! The LwM2M layer's error: every variant maps to the CoAP response code a server receives.

use crate::core::coap::message::Code;

/// An error answering a LwM2M operation. `code()` is what goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 4.00: malformed payload, path or arguments; an inconsistent attribute set.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 4.01: access denied (e.g. /0 from a DM server).
    #[error("unauthorized")]
    Unauthorized,
    /// 4.02: an unrecognised critical option.
    #[error("bad option {0}")]
    BadOption(u16),
    /// 4.04: no such object, instance or resource.
    #[error("not found")]
    NotFound,
    /// 4.05: the operation is not allowed on the target.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// 4.06: the requested Accept format cannot represent the target.
    #[error("not acceptable: content format {0}")]
    NotAcceptable(u16),
    /// 4.08: a block arrived out of order or a transfer is incomplete.
    #[error("request entity incomplete")]
    Incomplete,
    /// 4.13: the body is larger than we accept; `max` becomes Size1.
    #[error("request entity too large")]
    TooLarge {
        /// The largest body accepted, when known.
        max: Option<u64>,
    },
    /// 4.15: the request's Content-Format is not supported for this operation.
    #[error("unsupported content format {0}")]
    UnsupportedContentFormat(u16),
    /// 5.00: a local failure that is not the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// 5.03: temporarily unable (e.g. busy with another transfer).
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// The CoAP response code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::BadRequest(_) => Code::BAD_REQUEST,
            Self::Unauthorized => Code::UNAUTHORIZED,
            Self::BadOption(_) => Code::BAD_OPTION,
            Self::NotFound => Code::NOT_FOUND,
            Self::MethodNotAllowed(_) => Code::METHOD_NOT_ALLOWED,
            Self::NotAcceptable(_) => Code::NOT_ACCEPTABLE,
            Self::Incomplete => Code::REQUEST_ENTITY_INCOMPLETE,
            Self::TooLarge { .. } => Code::REQUEST_ENTITY_TOO_LARGE,
            Self::UnsupportedContentFormat(_) => Code::UNSUPPORTED_CONTENT_FORMAT,
            Self::Internal(_) => Code::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => Code::SERVICE_UNAVAILABLE,
        }
    }

    /// Shorthand for a 4.05 with a reason.
    pub fn not_allowed(reason: impl Into<String>) -> Self {
        Self::MethodNotAllowed(reason.into())
    }

    /// Shorthand for a 4.00 with a reason.
    pub fn bad(reason: impl Into<String>) -> Self {
        Self::BadRequest(reason.into())
    }
}

impl From<super::path::PathError> for Error {
    fn from(e: super::path::PathError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<crate::core::coap::message::BadOption> for Error {
    fn from(e: crate::core::coap::message::BadOption) -> Self {
        Self::BadOption(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_code() {
        assert_eq!(Error::Unauthorized.code().to_string(), "4.01");
        assert_eq!(Error::NotAcceptable(11543).code().to_string(), "4.06");
        assert_eq!(Error::TooLarge { max: Some(10) }.code().to_string(), "4.13");
        assert_eq!(
            Error::UnsupportedContentFormat(1).code().to_string(),
            "4.15"
        );
        assert_eq!(Error::Incomplete.code().to_string(), "4.08");
        assert_eq!(Error::not_allowed("x").code().to_string(), "4.05");
    }
}
