//! Timestamps as both binaries write them: RFC 3339 in UTC, to the precision the reader needs.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

fn whole_seconds(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `2026-11-30T05:21:53Z`: for people (reports, lock holders, runs shown as text).
pub fn seconds(t: OffsetDateTime) -> String {
    format!("{}Z", whole_seconds(t.to_offset(UtcOffset::UTC)))
}

/// `2026-11-30T05:21:53.250Z`, always three digits, so the lines of a report align.
pub fn millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!("{}.{:03}Z", whole_seconds(t), t.millisecond())
}

/// `2026-11-30 05:21 UTC`: for people reading a notice, a page or a banner.
pub fn minutes_utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// `20261130T052153Z`: ISO 8601's basic form, as iCalendar writes a UTC date-time.
pub fn basic(t: OffsetDateTime) -> String {
    whole_seconds(t.to_offset(UtcOffset::UTC)).replace(['-', ':'], "") + "Z"
}

/// Every digit the clock gave: for machine records (`/status`, the gate document).
pub fn full(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .expect("RFC 3339 formats every UTC timestamp of years 0-9999")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: i64, nanos: i128, offset_hours: i8) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix) * 1_000_000_000 + nanos)
            .unwrap()
            .to_offset(UtcOffset::from_hms(offset_hours, 0, 0).unwrap())
    }

    #[test]
    fn each_precision_in_utc() {
        let t = at(1796016113, 250_400_000, 1);
        assert_eq!(seconds(t), "2026-11-30T05:21:53Z");
        assert_eq!(millis(t), "2026-11-30T05:21:53.250Z");
        assert_eq!(full(t), "2026-11-30T05:21:53.2504Z");
        assert_eq!(millis(at(1767323045, 0, 0)), "2026-01-02T03:04:05.000Z");
        assert_eq!(basic(t), "20261130T052153Z");
        assert_eq!(minutes_utc(t), "2026-11-30 05:21 UTC");
    }
}
