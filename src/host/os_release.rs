//! `os-release(5)`: the firmware version fallback for /3/0/3.

use std::collections::BTreeMap;
use std::path::Path;

/// Reads `<root>/etc/os-release`, falling back to `<root>/usr/lib/os-release` as the format's
/// specification says; `None` when neither is readable.
pub fn read(root: &Path) -> Option<BTreeMap<String, String>> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| super::read_text(&super::under(root, p)))
        .map(|text| parse(&text))
}

/// The firmware version an os-release file states: `VERSION_ID`, else `VERSION`.
pub fn firmware_version(fields: &BTreeMap<String, String>) -> Option<String> {
    ["VERSION_ID", "VERSION"]
        .iter()
        .filter_map(|key| fields.get(*key))
        .find(|v| !v.trim().is_empty())
        .cloned()
}

/// Parses `KEY=value` lines with shell-style quoting (double quotes with `\` escapes of `$`,
/// `"`, `\` and `` ` ``; single quotes taken literally; backslash escapes outside quotes).
/// Comments, blank lines and malformed lines are skipped; a later key overrides an earlier one.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let key_ok =
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !key_ok {
                return None;
            }
            Some((key.to_string(), unquote(value)?))
        })
        .collect()
}

/// Removes shell quoting from a value; `None` for an unterminated quote.
fn unquote(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    other => out.push(other),
                }
            },
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        escaped @ ('$' | '"' | '\\' | '`') => out.push(escaped),
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    },
                    other => out.push(other),
                }
            },
            '\\' => out.push(chars.next()?),
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"#;

    #[test]
    fn debian_version_id_wins() {
        let fields = parse(DEBIAN);
        assert_eq!(
            fields.get("NAME").map(String::as_str),
            Some("Debian GNU/Linux")
        );
        assert_eq!(
            fields.get("VERSION_CODENAME").map(String::as_str),
            Some("bookworm")
        );
        assert_eq!(firmware_version(&fields).as_deref(), Some("12"));
    }

    #[test]
    fn quotes_and_escapes() {
        let text = r#"
# a comment
A="say \"hi\" for \$5 \\ \`x\` \n"
B='single $quoted "text"'
C=unquoted\ word
D="con"'cat'enated
E=""
BAD KEY=x
=nokey
F="unterminated
G='also unterminated
lower_ok=1
"#;
        let f = parse(text);
        let get = |k: &str| f.get(k).map(String::as_str);
        assert_eq!(get("A"), Some(r#"say "hi" for $5 \ `x` \n"#));
        assert_eq!(get("B"), Some(r#"single $quoted "text""#));
        assert_eq!(get("C"), Some("unquoted word"));
        assert_eq!(get("D"), Some("concatenated"));
        assert_eq!(get("E"), Some(""));
        assert_eq!(get("F"), None);
        assert_eq!(get("G"), None);
        assert_eq!(get("lower_ok"), Some("1"));
        assert_eq!(f.len(), 6);
    }

    #[test]
    fn version_falls_back_and_empty_is_absent() {
        let f = parse("VERSION=\"3.19.1 (rolling)\"\nVERSION_ID=\"\"\n");
        assert_eq!(firmware_version(&f).as_deref(), Some("3.19.1 (rolling)"));
        assert_eq!(firmware_version(&parse("ID=arch\n")), None);
        assert_eq!(firmware_version(&parse("\u{0}\u{1}garbage\n==\n")), None);
    }

    #[test]
    fn usr_lib_is_the_fallback_location() {
        let root = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(root.path()), None);
        std::fs::create_dir_all(root.path().join("usr/lib")).expect("mkdir");
        std::fs::write(root.path().join("usr/lib/os-release"), "VERSION_ID=7\n").expect("write");
        let fields = read(root.path()).expect("fallback read");
        assert_eq!(firmware_version(&fields).as_deref(), Some("7"));
        std::fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        std::fs::write(root.path().join("etc/os-release"), "VERSION_ID=8\n").expect("write");
        let fields = read(root.path()).expect("etc read");
        assert_eq!(firmware_version(&fields).as_deref(), Some("8"));
    }
}
