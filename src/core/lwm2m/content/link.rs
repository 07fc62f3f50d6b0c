//! application/link-format (CF 40, RFC 6690): the Register/Update object list and Discover.
//!
//! The parser implements the RFC 6690 subset LwM2M uses: `<target>` followed by `;name`,
//! `;name=ptoken` or `;name="quoted string"` parameters, links separated by commas (optionally
//! surrounded by whitespace, which some servers emit). It works on the input string with a byte
//! cursor that only ever stops on ASCII delimiters, so every slice is on a char boundary.

use super::ContentError;

const FORMAT: &str = "link-format";

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

/// Writes links separated by commas. A `Token` that is not a valid ptoken is written quoted, so
/// the output always parses.
pub fn write(links: &[Link]) -> String {
    let mut out = String::new();
    for (index, link) in links.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push('<');
        out.push_str(&link.target);
        out.push('>');
        for (name, value) in &link.attrs {
            out.push(';');
            out.push_str(name);
            match value {
                None => {}
                Some(AttrValue::Token(t)) if is_ptoken(t) => {
                    out.push('=');
                    out.push_str(t);
                }
                Some(AttrValue::Token(t) | AttrValue::Quoted(t)) => {
                    out.push('=');
                    write_quoted(&mut out, t);
                }
            }
        }
    }
    out
}

fn write_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// RFC 6690 `ptokenchar`.
fn is_ptoken_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'()*+-./:<=>?@[]^_`{|}~".contains(&b)
}

fn is_ptoken(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_ptoken_char)
}

/// RFC 5987 `parmname` characters (the names of link parameters).
fn is_parmname_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b)
}

/// Parses an untrusted link-format document. An empty document is an empty list.
pub fn parse(text: &str) -> Result<Vec<Link>, ContentError> {
    let mut c = Cursor { text, pos: 0 };
    let mut links = Vec::new();
    c.skip_whitespace();
    if c.at_end() {
        return Ok(links);
    }
    loop {
        links.push(link(&mut c)?);
        c.skip_whitespace();
        match c.next_byte() {
            None => return Ok(links),
            Some(b',') => c.skip_whitespace(),
            Some(other) => {
                return Err(c.error(format!(
                    "expected ',' between links, found {:?}",
                    char::from(other)
                )));
            }
        }
    }
}

/// `<target>` and its parameters.
fn link(c: &mut Cursor<'_>) -> Result<Link, ContentError> {
    if c.next_byte() != Some(b'<') {
        return Err(c.error("a link must start with '<'"));
    }
    let target = c.take_while(|b| b != b'>');
    if c.next_byte() != Some(b'>') {
        return Err(c.error("unterminated '<'"));
    }
    if target.is_empty() {
        return Err(c.error("empty link target"));
    }
    let mut attrs = Vec::new();
    while c.peek() == Some(b';') {
        c.pos += 1;
        attrs.push(param(c)?);
    }
    Ok(Link {
        target: target.to_string(),
        attrs,
    })
}

/// `name`, `name=ptoken` or `name="quoted"`.
fn param(c: &mut Cursor<'_>) -> Result<(String, Option<AttrValue>), ContentError> {
    let name = c.take_while(is_parmname_char);
    if name.is_empty() {
        return Err(c.error("empty parameter name"));
    }
    if c.peek() != Some(b'=') {
        return Ok((name.to_string(), None));
    }
    c.pos += 1;
    let value = if c.peek() == Some(b'"') {
        AttrValue::Quoted(quoted(c)?)
    } else {
        let token = c.take_while(is_ptoken_char);
        if token.is_empty() {
            return Err(c.error(format!("parameter {name} has an empty value")));
        }
        AttrValue::Token(token.to_string())
    };
    Ok((name.to_string(), Some(value)))
}

/// A quoted string starting at the opening quote; `\x` stands for `x`.
fn quoted(c: &mut Cursor<'_>) -> Result<String, ContentError> {
    c.pos += 1;
    let mut out = String::new();
    loop {
        match c.next_char() {
            None => return Err(c.error("unterminated quoted string")),
            Some('"') => return Ok(out),
            Some('\\') => match c.next_char() {
                None => return Err(c.error("unterminated quoted string")),
                Some(escaped) => out.push(escaped),
            },
            Some(ch) => out.push(ch),
        }
    }
}

/// A position in the document being parsed.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    /// The next byte, consumed. Callers only consume ASCII this way.
    fn next_byte(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    /// The next char, consumed (quoted strings may hold any UTF-8).
    fn next_char(&mut self) -> Option<char> {
        let ch = self.text.get(self.pos..)?.chars().next()?;
        self.pos += ch.len_utf8();
        Some(ch)
    }

    /// Consumes bytes while `keep` holds. `keep` is false for the ASCII delimiter that ends the
    /// run, so the run ends on a char boundary.
    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or_default()
    }

    fn skip_whitespace(&mut self) {
        self.take_while(|b| b == b' ' || b == b'\t' || b == b'\r' || b == b'\n');
    }

    fn error(&self, reason: impl Into<String>) -> ContentError {
        ContentError::malformed(FORMAT, format!("{} at byte {}", reason.into(), self.pos))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn link(target: &str, attrs: &[(&str, Option<AttrValue>)]) -> Link {
        Link {
            target: target.into(),
            attrs: attrs
                .iter()
                .map(|(n, v)| ((*n).to_string(), v.clone()))
                .collect(),
        }
    }

    fn token(t: &str) -> Option<AttrValue> {
        Some(AttrValue::Token(t.into()))
    }

    fn quoted(t: &str) -> Option<AttrValue> {
        Some(AttrValue::Quoted(t.into()))
    }

    fn register_payload() -> Vec<Link> {
        vec![
            link("/1", &[("ver", token("1.2"))]),
            link("/1/0", &[]),
            link("/3/0/7", &[("dim", token("8")), ("pmin", token("10"))]),
        ]
    }

    #[test]
    fn writes_the_register_object_list() {
        assert_eq!(
            write(&register_payload()),
            "</1>;ver=1.2,</1/0>,</3/0/7>;dim=8;pmin=10"
        );
        assert_eq!(write(&[]), "");
    }

    #[test]
    fn quotes_and_escapes() {
        let links = [link(
            "/",
            &[
                ("rt", quoted("oma.lwm2m")),
                ("ct", quoted("60 110")),
                ("x", quoted(r#"a"b\c"#)),
                ("obs", None),
                // Not a ptoken (space, comma): written quoted so the output still parses.
                ("t", token("a b,c")),
            ],
        )];
        let text = write(&links);
        assert_eq!(
            text,
            r#"</>;rt="oma.lwm2m";ct="60 110";x="a\"b\\c";obs;t="a b,c""#
        );
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed[0].attrs[2].1, quoted(r#"a"b\c"#));
        assert_eq!(parsed[0].attrs[4].1, quoted("a b,c"));
    }

    #[test]
    fn parses_the_rfc_subset() {
        assert_eq!(
            parse("</1>;ver=1.2,</1/0>,</3/0/7>;dim=8;pmin=10"),
            Ok(register_payload())
        );
        assert_eq!(
            parse(r#"</a,b>;title="x, y; z",</c>;obs"#),
            Ok(vec![
                link("/a,b", &[("title", quoted("x, y; z"))]),
                link("/c", &[("obs", None)]),
            ])
        );
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("  "), Ok(vec![]));
        assert_eq!(
            parse("</1>, </2>"),
            Ok(vec![link("/1", &[]), link("/2", &[])])
        );
        assert_eq!(
            parse(r#"</ü>;n="é\"""#),
            Ok(vec![link("/ü", &[("n", quoted("é\""))])])
        );
    }

    #[test]
    fn rejects_broken_documents() {
        for text in [
            "<",
            "</1",
            "<>",
            "/1",
            "</1>,",
            ",</1>",
            "</1>,,</2>",
            "</1>;",
            "</1>;=1",
            "</1>;a=",
            "</1>;a=\"x",
            "</1>;a=\"x\\",
            "</1>;a=\"x\"y",
            "</1>;a b",
            "</1> </2>",
            "</1>x",
            "</1>;a=é",
        ] {
            assert!(
                matches!(parse(text), Err(ContentError::Malformed { .. })),
                "{text}"
            );
        }
    }

    fn attr_value() -> impl Strategy<Value = Option<AttrValue>> {
        prop_oneof![
            Just(None),
            "[a-zA-Z0-9.:/!#$%&'()*+<=>?@^_`{|}~\\[\\]-]{1,8}"
                .prop_map(|t| Some(AttrValue::Token(t))),
            any::<String>().prop_map(|t| Some(AttrValue::Quoted(t))),
        ]
    }

    fn any_link() -> impl Strategy<Value = Link> {
        (
            "[^>]{1,12}",
            proptest::collection::vec(("[a-z0-9!#$&+.^_`|~-]{1,6}", attr_value()), 0..4),
        )
            .prop_map(|(target, attrs)| Link { target, attrs })
    }

    proptest! {
        #[test]
        fn write_then_parse_round_trips(links in proptest::collection::vec(any_link(), 1..4)) {
            prop_assert_eq!(parse(&write(&links)), Ok(links));
        }

        #[test]
        fn random_text_never_panics(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn link_like_text_never_panics(text in r#"[<>;=",\\ a/0-9é]{0,40}"#) {
            let _ = parse(&text);
        }
    }
}
