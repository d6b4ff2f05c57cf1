//! Timestamps as the Kubernetes API writes them (RFC 3339, UTC), without a date library.

use std::time::{SystemTime, UNIX_EPOCH};

/// (year, month, day, seconds into the day) of `secs` since the epoch (Howard Hinnant's
/// civil-from-days).
fn civil(secs: u64) -> (i64, i64, i64, u64) {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d, rem)
}

/// `2026-11-22T12:34:56Z` for `secs` since the epoch.
pub fn rfc3339_secs(secs: u64) -> String {
    let (y, m, d, rem) = civil(secs);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `2026-11-22T12:34:56Z` (whole seconds; before the epoch: the epoch).
pub fn rfc3339(t: SystemTime) -> String {
    rfc3339_secs(
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// The API's MicroTime: `2026-11-22T12:34:56.000123Z`.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, m, day, rem) = civil(d.as_secs());
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_secs(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_secs(1_795_357_296), "2026-11-22T14:21:36Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_357_296_000_123);
        assert_eq!(rfc3339_micros(t), "2026-11-22T14:21:36.000123Z");
        assert_eq!(rfc3339(t), "2026-11-22T14:21:36Z");
    }
}
