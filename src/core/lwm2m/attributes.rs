//! Notification attributes (Core §5.1.2): `pmin`, `pmax`, `gt`, `lt`, `st`, `epmin`, `epmax`,
//! set per server with Write-Attributes, attached at object, instance, resource or resource-instance
//! level, and inherited downwards (a lower level overrides a higher one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::content::link::AttrValue;
use super::error::Error;
use super::path::Path;

/// The attributes attached at one level (every field optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    /// Minimum period between notifications, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmin: Option<u32>,
    /// Maximum period between notifications, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmax: Option<u32>,
    /// Notify when the value crosses this upper threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    /// Notify when the value crosses this lower threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    /// Notify when the value moved at least this much since the last notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub st: Option<f64>,
    /// Minimum evaluation period, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epmin: Option<u32>,
    /// Maximum evaluation period, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epmax: Option<u32>,
}

/// One Write-Attributes request: for each attribute, `None` = untouched, `Some(None)` = remove
/// (`?pmin` without a value), `Some(Some(v))` = set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttributeUpdate {
    pmin: Option<Option<u32>>,
    pmax: Option<Option<u32>>,
    gt: Option<Option<f64>>,
    lt: Option<Option<f64>>,
    st: Option<Option<f64>>,
    epmin: Option<Option<u32>>,
    epmax: Option<Option<u32>>,
}

impl AttributeUpdate {
    /// Parses Uri-Query items such as `pmin=10`, `gt=20.5`, `pmax`.
    pub fn parse(query: &[&str]) -> Result<Self, Error> {
        let mut update = Self::default();
        for item in query {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (*item, None),
            };
            match name {
                "pmin" => set_once(&mut update.pmin, name, value.map(period).transpose()?)?,
                "pmax" => set_once(&mut update.pmax, name, value.map(period).transpose()?)?,
                "epmin" => set_once(&mut update.epmin, name, value.map(period).transpose()?)?,
                "epmax" => set_once(&mut update.epmax, name, value.map(period).transpose()?)?,
                "gt" => set_once(&mut update.gt, name, value.map(number).transpose()?)?,
                "lt" => set_once(&mut update.lt, name, value.map(number).transpose()?)?,
                "st" => {
                    let st = value.map(number).transpose()?;
                    if st.is_some_and(|s| s < 0.0) {
                        return Err(Error::bad("st must not be negative"));
                    }
                    set_once(&mut update.st, name, st)?
                }
                other => return Err(Error::bad(format!("unknown attribute {other:?}"))),
            }
        }
        Ok(update)
    }

    /// True when the request sets or removes a value-based attribute (gt, lt, st).
    pub fn touches_thresholds(&self) -> bool {
        self.gt.is_some() || self.lt.is_some() || self.st.is_some()
    }

    /// True when the request names no attribute at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn set_once<T>(slot: &mut Option<Option<T>>, name: &str, value: Option<T>) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::bad(format!("attribute {name} given twice")));
    }
    *slot = Some(value);
    Ok(())
}

fn period(text: &str) -> Result<u32, Error> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::bad(format!(
            "period {text:?} is not a non-negative integer"
        )));
    }
    text.parse()
        .map_err(|_| Error::bad(format!("period {text} is too large")))
}

fn number(text: &str) -> Result<f64, Error> {
    let ok_chars = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    match text.parse::<f64>() {
        Ok(v) if ok_chars && v.is_finite() => Ok(v),
        _ => Err(Error::bad(format!(
            "threshold {text:?} is not a finite number"
        ))),
    }
}

impl Attributes {
    /// Applies an update to the attributes attached at one level.
    pub fn apply(&mut self, update: &AttributeUpdate) {
        fn merge<T: Copy>(slot: &mut Option<T>, change: Option<Option<T>>) {
            if let Some(v) = change {
                *slot = v;
            }
        }
        merge(&mut self.pmin, update.pmin);
        merge(&mut self.pmax, update.pmax);
        merge(&mut self.gt, update.gt);
        merge(&mut self.lt, update.lt);
        merge(&mut self.st, update.st);
        merge(&mut self.epmin, update.epmin);
        merge(&mut self.epmax, update.epmax);
    }

    /// Checks the consistency rules of Core §5.1.2 (→ 4.00 when violated).
    pub fn validate(&self) -> Result<(), Error> {
        if let (Some(lt), Some(gt)) = (self.lt, self.gt) {
            if lt >= gt {
                return Err(Error::bad(format!("lt ({lt}) must be less than gt ({gt})")));
            }
            if let Some(st) = self.st
                && lt + 2.0 * st >= gt
            {
                return Err(Error::bad("lt + 2*st must be less than gt"));
            }
        }
        if let (Some(lo), Some(hi)) = (self.epmin, self.epmax)
            && lo > hi
        {
            return Err(Error::bad("epmin must not exceed epmax"));
        }
        Ok(())
    }

    /// True when nothing is attached.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// True when a value-based condition (gt, lt, st) is set.
    pub fn has_thresholds(&self) -> bool {
        self.gt.is_some() || self.lt.is_some() || self.st.is_some()
    }

    /// `self` with every unset attribute taken from `parent` (the lower level wins).
    pub fn over(&self, parent: &Self) -> Self {
        Self {
            pmin: self.pmin.or(parent.pmin),
            pmax: self.pmax.or(parent.pmax),
            gt: self.gt.or(parent.gt),
            lt: self.lt.or(parent.lt),
            st: self.st.or(parent.st),
            epmin: self.epmin.or(parent.epmin),
            epmax: self.epmax.or(parent.epmax),
        }
    }

    /// The attributes as link-format parameters (Discover), in the spec's order.
    pub fn link_params(&self) -> Vec<(String, Option<AttrValue>)> {
        let int = |v: Option<u32>| v.map(|v| v.to_string());
        let float = |v: Option<f64>| v.map(|v| v.to_string());
        [
            ("pmin", int(self.pmin)),
            ("pmax", int(self.pmax)),
            ("gt", float(self.gt)),
            ("lt", float(self.lt)),
            ("st", float(self.st)),
            ("epmin", int(self.epmin)),
            ("epmax", int(self.epmax)),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name.to_string(), Some(AttrValue::Token(v)))))
        .collect()
    }
}

/// The attributes one server attached, by path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AttributeStore {
    #[serde(with = "path_map")]
    levels: BTreeMap<Path, Attributes>,
}

impl AttributeStore {
    /// The attributes attached exactly at `path`.
    pub fn attached(&self, path: &Path) -> Attributes {
        self.levels.get(path).copied().unwrap_or_default()
    }

    /// Replaces the attributes attached at `path` (dropping the entry when empty).
    pub fn set(&mut self, path: Path, attrs: Attributes) {
        if attrs.is_empty() {
            self.levels.remove(&path);
        } else {
            self.levels.insert(path, attrs);
        }
    }

    /// The effective attributes for `path`: inherited from object to resource instance, then the
    /// server's defaults (`/1/x/2`, `/1/x/3`) for pmin and pmax.
    pub fn effective(
        &self,
        path: &Path,
        default_pmin: Option<u32>,
        default_pmax: Option<u32>,
    ) -> Attributes {
        let mut acc = Attributes {
            pmin: default_pmin,
            pmax: default_pmax,
            ..Attributes::default()
        };
        for depth in 1..=path.len() {
            acc = self.attached(&path.truncate(depth)).over(&acc);
        }
        acc
    }

    /// Drops everything attached at or below `path` (an instance was deleted).
    pub fn remove_below(&mut self, path: &Path) {
        self.levels.retain(|p, _| !p.starts_with(path));
    }

    /// True when no attribute is stored.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }
}

/// Serialises the path-keyed map with text keys (`"/3/0/7"`) so the state file stays readable.
mod path_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Attributes, Path};

    pub(super) fn serialize<S: Serializer>(
        map: &BTreeMap<Path, Attributes>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let text: BTreeMap<String, &Attributes> =
            map.iter().map(|(p, a)| (p.to_string(), a)).collect();
        text.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Path, Attributes>, D::Error> {
        let text = BTreeMap::<String, Attributes>::deserialize(d)?;
        text.into_iter()
            .map(|(k, v)| {
                Path::parse(&k)
                    .map(|p| (p, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_and_unset() {
        let u = AttributeUpdate::parse(&["pmin=10", "pmax", "gt=20.5", "st=1"]).expect("valid");
        let mut a = Attributes {
            pmax: Some(60),
            ..Default::default()
        };
        a.apply(&u);
        assert_eq!(
            a,
            Attributes {
                pmin: Some(10),
                gt: Some(20.5),
                st: Some(1.0),
                ..Default::default()
            }
        );
    }

    #[test]
    fn rejects_bad_values_and_names() {
        for bad in [
            &["pmin=-1"][..],
            &["pmin=1.5"],
            &["pmin=x"],
            &["gt=nan"],
            &["gt=inf"],
            &["st=-2"],
            &["foo=1"],
            &["pmin=1", "pmin=2"],
            &["pmin=99999999999"],
            &["gt=0x10"],
        ] {
            assert!(AttributeUpdate::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn consistency_rules() {
        let ok = Attributes {
            lt: Some(1.0),
            gt: Some(10.0),
            st: Some(2.0),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let crossed = Attributes {
            lt: Some(10.0),
            gt: Some(10.0),
            ..Default::default()
        };
        assert!(crossed.validate().is_err());
        let steps = Attributes {
            lt: Some(1.0),
            gt: Some(10.0),
            st: Some(5.0),
            ..Default::default()
        };
        assert!(steps.validate().is_err());
        let eps = Attributes {
            epmin: Some(10),
            epmax: Some(5),
            ..Default::default()
        };
        assert!(eps.validate().is_err());
        // pmax < pmin is allowed: pmax is then ignored when scheduling.
        let periods = Attributes {
            pmin: Some(10),
            pmax: Some(5),
            ..Default::default()
        };
        assert!(periods.validate().is_ok());
    }

    #[test]
    fn lower_levels_override_and_defaults_fill_in() {
        let mut store = AttributeStore::default();
        store.set(
            Path::object(3),
            Attributes {
                pmin: Some(10),
                pmax: Some(60),
                ..Default::default()
            },
        );
        store.set(
            Path::resource(3, 0, 7),
            Attributes {
                pmin: Some(1),
                gt: Some(5.0),
                ..Default::default()
            },
        );
        let eff = store.effective(&Path::resource_instance(3, 0, 7, 0), Some(0), Some(300));
        assert_eq!(eff.pmin, Some(1));
        assert_eq!(eff.pmax, Some(60));
        assert_eq!(eff.gt, Some(5.0));
        let other = store.effective(&Path::resource(3, 0, 9), Some(0), Some(300));
        assert_eq!(
            (other.pmin, other.pmax, other.gt),
            (Some(10), Some(60), None)
        );
        let elsewhere = store.effective(&Path::resource(1, 0, 1), Some(2), None);
        assert_eq!((elsewhere.pmin, elsewhere.pmax), (Some(2), None));
        store.remove_below(&Path::instance(3, 0));
        assert!(store.attached(&Path::resource(3, 0, 7)).is_empty());
        assert!(!store.attached(&Path::object(3)).is_empty());
    }

    #[test]
    fn store_round_trips_through_json() {
        let mut store = AttributeStore::default();
        store.set(
            Path::resource(3, 0, 7),
            Attributes {
                lt: Some(-1.5),
                pmax: Some(9),
                ..Default::default()
            },
        );
        let json = serde_json::to_string(&store).expect("serialise");
        assert_eq!(json, r#"{"/3/0/7":{"pmax":9,"lt":-1.5}}"#);
        let back: AttributeStore = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, store);
        assert!(serde_json::from_str::<AttributeStore>(r#"{"/x":{}}"#).is_err());
    }

    #[test]
    fn link_params_in_order() {
        let a = Attributes {
            pmin: Some(1),
            pmax: Some(2),
            gt: Some(3.5),
            epmax: Some(4),
            ..Default::default()
        };
        let names: Vec<String> = a.link_params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["pmin", "pmax", "gt", "epmax"]);
    }
}
