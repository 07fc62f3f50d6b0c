//! The host's local time zone for /3/0/14 (UTC Offset) and /3/0/15 (Timezone).
//!
//! chrono's `Local` follows `TZ` and `/etc/localtime` like libc does (and falls back to UTC, as
//! libc does, when neither exists), without libc calls or `unsafe`.

use chrono::{Local, Offset, TimeZone};

use crate::objects::device::is_plausible_timezone;

/// The local UTC offset in seconds at `unix_time`.
pub fn utc_offset_at(unix_time: i64) -> Option<i32> {
    // UTC → local is never ambiguous; `single()` only fails for times chrono cannot represent.
    Local
        .timestamp_opt(unix_time, 0)
        .single()
        .map(|t| t.offset().fix().local_minus_utc())
}

/// The IANA name of the local zone (`Europe/Berlin`), when the host configures one by name.
pub fn zone_name() -> Option<String> {
    iana_time_zone::get_timezone()
        .ok()
        .filter(|name| is_plausible_timezone(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_zone_is_sane() {
        // Whatever zone this machine is in, the offset is one that exists on Earth.
        let offset = utc_offset_at(1_700_000_000).expect("representable time");
        assert!((-12 * 3600..=14 * 3600).contains(&offset), "{offset}");
        assert_eq!(utc_offset_at(i64::MAX), None);
        if let Some(name) = zone_name() {
            assert!(is_plausible_timezone(&name), "{name}");
        }
    }
}
