//! Times as callrec shows and reads them: RFC 3339 UTC with milliseconds out; RFC 3339, plain dates
//! and relative ages in.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// `2024-05-01T12:00:00.123Z`.
pub fn rfc3339_ms(ns: i64) -> String {
    let ms = ns.div_euclid(1_000_000) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(ms as i128) {
        Ok(t) => {
            let t = t.to_offset(UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        }
        Err(_) => "invalid-time".into(),
    }
}

/// Nanosecond precision, for audit records.
pub fn rfc3339_ns(ns: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "invalid-time".into())
}

/// Parses an instant: RFC 3339 (`2024-05-01T12:00:00Z`, offsets allowed), a date (`2024-05-01`,
/// midnight UTC), `now`, or `@SECONDS` since the epoch. Returns (start, end) of what was named: a
/// date names a whole day, an instant a single nanosecond.
pub fn parse_instant(s: &str) -> Option<(i64, i64)> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        let n = now_ns();
        return Some((n, n + 1));
    }
    if let Some(secs) = s.strip_prefix('@') {
        let v: i64 = secs.parse().ok()?;
        return Some((v * 1_000_000_000, v * 1_000_000_000 + 1));
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        let n = t.unix_timestamp_nanos() as i64;
        return Some((n, n + 1));
    }
    // Space instead of T, no zone: taken as UTC.
    let with_t = s.replacen(' ', "T", 1);
    for candidate in [format!("{with_t}Z"), format!("{with_t}:00Z")] {
        if let Ok(t) = OffsetDateTime::parse(&candidate, &Rfc3339) {
            let n = t.unix_timestamp_nanos() as i64;
            return Some((n, n + 1));
        }
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s, &fmt).ok()?;
    let start = d.midnight().assume_utc().unix_timestamp_nanos() as i64;
    Some((start, start + 86_400_000_000_000))
}

/// `30` (seconds), `30s`, `1500ms`, `2m`, `1h`, `7d`, `2w` → nanoseconds.
pub fn parse_span(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" | "sec" => 1e9,
        "ms" => 1e6,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        "d" => 86400e9,
        "w" => 7.0 * 86400e9,
        _ => return None,
    };
    Some((v * mult) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(rfc3339_ms(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123Z");
        let (a, b) = parse_instant("2023-11-14").unwrap();
        assert_eq!(b - a, 86_400_000_000_000);
        assert_eq!(parse_instant("2023-11-14T22:13:20Z").unwrap().0, 1_700_000_000_000_000_000);
        assert_eq!(parse_instant("2023-11-14 22:13").unwrap().0, 1_699_999_980_000_000_000);
        assert!(parse_instant("yesterday-ish").is_none());
        assert_eq!(parse_span("1500ms"), Some(1_500_000_000));
        assert_eq!(parse_span("7d"), Some(7 * 86_400_000_000_000));
        assert_eq!(parse_span("x"), None);
    }
}
