//! The LwM2M object model (resource ids, types, multiplicity, operations), generated at build time
//! from the OMA registry definitions in `src/model/oma/` (see `build.rs`).

use std::fmt;

/// The data type of a resource (LwM2M Core, Appendix C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// UTF-8 string.
    String,
    /// Signed integer (up to 64 bits).
    Integer,
    /// Unsigned integer (up to 64 bits).
    Unsigned,
    /// IEEE-754 float (32 or 64 bits).
    Float,
    /// Boolean.
    Boolean,
    /// Raw bytes.
    Opaque,
    /// Signed Unix time in seconds.
    Time,
    /// Object link `oid:iid`.
    Objlnk,
    /// CoRE link-format string.
    Corelnk,
    /// Executable resources carry no value.
    None,
}

/// Which LwM2M operations a resource allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operations {
    /// Readable (R).
    pub read: bool,
    /// Writable (W).
    pub write: bool,
    /// Executable (E).
    pub execute: bool,
}

/// The value constraint from the definition's `RangeEnumeration`, where it is machine-checkable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No constraint we can check.
    Any,
    /// Inclusive numeric range for Integer / Unsigned Integer resources.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// Inclusive length range in bytes for String / Opaque resources.
    Len {
        /// Shortest allowed length.
        min: i64,
        /// Longest allowed length.
        max: i64,
    },
    /// Exact allowed lengths in bytes (e.g. SMS keys of 16, 32 or 48 bytes).
    Lengths(&'static [u32]),
}

/// An object version such as 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u8, pub u8);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// One resource definition.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceMeta {
    /// Resource id.
    pub id: u16,
    /// Name as in the XML.
    pub name: &'static str,
    /// Allowed operations.
    pub operations: Operations,
    /// Multi-instance resource.
    pub multiple: bool,
    /// Mandatory in every instance.
    pub mandatory: bool,
    /// Data type.
    pub kind: ResourceType,
    /// Value constraint.
    pub range: Range,
    /// Units text from the XML (may be empty).
    pub units: &'static str,
}

/// One object definition.
#[derive(Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Object id.
    pub id: u16,
    /// Name as in the XML.
    pub name: &'static str,
    /// Object URN, e.g. `urn:oma:lwm2m:oma:3:1.2`.
    pub urn: &'static str,
    /// Object version.
    pub version: Version,
    /// LwM2M enabler version the definition declares.
    pub lwm2m_version: Version,
    /// Multi-instance object.
    pub multiple: bool,
    /// Mandatory object.
    pub mandatory: bool,
    /// Resource definitions sorted by id.
    pub resources: &'static [ResourceMeta],
}

impl ObjectMeta {
    /// The definition of resource `id`, if the object has one.
    pub fn resource(&self, id: u16) -> Option<&'static ResourceMeta> {
        let resources: &'static [ResourceMeta] = self.resources;
        resources
            .binary_search_by_key(&id, |r| r.id)
            .ok()
            .map(|i| &resources[i])
    }
}

include!(concat!(env!("OUT_DIR"), "/oma_model.rs"));

/// The newest shipped definition of object `id`.
pub fn object(id: u16) -> Option<&'static ObjectMeta> {
    OBJECTS.iter().rev().find(|o| o.id == id)
}

/// The definition of object `id` at exactly `version`.
pub fn object_version(id: u16, version: Version) -> Option<&'static ObjectMeta> {
    OBJECTS.iter().find(|o| o.id == id && o.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_object_matches_the_registry() {
        let device = object(3).expect("object 3 is shipped");
        assert_eq!(device.version, Version(1, 2));
        assert_eq!(device.urn, "urn:oma:lwm2m:oma:3:1.2");
        assert!(!device.multiple);
        let reboot = device.resource(4).expect("reboot");
        assert_eq!(reboot.kind, ResourceType::None);
        assert!(reboot.operations.execute && !reboot.operations.read);
        let errors = device.resource(11).expect("error code");
        assert!(errors.multiple && errors.mandatory);
        assert_eq!(errors.range, Range::Int { min: 0, max: 32 });
        let time = device.resource(13).expect("current time");
        assert_eq!(time.kind, ResourceType::Time);
        assert!(time.operations.read && time.operations.write);
        assert!(device.resource(23).is_none());
    }

    #[test]
    fn every_shipped_version_of_firmware_update_is_present() {
        for minor in 0..=2 {
            let fw = object_version(5, Version(1, minor)).expect("object 5 version");
            assert_eq!(fw.id, 5);
        }
        assert_eq!(object(5).map(|o| o.version), Some(Version(1, 2)));
        let fw10 = object_version(5, Version(1, 0)).expect("5 v1.0");
        assert!(fw10.resource(10).is_none(), "Cancel arrived in 1.1");
    }

    #[test]
    fn ranges_are_parsed_for_strings_and_numbers() {
        let server = object(1).expect("object 1");
        assert_eq!(
            server.resource(0).map(|r| r.range),
            Some(Range::Int { min: 1, max: 65534 })
        );
        let fw = object(5).expect("object 5");
        assert_eq!(
            fw.resource(1).map(|r| r.range),
            Some(Range::Len { min: 0, max: 255 })
        );
        let security = object(0).expect("object 0");
        assert_eq!(
            security.resource(8).map(|r| r.range),
            Some(Range::Lengths(&[16, 32, 48]))
        );
    }

    #[test]
    fn resources_are_sorted_and_unique() {
        for o in OBJECTS {
            assert!(
                o.resources.windows(2).all(|w| w[0].id < w[1].id),
                "object {}",
                o.id
            );
        }
    }

    /// The copies in `src/model/oma/` must stay byte-identical to the registry beside the repo.
    #[test]
    fn shipped_xml_matches_shared_registry() {
        let shared =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/lwm2m-registry");
        if !shared.is_dir() {
            return; // building from a source package without the shared tree
        }
        let ours = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model/oma");
        for entry in std::fs::read_dir(&ours).expect("model dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("file name");
            let theirs = shared.join(name);
            assert_eq!(
                std::fs::read(&path).expect("ours"),
                std::fs::read(&theirs).expect("shared copy"),
                "{} differs from ../shared",
                name.to_string_lossy()
            );
        }
    }
}
