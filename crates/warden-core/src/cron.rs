//! When a schedule fires: a cron expression (seconds optional, `@hourly`-style forms)
//! read on the wall clock of an IANA time zone, as instants in milliseconds.
//!
//! The daylight-saving rule, the one cron users expect (croner's, after the Open Cron
//! Pattern Specification):
//! - a time that falls in a gap (clocks spring forward past it) fires once, at the first
//!   instant after the gap, for an expression naming a fixed time (`30 2 * * *`);
//!   expressions that fire on intervals (`*/15 * * * *`, every second) simply have no
//!   fire times inside the gap;
//! - a time that happens twice (clocks fall back) fires once, at its first occurrence,
//!   for a fixed-time expression; interval expressions keep firing through both halves,
//!   so "every 15 minutes" stays every 15 minutes of real time.
//!
//! Pure functions of the expression, the zone and the instant asked about: the
//! scheduler's clock is an argument, so tests drive it through a DST change in no time.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule timing.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    pattern: String,
    zone: Tz,
}

impl Timing {
    /// Parse `pattern` (5 fields, or 6 with seconds first; `@yearly`, `@monthly`,
    /// `@weekly`, `@daily`, `@hourly`) in the IANA zone `zone`.
    pub fn parse(pattern: &str, zone: &str) -> Result<Timing, String> {
        let zone = Tz::from_str(zone).map_err(|_| {
            format!(
                "unknown time zone {zone:?} (use an IANA name such as \"Europe/Berlin\" or \"UTC\")"
            )
        })?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| format!("invalid cron expression {pattern:?}: {e}"))?;
        // An expression that never matches (`0 0 30 2 *`) is an error now, not a
        // schedule that silently never runs.
        let probe = Utc.timestamp_millis_opt(0).single().unwrap_or_default();
        if cron
            .find_next_occurrence(&probe.with_timezone(&zone), false)
            .is_err()
        {
            return Err(format!("cron expression {pattern:?} never fires"));
        }
        Ok(Timing {
            cron,
            pattern: pattern.to_string(),
            zone,
        })
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn zone(&self) -> &str {
        self.zone.name()
    }

    fn at(&self, ms: i64) -> Option<DateTime<Tz>> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.with_timezone(&self.zone))
    }

    /// The first fire time strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let t = self.at(after_ms)?;
        self.cron
            .find_next_occurrence(&t, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The last fire time at or before `at_ms`.
    pub fn last_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let t = self.at(at_ms)?;
        self.cron
            .find_previous_occurrence(&t, true)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The next `n` fire times after `after_ms`.
    pub fn upcoming(&self, after_ms: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut t = after_ms;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// `ms` on this schedule's wall clock, RFC 3339 with its offset.
    pub fn local(&self, ms: i64) -> String {
        self.at(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
            .unwrap_or_default()
    }
}

impl fmt::Display for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.pattern, self.zone.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn seconds_are_optional_and_nicknames_work() {
        let every_second = Timing::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(every_second.next_after(1_000), Some(2_000));
        let hourly = Timing::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            hourly.next_after(ms("2026-01-01T10:20:00Z")),
            Some(ms("2026-01-01T11:00:00Z"))
        );
        let weekdays = Timing::parse("0 9 * * MON-FRI", "UTC").unwrap();
        // 2026-01-02 is a Friday; the next is Monday the 5th.
        assert_eq!(
            weekdays.next_after(ms("2026-01-02T09:00:00Z")),
            Some(ms("2026-01-05T09:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        assert!(
            Timing::parse("61 * * * *", "UTC")
                .unwrap_err()
                .contains("invalid cron")
        );
        assert!(Timing::parse("* * *", "UTC").is_err());
        assert!(
            Timing::parse("0 0 30 2 *", "UTC")
                .unwrap_err()
                .contains("never fires")
        );
        assert!(
            Timing::parse("@daily", "Mars/Olympus")
                .unwrap_err()
                .contains("unknown time zone")
        );
    }

    #[test]
    fn a_fixed_time_in_the_spring_gap_runs_once_right_after_it() {
        // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        let t = Timing::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let before = ms("2026-03-28T12:00:00+01:00");
        let fires = t.upcoming(before, 3);
        assert_eq!(
            fires,
            [
                ms("2026-03-29T03:00:00+02:00"),
                ms("2026-03-30T02:30:00+02:00"),
                ms("2026-03-31T02:30:00+02:00"),
            ]
        );
    }

    #[test]
    fn a_fixed_time_in_the_autumn_overlap_runs_once() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        let t = Timing::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let fires = t.upcoming(ms("2026-10-24T12:00:00+02:00"), 2);
        assert_eq!(
            fires,
            [
                ms("2026-10-25T02:30:00+02:00"),
                ms("2026-10-26T02:30:00+01:00"),
            ]
        );
    }

    #[test]
    fn an_interval_keeps_real_time_through_both_changes() {
        let t = Timing::parse("*/30 * * * *", "Europe/Berlin").unwrap();
        // Spring: 01:30 CET, then 03:00 CEST (30 real minutes later).
        let spring = t.upcoming(ms("2026-03-29T01:00:00+01:00"), 2);
        assert_eq!(spring[1] - spring[0], 30 * 60 * 1000);
        // Autumn: through the repeated hour, every 30 real minutes, none twice.
        let autumn = t.upcoming(ms("2026-10-25T01:45:00+02:00"), 6);
        for pair in autumn.windows(2) {
            assert_eq!(pair[1] - pair[0], 30 * 60 * 1000, "{autumn:?}");
        }
    }

    #[test]
    fn the_last_fire_time_is_found_for_catch_up() {
        let t = Timing::parse("0 * * * *", "UTC").unwrap();
        assert_eq!(
            t.last_at_or_before(ms("2026-01-01T10:59:59Z")),
            Some(ms("2026-01-01T10:00:00Z"))
        );
        assert_eq!(
            t.last_at_or_before(ms("2026-01-01T10:00:00Z")),
            Some(ms("2026-01-01T10:00:00Z"))
        );
        assert_eq!(
            t.local(ms("2026-07-01T10:00:00Z")),
            "2026-07-01T10:00:00+00:00"
        );
    }
}
