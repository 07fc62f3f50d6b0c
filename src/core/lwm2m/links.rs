//! Link-format documents the client produces: the Register/Update object list (Core §6.2.1) and
//! Discover answers (Core §5.4.2) with the attributes attached for the asking server.

use super::attributes::AttributeStore;
use super::content::cf;
use super::content::link::{AttrValue, Link};
use super::error::Error;
use super::path::Path;
use super::value::ResourceValue;
use crate::core::object::{Ctx, Registry};
use crate::model::Version;

/// Objects never listed in Register: Security (0), OSCORE (21) and COSE (23) carry credentials.
const UNLISTED: [u16; 3] = [0, 21, 23];

/// The LwM2M enabler version a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Lwm2mVersion {
    /// LwM2M 1.0 (TLV mandatory, no `ct` root link).
    V1_0,
    /// LwM2M 1.1.
    V1_1,
}

impl Lwm2mVersion {
    /// The `lwm2m=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_0 => "1.0",
            Self::V1_1 => "1.1",
        }
    }
}

/// The Register / Update payload: a root link advertising the optional content formats (1.1),
/// then every object (with `ver=` when its version is not 1.0) and every instance.
pub fn object_list(reg: &Registry, version: Lwm2mVersion) -> Vec<Link> {
    let mut links = Vec::new();
    if version == Lwm2mVersion::V1_1 {
        // Plain text, opaque and link format are mandatory and not listed; these are the extras.
        let formats = [cf::CBOR, cf::SENML_JSON, cf::SENML_CBOR, cf::TLV];
        let list = formats
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        links.push(Link {
            target: "/".into(),
            attrs: vec![("ct".into(), Some(AttrValue::Quoted(list)))],
        });
    }
    for (oid, object) in reg.iter() {
        if UNLISTED.contains(&oid) {
            continue;
        }
        let meta = object.meta();
        let instances = object.instances();
        if meta.version != Version(1, 0) {
            links.push(Link {
                target: format!("/{oid}"),
                attrs: vec![(
                    "ver".into(),
                    Some(AttrValue::Token(meta.version.to_string())),
                )],
            });
        } else if instances.is_empty() {
            links.push(Link {
                target: format!("/{oid}"),
                attrs: Vec::new(),
            });
        }
        for iid in instances {
            links.push(Link {
                target: format!("/{oid}/{iid}"),
                attrs: Vec::new(),
            });
        }
    }
    links
}

/// Answers Discover on `path` (`/O`, `/O/I` or `/O/I/R`) for one server. `depth` (1.2) limits how
/// many levels below the target are listed.
///
/// Attributes shown are those attached at each listed level; for a resource target the effective
/// (inherited) attributes of that resource are shown, as Core §5.4.2 describes.
pub fn discover(
    reg: &mut Registry,
    ctx: &mut Ctx<'_>,
    attrs: &AttributeStore,
    path: &Path,
    depth: Option<u8>,
    defaults: (Option<u32>, Option<u32>),
) -> Result<Vec<Link>, Error> {
    let oid = path
        .object_id()
        .ok_or_else(|| Error::not_allowed("Discover needs an object id"))?;
    if path.len() > 3 {
        return Err(Error::not_allowed("Discover on a resource instance"));
    }
    let object = reg.get_mut(oid).ok_or(Error::NotFound)?;
    let meta = object.meta();
    let max_len = path.len()
        + usize::from(depth.unwrap_or(match path.len() {
            1 | 2 => 2,
            _ => 1,
        }))
        .min(4);
    let mut links = Vec::new();
    let attached = |p: &Path| attrs.attached(p).link_params();
    if path.len() == 1 {
        let mut params = Vec::new();
        if meta.version != Version(1, 0) {
            params.push((
                "ver".to_string(),
                Some(AttrValue::Token(meta.version.to_string())),
            ));
        }
        params.extend(attached(path));
        links.push(Link {
            target: path.to_string(),
            attrs: params,
        });
    }
    let instances = match path.instance_id() {
        Some(iid) if object.instances().contains(&iid) => vec![iid],
        Some(_) => return Err(Error::NotFound),
        None => object.instances(),
    };
    for iid in instances {
        let ipath = Path::instance(oid, iid);
        if path.len() <= 2 && max_len >= 2 {
            links.push(Link {
                target: ipath.to_string(),
                attrs: attached(&ipath),
            });
        }
        if max_len < 3 {
            continue;
        }
        let resources = match path.resource_id() {
            Some(rid) if object.resources(iid).contains(&rid) && meta.resource(rid).is_some() => {
                vec![rid]
            }
            Some(_) => return Err(Error::NotFound),
            None => object.resources(iid),
        };
        for rid in resources {
            let Some(rmeta) = meta.resource(rid) else {
                continue;
            };
            let rpath = Path::resource(oid, iid, rid);
            let mut params = Vec::new();
            let instances = match (rmeta.multiple, object.read(ctx, iid, rid)) {
                (true, Ok(ResourceValue::Multiple(map))) => map.into_keys().collect(),
                _ => Vec::new(),
            };
            if rmeta.multiple {
                params.push((
                    "dim".to_string(),
                    Some(AttrValue::Token(instances.len().to_string())),
                ));
            }
            if path.len() == 3 {
                params.extend(
                    attrs
                        .effective(&rpath, defaults.0, defaults.1)
                        .link_params(),
                );
            } else {
                params.extend(attached(&rpath));
            }
            links.push(Link {
                target: rpath.to_string(),
                attrs: params,
            });
            if max_len >= 4 {
                for ri in instances {
                    let ripath = Path::resource_instance(oid, iid, rid, ri);
                    links.push(Link {
                        target: ripath.to_string(),
                        attrs: attached(&ripath),
                    });
                }
            }
        }
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::lwm2m::attributes::Attributes;
    use crate::core::lwm2m::content::link;
    use crate::core::lwm2m::tree::tests::MemObject;
    use crate::core::lwm2m::value::Value;
    use crate::core::object::CtxOutput;

    fn registry() -> Registry {
        let mut reg = Registry::new();
        reg.insert(Box::new(MemObject::new(0).with(
            0,
            0,
            ResourceValue::Single(Value::String("coap://x".into())),
        )));
        reg.insert(Box::new(MemObject::new(1).with(
            0,
            0,
            ResourceValue::Single(Value::Integer(1)),
        )));
        let mut errors = BTreeMap::new();
        errors.insert(0, Value::Integer(0));
        errors.insert(1, Value::Integer(5));
        reg.insert(Box::new(
            MemObject::new(3)
                .with(0, 0, ResourceValue::Single(Value::String("Acme".into())))
                .with(0, 11, ResourceValue::Multiple(errors)),
        ));
        reg.insert(Box::new(MemObject::new(7)));
        reg
    }

    #[test]
    fn object_list_has_versions_and_no_security() {
        let text = link::write(&object_list(&registry(), Lwm2mVersion::V1_1));
        assert_eq!(
            text,
            r#"</>;ct="60 110 112 11542",</1>;ver=1.2,</1/0>,</3>;ver=1.2,</3/0>,</7>"#
        );
        let text = link::write(&object_list(&registry(), Lwm2mVersion::V1_0));
        assert!(text.starts_with("</1>;ver=1.2,"));
    }

    fn discover_on(
        reg: &mut Registry,
        attrs: &AttributeStore,
        path: &Path,
        depth: Option<u8>,
        defaults: (Option<u32>, Option<u32>),
    ) -> Result<Vec<Link>, Error> {
        let mut out = CtxOutput::default();
        let mut ctx = Ctx {
            now: crate::host::test_instant(),
            unix_time: 0,
            server: Some(1),
            out: &mut out,
        };
        discover(reg, &mut ctx, attrs, path, depth, defaults)
    }

    #[test]
    fn discover_lists_levels_with_dim_and_attributes() {
        let mut reg = registry();
        let mut attrs = AttributeStore::default();
        attrs.set(
            Path::object(3),
            Attributes {
                pmin: Some(10),
                ..Default::default()
            },
        );
        attrs.set(
            Path::resource(3, 0, 11),
            Attributes {
                pmax: Some(60),
                ..Default::default()
            },
        );
        let links =
            discover_on(&mut reg, &attrs, &Path::object(3), None, (None, None)).expect("discover");
        assert_eq!(
            link::write(&links),
            "</3>;ver=1.2;pmin=10,</3/0>,</3/0/0>,</3/0/11>;dim=2;pmax=60"
        );
        let links = discover_on(
            &mut reg,
            &attrs,
            &Path::resource(3, 0, 11),
            None,
            (Some(1), None),
        )
        .expect("resource");
        assert_eq!(
            link::write(&links),
            "</3/0/11>;dim=2;pmin=10;pmax=60,</3/0/11/0>,</3/0/11/1>"
        );
        let links = discover_on(&mut reg, &attrs, &Path::object(3), Some(0), (None, None))
            .expect("depth 0");
        assert_eq!(link::write(&links), "</3>;ver=1.2;pmin=10");
        assert_eq!(
            discover_on(&mut reg, &attrs, &Path::instance(3, 9), None, (None, None)),
            Err(Error::NotFound)
        );
        assert_eq!(
            discover_on(
                &mut reg,
                &attrs,
                &Path::resource(3, 0, 5),
                None,
                (None, None)
            ),
            Err(Error::NotFound)
        );
    }
}
