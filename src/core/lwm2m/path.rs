//! LwM2M paths: `/`, `/O`, `/O/I`, `/O/I/R`, `/O/I/R/RI` with 16-bit ids (65535 is reserved).

use std::fmt;

/// A parse error for a path; maps to 4.00 Bad Request (or 4.04 for ids that cannot exist).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A segment is empty or not a decimal number.
    #[error("path segment {0:?} is not a decimal id")]
    NotANumber(String),
    /// A segment is 65535 or larger.
    #[error("path id {0} is out of range (0..=65534)")]
    OutOfRange(u32),
    /// More than four segments.
    #[error("path has more than four segments")]
    TooDeep,
}

/// A path into the object tree. `len` ids of `ids` are meaningful; `len == 0` is the root.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Path {
    len: u8,
    ids: [u16; 4],
}

impl Path {
    /// The root path `/`.
    pub const ROOT: Self = Self {
        len: 0,
        ids: [0; 4],
    };

    /// `/O`.
    pub const fn object(o: u16) -> Self {
        Self {
            len: 1,
            ids: [o, 0, 0, 0],
        }
    }

    /// `/O/I`.
    pub const fn instance(o: u16, i: u16) -> Self {
        Self {
            len: 2,
            ids: [o, i, 0, 0],
        }
    }

    /// `/O/I/R`.
    pub const fn resource(o: u16, i: u16, r: u16) -> Self {
        Self {
            len: 3,
            ids: [o, i, r, 0],
        }
    }

    /// `/O/I/R/RI`.
    pub const fn resource_instance(o: u16, i: u16, r: u16, ri: u16) -> Self {
        Self {
            len: 4,
            ids: [o, i, r, ri],
        }
    }

    /// Builds a path from up to four ids.
    pub fn from_ids(ids: &[u16]) -> Result<Self, PathError> {
        if ids.len() > 4 {
            return Err(PathError::TooDeep);
        }
        let mut p = Self::ROOT;
        for &id in ids {
            if id == u16::MAX {
                return Err(PathError::OutOfRange(u32::from(id)));
            }
            p.ids[p.len as usize] = id;
            p.len += 1;
        }
        Ok(p)
    }

    /// Parses CoAP Uri-Path segments (`["3", "0", "1"]`). No segments is the root.
    pub fn from_segments<S: AsRef<str>>(segments: &[S]) -> Result<Self, PathError> {
        if segments.len() > 4 {
            return Err(PathError::TooDeep);
        }
        let mut ids = [0u16; 4];
        for (slot, seg) in ids.iter_mut().zip(segments) {
            *slot = parse_id(seg.as_ref())?;
        }
        Self::from_ids(&ids[..segments.len()])
    }

    /// Parses the text form `/3/0/1` (a leading slash is required; `/` is the root).
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| PathError::NotANumber(text.to_string()))?;
        if rest.is_empty() {
            return Ok(Self::ROOT);
        }
        let segments: Vec<&str> = rest.split('/').collect();
        Self::from_segments(&segments)
    }

    /// Number of ids (0 = root, 4 = resource instance).
    #[allow(
        clippy::len_without_is_empty,
        reason = "a path's length is its depth; see is_root"
    )]
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// True for the root path.
    pub const fn is_root(&self) -> bool {
        self.len == 0
    }

    /// The ids as a slice.
    pub fn ids(&self) -> &[u16] {
        &self.ids[..self.len as usize]
    }

    /// Object id, if present.
    pub fn object_id(&self) -> Option<u16> {
        self.ids().first().copied()
    }

    /// Object instance id, if present.
    pub fn instance_id(&self) -> Option<u16> {
        self.ids().get(1).copied()
    }

    /// Resource id, if present.
    pub fn resource_id(&self) -> Option<u16> {
        self.ids().get(2).copied()
    }

    /// Resource instance id, if present.
    pub fn resource_instance_id(&self) -> Option<u16> {
        self.ids().get(3).copied()
    }

    /// The path one level up (the root stays the root).
    pub fn parent(&self) -> Self {
        let mut p = *self;
        if p.len > 0 {
            p.len -= 1;
            p.ids[p.len as usize] = 0;
        }
        p
    }

    /// The path one level down, or `None` below a resource instance.
    pub fn child(&self, id: u16) -> Option<Self> {
        if self.len >= 4 || id == u16::MAX {
            return None;
        }
        let mut p = *self;
        p.ids[p.len as usize] = id;
        p.len += 1;
        Some(p)
    }

    /// True when `self` equals `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &Self) -> bool {
        self.len >= prefix.len
            && self.ids[..prefix.len as usize] == prefix.ids[..prefix.len as usize]
    }

    /// The path truncated to `len` ids.
    pub fn truncate(&self, len: usize) -> Self {
        let mut p = *self;
        let len = len.min(self.len as usize);
        for id in &mut p.ids[len..] {
            *id = 0;
        }
        p.len = len as u8;
        p
    }
}

fn parse_id(seg: &str) -> Result<u16, PathError> {
    if seg.is_empty() || seg.len() > 5 || !seg.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PathError::NotANumber(seg.to_string()));
    }
    let v: u32 = seg
        .parse()
        .map_err(|_| PathError::NotANumber(seg.to_string()))?;
    if v >= u32::from(u16::MAX) {
        return Err(PathError::OutOfRange(v));
    }
    Ok(v as u16)
}

/// Paths order depth-first (`/1/0/9 < /3 < /3/0 < /3/0/2`), the order records are encoded in.
impl Ord for Path {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.ids().cmp(other.ids())
    }
}

impl PartialOrd for Path {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 0 {
            return f.write_str("/");
        }
        for id in self.ids() {
            write!(f, "/{id}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_level() {
        for text in ["/", "/3", "/3/0", "/3/0/11", "/3/0/11/2", "/65534/65534"] {
            assert_eq!(Path::parse(text).expect(text).to_string(), text);
        }
        assert_eq!(Path::parse("/3/0/1"), Ok(Path::resource(3, 0, 1)));
    }

    #[test]
    fn rejects_bad_segments() {
        assert!(Path::parse("3/0").is_err());
        assert!(Path::parse("/3//1").is_err());
        assert!(Path::parse("/3/x").is_err());
        assert!(Path::parse("/3/-1").is_err());
        assert!(Path::parse("/3/+1").is_err());
        assert_eq!(Path::parse("/65535"), Err(PathError::OutOfRange(65535)));
        assert_eq!(Path::parse("/99999"), Err(PathError::OutOfRange(99999)));
        assert_eq!(Path::parse("/1/2/3/4/5"), Err(PathError::TooDeep));
        assert!(Path::parse("/3/0/").is_err());
    }

    #[test]
    fn navigation() {
        let p = Path::resource_instance(3, 0, 11, 2);
        assert_eq!(p.parent(), Path::resource(3, 0, 11));
        assert_eq!(p.parent().parent().parent().parent(), Path::ROOT);
        assert_eq!(Path::ROOT.parent(), Path::ROOT);
        assert!(p.starts_with(&Path::instance(3, 0)));
        assert!(!Path::instance(3, 1).starts_with(&Path::instance(3, 0)));
        assert!(p.starts_with(&Path::ROOT));
        assert_eq!(p.truncate(2), Path::instance(3, 0));
        assert_eq!(Path::instance(3, 0).child(5), Some(Path::resource(3, 0, 5)));
        assert_eq!(p.child(1), None);
        assert_eq!(p.resource_instance_id(), Some(2));
    }

    #[test]
    fn ordering_is_depth_first() {
        let mut v = vec![
            Path::resource(3, 0, 2),
            Path::instance(3, 0),
            Path::resource(1, 0, 9),
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                Path::resource(1, 0, 9),
                Path::instance(3, 0),
                Path::resource(3, 0, 2)
            ]
        );
    }
}
