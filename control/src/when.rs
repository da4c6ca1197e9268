//! Times as operators write and read them: RFC 3339 (`2026-12-02T19:00:00Z`), or a local time
//! with its IANA zone (`2026-12-02 19:00 Europe/Berlin`); shown in UTC and in the operator's own
//! zone (`TZ`, else the system's).

use jiff::civil::DateTime;
use jiff::tz::{Disambiguation, TimeZone};
use jiff::Timestamp;
use time::OffsetDateTime;

/// Reads a time written as RFC 3339 or as a local date and time followed by an IANA zone.
///
/// # Errors
/// Anything else, a zone the time zone database does not know, or a local time that the zone
/// skips or passes twice (a daylight-saving change), each said with what to write instead.
pub fn parse(raw: &str) -> Result<OffsetDateTime, String> {
    let raw = raw.trim();
    if let Ok(t) = OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let hint = "write it as RFC 3339 (2026-12-02T19:00:00Z) or as a local time with its zone (2026-12-02 19:00 Europe/Berlin)";
    let Some((local, zone)) = raw
        .rsplit_once(' ')
        .filter(|(_, zone)| !zone.starts_with(|c: char| c.is_ascii_digit()))
    else {
        return Err(format!(
            "{raw:?} is neither RFC 3339 (with seconds) nor a local time followed by its zone: {hint}"
        ));
    };
    let local: DateTime = local
        .trim()
        .replacen(' ', "T", 1)
        .parse()
        .map_err(|e| format!("{raw:?}: {local:?} is not a date and time ({e}): {hint}"))?;
    let tz = TimeZone::get(zone).map_err(|_| {
        format!("{raw:?}: {zone:?} is not a time zone the system knows (e.g. Europe/Berlin, UTC): {hint}")
    })?;
    let zoned = tz
        .to_ambiguous_zoned(local)
        .disambiguate(Disambiguation::Reject)
        .map_err(|_| {
            format!("{raw:?}: {zone} skips or repeats that hour (a daylight-saving change): write it as RFC 3339")
        })?;
    OffsetDateTime::from_unix_timestamp_nanos(zoned.timestamp().as_nanosecond())
        .map_err(|e| format!("{raw:?}: {e}"))
}

/// `2026-12-02 19:00 UTC (20:00 CET)`: the time in UTC, then in `zone` when that is not UTC.
pub fn show_in(t: OffsetDateTime, zone: &TimeZone) -> String {
    let Ok(ts) = Timestamp::from_nanosecond(t.unix_timestamp_nanos()) else {
        return t.to_string();
    };
    let utc = ts.to_zoned(TimeZone::UTC).strftime("%Y-%m-%d %H:%M UTC");
    let local = ts.to_zoned(zone.clone());
    if local.offset() == jiff::tz::Offset::UTC && local.strftime("%Z").to_string() == "UTC" {
        return utc.to_string();
    }
    let same_day = local.date() == ts.to_zoned(TimeZone::UTC).date();
    let local = if same_day {
        local.strftime("%H:%M %Z")
    } else {
        local.strftime("%Y-%m-%d %H:%M %Z")
    };
    format!("{utc} ({local})")
}

/// [`show_in`] the operator's zone: `TZ`, else the system's, else UTC.
pub fn show(t: OffsetDateTime) -> String {
    show_in(t, &TimeZone::try_system().unwrap_or(TimeZone::UTC))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc(raw: &str) -> OffsetDateTime {
        OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn rfc3339_and_local_times_with_a_zone_are_read() {
        assert_eq!(
            parse("2026-12-02T19:00:00Z").unwrap(),
            rfc("2026-12-02T19:00:00Z")
        );
        assert_eq!(
            parse("2026-12-02 20:00 Europe/Berlin").unwrap(),
            rfc("2026-12-02T19:00:00Z")
        );
        assert_eq!(
            parse("2026-07-01 21:30:15 Europe/Berlin").unwrap(),
            rfc("2026-07-01T19:30:15Z")
        );
    }

    #[test]
    fn what_cannot_be_read_one_way_is_refused_saying_how_to_write_it() {
        assert!(parse("2026-12-02 19:00").unwrap_err().contains("RFC 3339"));
        assert!(parse("tomorrow").unwrap_err().contains("neither RFC 3339"));
        assert!(parse("2026-12-02T19:00Z")
            .unwrap_err()
            .contains("neither RFC 3339 (with seconds)"));
        assert!(parse("2026-12-02 19:00 Mars/Olympus")
            .unwrap_err()
            .contains("not a time zone"));
        // 02:30 does not exist in Berlin on 2026-03-29, and exists twice on 2026-10-25.
        assert!(parse("2026-03-29 02:30 Europe/Berlin")
            .unwrap_err()
            .contains("daylight-saving"));
        assert!(parse("2026-10-25 02:30 Europe/Berlin")
            .unwrap_err()
            .contains("daylight-saving"));
    }

    #[test]
    fn times_are_shown_in_utc_and_in_the_operators_zone() {
        let t = rfc("2026-12-02T19:00:00Z");
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(show_in(t, &berlin), "2026-12-02 19:00 UTC (20:00 CET)");
        let late = rfc("2026-12-02T23:30:00Z");
        assert_eq!(
            show_in(late, &berlin),
            "2026-12-02 23:30 UTC (2026-12-03 00:30 CET)"
        );
        assert_eq!(show_in(t, &TimeZone::UTC), "2026-12-02 19:00 UTC");
        let etc_utc = TimeZone::get("Etc/UTC").unwrap();
        assert_eq!(show_in(t, &etc_utc), "2026-12-02 19:00 UTC");
    }
}
