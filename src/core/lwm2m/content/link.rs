//! application/link-format (CF 40, RFC 6690): the Register/Update object list and Discover.

use super::ContentError;

/// A link attribute value: a bare token (`ver=1.2`, `pmin=10`) or a quoted string (`ct="60 110"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// Written without quotes; must be a ptoken (RFC 6690 §2).
    Token(String),
    /// Written in double quotes, with `"` and `\` escaped.
    Quoted(String),
}

/// One link: `<target>;attr;attr=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The URI reference inside `<>`.
    pub target: String,
    /// Attributes in order; `None` is an attribute without a value.
    pub attrs: Vec<(String, Option<AttrValue>)>,
}

/// Writes links separated by commas.
pub fn write(_links: &[Link]) -> String {
    todo!("link::write")
}

/// Parses an untrusted link-format document.
pub fn parse(_text: &str) -> Result<Vec<Link>, ContentError> {
    todo!("link::parse")
}
