//! Dates as mail headers and logs write them, computed by the `time` crate.
//!
//! Entry points: [`rfc5322`] for `Date:` and `Received:` fields
//! ("Tue, 01 Dec 2026 06:05:39 +0000", RFC 5322 section 3.3) and
//! [`rfc3339_ms`] for the tracking log ("2026-12-01T06:05:39.123Z"). Both are
//! in UTC. Neither fails nor panics: an instant before 1970 prints as the
//! epoch, and one after the end of the year 9999 (the last that `time`
//! represents, and the last a four-digit year can name) as that last second.

use std::time::{SystemTime, UNIX_EPOCH};
use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// 9999-12-31T23:59:59Z in seconds since the epoch.
const LAST_SECOND: u64 = 253_402_300_799;

/// The epoch in RFC 5322 form, should formatting ever fail.
const EPOCH_RFC5322: &str = "Thu, 01 Jan 1970 00:00:00 +0000";

/// The UTC date and time `secs` seconds after the epoch, clamped to the
/// last second of the year 9999.
fn utc(secs: u64) -> OffsetDateTime {
    i64::try_from(secs.min(LAST_SECOND))
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `t` as an RFC 5322 date-time in UTC, to the second:
/// "Tue, 01 Dec 2026 06:05:39 +0000".
pub fn rfc5322(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    utc(secs)
        .format(&Rfc2822)
        .unwrap_or_else(|_| EPOCH_RFC5322.to_string())
}

/// Milliseconds since the epoch as RFC 3339 in UTC with milliseconds:
/// "2026-12-01T06:05:39.123Z".
pub fn rfc3339_ms(ms_since_epoch: u64) -> String {
    let secs = ms_since_epoch / 1000;
    let t = utc(secs);
    let ms = if secs > LAST_SECOND {
        999
    } else {
        ms_since_epoch % 1000
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rfc5322_at_fixed_instants() {
        assert_eq!(rfc5322(at(0)), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322(at(1_796_105_139)),
            "Tue, 01 Dec 2026 06:05:39 +0000"
        );
        assert_eq!(rfc5322(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 +0000");
        // Subseconds are dropped, not rounded.
        assert_eq!(
            rfc5322(at(1_795_693_026) + Duration::from_millis(999)),
            "Thu, 26 Nov 2026 11:37:06 +0000"
        );
        // Out of range: clamped, never a panic.
        assert_eq!(rfc5322(UNIX_EPOCH - Duration::from_secs(1)), EPOCH_RFC5322);
        assert_eq!(
            rfc5322(at(LAST_SECOND + 86_400)),
            "Fri, 31 Dec 9999 23:59:59 +0000"
        );
    }

    #[test]
    fn rfc3339_ms_at_fixed_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_795_693_026_000), "2026-11-26T11:37:06.000Z");
        assert_eq!(rfc3339_ms(1_796_105_139_123), "2026-12-01T06:05:39.123Z");
        assert_eq!(rfc3339_ms(1_796_105_139_007), "2026-12-01T06:05:39.007Z");
        assert_eq!(rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
