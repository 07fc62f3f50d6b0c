//! Generates the LwM2M object model (`$OUT_DIR/oma_model.rs`) from the OMA registry XML files in
//! `src/model/oma/`, so resource ids, types, multiplicity and operations come from the standard and
//! not from hand-typed tables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quick_xml::Reader;
use quick_xml::events::Event;

#[derive(Default, Debug)]
struct Resource {
    id: u16,
    name: String,
    operations: String,
    multiple: bool,
    mandatory: bool,
    kind: String,
    range: String,
    units: String,
    description: String,
}

#[derive(Default, Debug)]
struct Object {
    id: u16,
    name: String,
    urn: String,
    object_version: String,
    lwm2m_version: String,
    multiple: bool,
    mandatory: bool,
    resources: Vec<Resource>,
}

fn main() {
    let dir = Path::new("src/model/oma");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("src/model/oma exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let text = std::fs::read_to_string(file).expect("readable XML");
        let object = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        objects.push(object);
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    std::fs::write(out.join("oma_model.rs"), render(&objects)).expect("write generated model");
}

fn parse(text: &str) -> Result<Object, String> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut object = Object::default();
    let mut stack: Vec<String> = Vec::new();
    let mut current: Option<Resource> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                let name = e.name().as_ref().to_string();
                if name == "Item" {
                    let mut res = Resource::default();
                    for attr in e.attributes() {
                        let attr = attr.map_err(|e| e.to_string())?;
                        if attr.key.as_ref() == "ID" {
                            let v = attr.value.to_string();
                            res.id = v.trim().parse().map_err(|_| format!("bad Item ID {v}"))?;
                        }
                    }
                    current = Some(res);
                }
                stack.push(name);
            }
            Event::End(_) => {
                if stack.pop().as_deref() == Some("Item")
                    && let Some(res) = current.take()
                {
                    object.resources.push(res);
                }
            }
            Event::Text(t) => {
                let value = t.trim().to_string();
                assign(&mut object, current.as_mut(), &stack, value);
            }
            Event::CData(t) => {
                let value = t.trim().to_string();
                assign(&mut object, current.as_mut(), &stack, value);
            }
            Event::GeneralRef(r) => {
                return Err(format!("entity reference &{}; is not supported", &*r));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if object.urn.is_empty() {
        return Err("no ObjectURN".into());
    }
    object.resources.sort_by_key(|r| r.id);
    Ok(object)
}

fn assign(object: &mut Object, res: Option<&mut Resource>, stack: &[String], value: String) {
    let Some(tag) = stack.last().map(String::as_str) else {
        return;
    };
    if let Some(res) = res {
        match tag {
            "Name" => res.name = value,
            "Operations" => res.operations = value,
            "MultipleInstances" => res.multiple = value == "Multiple",
            "Mandatory" => res.mandatory = value == "Mandatory",
            "Type" => res.kind = value,
            "RangeEnumeration" => res.range = value,
            "Units" => res.units = value,
            "Description" => res.description = value,
            _ => {}
        }
        return;
    }
    // Object-level elements sit directly below <Object>.
    if stack.len() >= 2 && stack[stack.len() - 2] == "Object" {
        match tag {
            "Name" => object.name = value,
            "ObjectID" => object.id = value.parse().unwrap_or(u16::MAX),
            "ObjectURN" => object.urn = value,
            "LWM2MVersion" => object.lwm2m_version = value,
            "ObjectVersion" => object.object_version = value,
            "MultipleInstances" => object.multiple = value == "Multiple",
            "Mandatory" => object.mandatory = value == "Mandatory",
            _ => {}
        }
    }
}

fn kind(kind: &str, operations: &str) -> &'static str {
    match kind {
        "String" => "ResourceType::String",
        "Integer" => "ResourceType::Integer",
        "Unsigned Integer" => "ResourceType::Unsigned",
        "Float" => "ResourceType::Float",
        "Boolean" => "ResourceType::Boolean",
        "Opaque" => "ResourceType::Opaque",
        "Time" => "ResourceType::Time",
        "Objlnk" => "ResourceType::Objlnk",
        "Corelnk" => "ResourceType::Corelnk",
        "" if operations == "E" => "ResourceType::None",
        // A few definitions leave Type empty for non-executable resources; treat them as opaque.
        "" => "ResourceType::Opaque",
        other => panic!("unknown resource type {other:?}"),
    }
}

/// Turns a RangeEnumeration text into a `Range` constructor (only the forms that appear in the
/// registry and that can be checked mechanically; anything else is unchecked).
fn range(kind: &str, text: &str) -> String {
    let text = text.trim();
    let numeric = matches!(kind, "Integer" | "Unsigned Integer");
    let sized = matches!(kind, "String" | "Opaque");
    let bytes = text.trim_end_matches("bytes").trim();
    if let Some((lo, hi)) = bytes.split_once("..")
        && let (Ok(lo), Ok(hi)) = (lo.trim().parse::<i64>(), hi.trim().parse::<i64>())
    {
        if numeric {
            return format!("Range::Int {{ min: {lo}, max: {hi} }}");
        }
        if sized {
            return format!("Range::Len {{ min: {lo}, max: {hi} }}");
        }
    }
    if sized {
        let sizes: Vec<u32> = bytes
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if !sizes.is_empty() && sizes.len() == bytes.split(',').count() {
            return format!("Range::Lengths(&{sizes:?})");
        }
    }
    "Range::Any".to_string()
}

fn ops(operations: &str) -> String {
    let r = operations.contains('R');
    let w = operations.contains('W');
    let e = operations.contains('E');
    format!("Operations {{ read: {r}, write: {w}, execute: {e} }}")
}

fn version(text: &str) -> (u8, u8) {
    let text = if text.is_empty() { "1.0" } else { text };
    let (major, minor) = text.split_once('.').unwrap_or((text, "0"));
    (major.parse().unwrap_or(1), minor.parse().unwrap_or(0))
}

fn render(objects: &[Object]) -> String {
    let mut out =
        String::from("// Generated by build.rs from src/model/oma/*.xml. Do not edit.\n\n");
    out.push_str(
        "/// Every object definition shipped in `src/model/oma/`, sorted by id then version.\n",
    );
    out.push_str("pub static OBJECTS: &[ObjectMeta] = &[\n");
    let mut sorted: Vec<&Object> = objects.iter().collect();
    sorted.sort_by_key(|o| (o.id, version(&o.object_version)));
    for o in sorted {
        let (vmaj, vmin) = version(&o.object_version);
        let (lmaj, lmin) = version(&o.lwm2m_version);
        let _ = writeln!(
            out,
            "    ObjectMeta {{ id: {}, name: {:?}, urn: {:?}, version: Version({vmaj}, {vmin}), lwm2m_version: Version({lmaj}, {lmin}), multiple: {}, mandatory: {}, resources: &[",
            o.id, o.name, o.urn, o.multiple, o.mandatory
        );
        for r in &o.resources {
            let _ = writeln!(
                out,
                "        ResourceMeta {{ id: {}, name: {:?}, operations: {}, multiple: {}, mandatory: {}, kind: {}, range: {}, units: {:?} }},",
                r.id,
                r.name,
                ops(&r.operations),
                r.multiple,
                r.mandatory,
                kind(&r.kind, &r.operations),
                range(&r.kind, &r.range),
                r.units
            );
            // Descriptions are not compiled in: they would cost binary size for no runtime use.
            let _ = &r.description;
        }
        out.push_str("    ] },\n");
    }
    out.push_str("];\n");
    out
}
