//! The host side of the Device object: memory, power, connectivity and time zone.

use std::path::PathBuf;

use super::net::HostNet;
use super::{meminfo, power_supply, timezone};
use crate::objects::connectivity::{NetProbe, has_ip_connectivity};
use crate::objects::device::{DeviceProbe, Memory, PowerInfo};

/// The real [`DeviceProbe`].
#[derive(Debug, Clone)]
pub struct HostDevice {
    root: PathBuf,
    net: HostNet,
}

impl HostDevice {
    /// A probe reading `/proc` and `/sys` below `root` (`/` in production); `net` supplies the
    /// interface and route state behind error code 7 (IP connectivity failure). The time zone
    /// always comes from the running host (`TZ`, `/etc/localtime`).
    pub fn new(root: impl Into<PathBuf>, net: HostNet) -> Self {
        Self {
            root: root.into(),
            net,
        }
    }
}

impl DeviceProbe for HostDevice {
    fn memory(&self) -> Memory {
        meminfo::read(&self.root)
    }

    fn power(&self) -> PowerInfo {
        power_supply::read(&self.root)
    }

    fn ip_connectivity(&self) -> Option<bool> {
        has_ip_connectivity(&self.net.snapshot())
    }

    fn utc_offset(&self, unix_time: i64) -> Option<i32> {
        timezone::utc_offset_at(unix_time)
    }

    fn timezone(&self) -> Option<String> {
        timezone::zone_name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lwm2m::value::{ResourceValue, Value};
    use crate::core::object::{Ctx, CtxOutput, Object};
    use crate::objects::device::{Device, DeviceInfo};

    /// Runs the real probes on this machine through the Device object.
    #[test]
    fn real_host_is_sane() {
        let probe = HostDevice::new("/", HostNet::new("/", None));
        let memory = probe.memory();
        let total = memory
            .total_bytes
            .expect("/proc/meminfo has MemTotal on Linux");
        assert!(total > 0);
        if let Some(available) = memory.available_bytes {
            assert!(available <= total, "{available} > {total}");
        }
        let info = super::super::device_info(std::path::Path::new("/"));
        let mut device = Device::new(info, Box::new(probe));
        let resources = device.resources(0);
        assert!(
            resources.contains(&21) && resources.contains(&14),
            "{resources:?}"
        );
        let mut out = CtxOutput::default();
        let mut ctx = Ctx {
            now: crate::host::test_instant(),
            unix_time: 1_700_000_000,
            server: None,
            out: &mut out,
        };
        for id in resources {
            let readable = device
                .meta()
                .resource(id)
                .is_some_and(|r| r.operations.read);
            if !readable {
                continue;
            }
            let value = device.read(&mut ctx, 0, id);
            assert!(value.is_ok(), "/3/0/{id}: {value:?}");
            if id == 21
                && let Ok(ResourceValue::Single(Value::Integer(kb))) = value
            {
                assert!(kb > 0);
            }
        }
    }

    #[test]
    fn empty_root_gives_absent_host_data() {
        let root = tempfile::tempdir().expect("temp dir");
        let probe = HostDevice::new(root.path(), HostNet::new(root.path(), None));
        assert_eq!(probe.memory(), Memory::default());
        assert_eq!(probe.power(), PowerInfo::default());
        assert_eq!(
            probe.ip_connectivity(),
            None,
            "no route tables: cannot tell"
        );
        let device = Device::new(DeviceInfo::default(), Box::new(probe));
        let resources = device.resources(0);
        for absent in [6, 7, 8, 9, 10, 20, 21] {
            assert!(!resources.contains(&absent), "/3/0/{absent}");
        }
    }
}
