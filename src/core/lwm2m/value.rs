//! Resource values, records (path + value) and Execute arguments, with the type and range checks
//! that the OMA model implies.

use std::collections::BTreeMap;
use std::fmt;

use super::path::Path;
use crate::model::{Range, ResourceMeta, ResourceType};

/// One resource (or resource instance) value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// UTF-8 string.
    String(String),
    /// Signed integer.
    Integer(i64),
    /// Unsigned integer.
    Unsigned(u64),
    /// Float.
    Float(f64),
    /// Boolean.
    Boolean(bool),
    /// Raw bytes.
    Opaque(Vec<u8>),
    /// Unix time in seconds.
    Time(i64),
    /// Object link `object:instance` (65535:65535 is the null link).
    Objlnk(u16, u16),
    /// CoRE link-format text.
    Corelnk(String),
}

impl Value {
    /// The natural resource type of this value.
    pub fn kind(&self) -> ResourceType {
        match self {
            Self::String(_) => ResourceType::String,
            Self::Integer(_) => ResourceType::Integer,
            Self::Unsigned(_) => ResourceType::Unsigned,
            Self::Float(_) => ResourceType::Float,
            Self::Boolean(_) => ResourceType::Boolean,
            Self::Opaque(_) => ResourceType::Opaque,
            Self::Time(_) => ResourceType::Time,
            Self::Objlnk(..) => ResourceType::Objlnk,
            Self::Corelnk(_) => ResourceType::Corelnk,
        }
    }

    /// The value as f64 when it is numeric (used for gt / lt / st).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Integer(v) | Self::Time(v) => Some(v as f64),
            Self::Unsigned(v) => Some(v as f64),
            Self::Float(v) => Some(v),
            _ => None,
        }
    }

    /// Converts a decoded value into the type the model declares, where the conversion is lossless
    /// (a SenML number `v` becomes an Integer, a string becomes a Corelnk...). Returns `None` when
    /// the value cannot represent that type.
    pub fn coerce(self, kind: ResourceType) -> Option<Self> {
        use ResourceType as T;
        match (self, kind) {
            (v, k) if v.kind() == k => Some(v),
            (Self::Integer(v), T::Unsigned) => u64::try_from(v).ok().map(Self::Unsigned),
            (Self::Integer(v), T::Time) => Some(Self::Time(v)),
            (Self::Integer(v), T::Float) => Some(Self::Float(v as f64)),
            (Self::Unsigned(v), T::Integer) => i64::try_from(v).ok().map(Self::Integer),
            (Self::Unsigned(v), T::Time) => i64::try_from(v).ok().map(Self::Time),
            (Self::Unsigned(v), T::Float) => Some(Self::Float(v as f64)),
            (Self::Time(v), T::Integer) => Some(Self::Integer(v)),
            (Self::Float(v), T::Integer | T::Time | T::Unsigned) => float_to_int(v, kind),
            (Self::String(s), T::Corelnk) => Some(Self::Corelnk(s)),
            (Self::Corelnk(s), T::String) => Some(Self::String(s)),
            (Self::String(s), T::Objlnk) => parse_objlnk(&s).map(|(o, i)| Self::Objlnk(o, i)),
            _ => None,
        }
    }

    /// Checks the value against the model's range (numeric bounds or byte lengths).
    pub fn check_range(&self, meta: &ResourceMeta) -> Result<(), String> {
        match (meta.range, self) {
            (Range::Int { min, max }, Self::Integer(v) | Self::Time(v)) if *v < min || *v > max => {
                Err(format!("{v} is outside {min}..{max}"))
            }
            (Range::Int { min, max }, Self::Unsigned(v))
                if i128::from(*v) < i128::from(min) || i128::from(*v) > i128::from(max) =>
            {
                Err(format!("{v} is outside {min}..{max}"))
            }
            (Range::Len { min, max }, v) => match byte_len(v) {
                Some(n) if (n as i64) < min || (n as i64) > max => {
                    Err(format!("length {n} is outside {min}..{max} bytes"))
                }
                _ => Ok(()),
            },
            (Range::Lengths(allowed), v) => match byte_len(v) {
                Some(n) if !allowed.iter().any(|&a| a as usize == n) => {
                    Err(format!("length {n} is not one of {allowed:?}"))
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

fn byte_len(v: &Value) -> Option<usize> {
    match v {
        Value::String(s) | Value::Corelnk(s) => Some(s.len()),
        Value::Opaque(b) => Some(b.len()),
        _ => None,
    }
}

fn float_to_int(v: f64, kind: ResourceType) -> Option<Value> {
    if !v.is_finite() || v.fract() != 0.0 {
        return None;
    }
    // 2^63 is exactly representable; anything at or beyond it does not fit an i64.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    match kind {
        ResourceType::Unsigned if (0.0..LIMIT * 2.0).contains(&v) => {
            Some(Value::Unsigned(v as u64))
        }
        ResourceType::Integer if (-LIMIT..LIMIT).contains(&v) => Some(Value::Integer(v as i64)),
        ResourceType::Time if (-LIMIT..LIMIT).contains(&v) => Some(Value::Time(v as i64)),
        _ => None,
    }
}

/// Parses `oid:iid`.
pub fn parse_objlnk(s: &str) -> Option<(u16, u16)> {
    let (o, i) = s.split_once(':')?;
    let digits = |t: &str| !t.is_empty() && t.len() <= 5 && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(o) || !digits(i) {
        return None;
    }
    Some((o.parse().ok()?, i.parse().ok()?))
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) | Self::Corelnk(s) => f.write_str(s),
            Self::Integer(v) | Self::Time(v) => write!(f, "{v}"),
            Self::Unsigned(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v}"),
            Self::Boolean(b) => f.write_str(if *b { "1" } else { "0" }),
            Self::Opaque(b) => write!(f, "<{} bytes>", b.len()),
            Self::Objlnk(o, i) => write!(f, "{o}:{i}"),
        }
    }
}

/// The value of a whole resource: one value, or the instances of a multi-instance resource.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceValue {
    /// A single-instance resource.
    Single(Value),
    /// A multi-instance resource (instance id → value); may be empty.
    Multiple(BTreeMap<u16, Value>),
}

/// A value at a resource or resource-instance path: the unit every content format encodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `/O/I/R` or `/O/I/R/RI`.
    pub path: Path,
    /// The value.
    pub value: Value,
}

impl Record {
    /// A record at `path`.
    pub fn new(path: Path, value: Value) -> Self {
        Self { path, value }
    }
}

/// Flattens a resource value into records below `path` (`/O/I/R`).
pub fn records_of(path: Path, value: ResourceValue, out: &mut Vec<Record>) {
    match value {
        ResourceValue::Single(v) => out.push(Record::new(path, v)),
        ResourceValue::Multiple(map) => {
            for (ri, v) in map {
                if let Some(p) = path.child(ri) {
                    out.push(Record::new(p, v));
                }
            }
        }
    }
}

/// One Execute argument: `digit[='value']`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecArg {
    /// The argument number 0..=9.
    pub id: u8,
    /// The optional quoted value.
    pub value: Option<String>,
}

/// Parses an Execute payload (`0='foo',1`) per the Core ABNF. An empty payload is no arguments.
pub fn parse_exec_args(payload: &[u8]) -> Result<Vec<ExecArg>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "arguments are not UTF-8".to_string())?;
    let mut args = Vec::new();
    if text.is_empty() {
        return Ok(args);
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    loop {
        let Some(&d) = bytes.get(i) else {
            return Err("argument list ends with a comma".into());
        };
        if !d.is_ascii_digit() {
            return Err(format!("argument must start with a digit at byte {i}"));
        }
        i += 1;
        let mut value = None;
        if bytes.get(i) == Some(&b'=') {
            if bytes.get(i + 1) != Some(&b'\'') {
                return Err(format!("argument value must be quoted at byte {}", i + 1));
            }
            let start = i + 2;
            let len = bytes[start..]
                .iter()
                .position(|&b| b == b'\'')
                .ok_or_else(|| "unterminated argument value".to_string())?;
            let v = &text[start..start + len];
            // The ABNF allows only printable ASCII except the quote.
            if !v.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                return Err("argument value has characters outside printable ASCII".into());
            }
            value = Some(v.to_string());
            i = start + len + 1;
        }
        if args.iter().any(|a: &ExecArg| a.id == d - b'0') {
            return Err(format!("argument {} given twice", d - b'0'));
        }
        args.push(ExecArg {
            id: d - b'0',
            value,
        });
        match bytes.get(i) {
            None => return Ok(args),
            Some(b',') => i += 1,
            Some(_) => return Err(format!("expected ',' at byte {i}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model;

    #[test]
    fn exec_args_follow_the_abnf() {
        assert_eq!(parse_exec_args(b""), Ok(vec![]));
        assert_eq!(
            parse_exec_args(b"0='foo',1"),
            Ok(vec![
                ExecArg {
                    id: 0,
                    value: Some("foo".into())
                },
                ExecArg { id: 1, value: None }
            ])
        );
        assert_eq!(
            parse_exec_args(b"5=''"),
            Ok(vec![ExecArg {
                id: 5,
                value: Some(String::new())
            }])
        );
        for bad in [
            &b"a"[..],
            b"0=foo",
            b"0='x",
            b"0,",
            b"12",
            b"0,0",
            b"0='\xff'",
            b",",
            b"0 ,1",
        ] {
            assert!(
                parse_exec_args(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn coercion_is_lossless_only() {
        assert_eq!(
            Value::Float(5.0).coerce(ResourceType::Integer),
            Some(Value::Integer(5))
        );
        assert_eq!(Value::Float(5.5).coerce(ResourceType::Integer), None);
        assert_eq!(Value::Float(f64::NAN).coerce(ResourceType::Integer), None);
        assert_eq!(Value::Float(1e30).coerce(ResourceType::Integer), None);
        assert_eq!(Value::Integer(-1).coerce(ResourceType::Unsigned), None);
        assert_eq!(
            Value::Integer(7).coerce(ResourceType::Time),
            Some(Value::Time(7))
        );
        assert_eq!(
            Value::String("3:0".into()).coerce(ResourceType::Objlnk),
            Some(Value::Objlnk(3, 0))
        );
        assert_eq!(
            Value::String("x".into()).coerce(ResourceType::Integer),
            None
        );
        assert_eq!(
            Value::Unsigned(u64::MAX).coerce(ResourceType::Integer),
            None
        );
    }

    #[test]
    fn ranges_from_the_model_are_enforced() {
        let ssid = model::object(1).and_then(|o| o.resource(0)).expect("ssid");
        assert!(Value::Integer(1).check_range(ssid).is_ok());
        assert!(Value::Integer(0).check_range(ssid).is_err());
        assert!(Value::Integer(65535).check_range(ssid).is_err());
        let uri = model::object(5)
            .and_then(|o| o.resource(1))
            .expect("package uri");
        assert!(Value::String("x".repeat(255)).check_range(uri).is_ok());
        assert!(Value::String("x".repeat(256)).check_range(uri).is_err());
    }

    #[test]
    fn objlnk_parsing() {
        assert_eq!(parse_objlnk("65535:65535"), Some((65535, 65535)));
        assert_eq!(parse_objlnk("1:"), None);
        assert_eq!(parse_objlnk("70000:1"), None);
        assert_eq!(parse_objlnk("+1:1"), None);
    }
}
