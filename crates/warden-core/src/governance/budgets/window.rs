//! The counts one limit keeps for one key: a token bucket (rates), a calendar or
//! rolling window (quotas), calls in flight (concurrency). Pure arithmetic on a clock
//! passed in, so tests drive it through midnights and month ends without waiting.

use std::collections::VecDeque;

use chrono::{Datelike, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::config::Per;

/// Slices of a rolling window.
const ROLLING_SLICES: i64 = 60;

/// A token bucket: `burst` tokens, refilled at `rate` per `per`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    pub fn full(burst: f64, now_ms: i64) -> Bucket {
        Bucket {
            tokens: burst,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: f64, per: Per, burst: f64, now_ms: i64) {
        let elapsed = (now_ms - self.at_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed * rate / per.ms() as f64).min(burst);
        self.at_ms = now_ms.max(self.at_ms);
    }

    /// Take one token, or say when one will be there.
    pub fn take(&mut self, rate: f64, per: Per, burst: f64, now_ms: i64) -> Result<(), i64> {
        self.refill(rate, per, burst, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - self.tokens) * per.ms() as f64 / rate).ceil() as i64;
            Err(now_ms + wait.max(1))
        }
    }

    /// Give back a token taken for a call that did not run.
    pub fn give_back(&mut self, burst: f64) {
        self.tokens = (self.tokens + 1.0).min(burst);
    }

    /// Tokens available now.
    pub fn available(&mut self, rate: f64, per: Per, burst: f64, now_ms: i64) -> f64 {
        self.refill(rate, per, burst, now_ms);
        self.tokens
    }
}

/// Where the calendar window holding `ms` starts and ends, in `zone`.
pub fn calendar(per: Per, zone: Tz, ms: i64) -> (i64, i64) {
    let Some(t) = Utc.timestamp_millis_opt(ms).single() else {
        return (ms, ms + per.ms());
    };
    let local = t.with_timezone(&zone).naive_local();
    let date = local.date();
    let (start, end) = match per {
        Per::Second | Per::Minute | Per::Hour => {
            let len = per.ms();
            let start = ms - ms.rem_euclid(len);
            return (start, start + len);
        }
        Per::Day => (date, date.succ_opt()),
        Per::Week => {
            let monday =
                date - chrono::Duration::days(i64::from(date.weekday().num_days_from_monday()));
            (monday, Some(monday + chrono::Duration::days(7)))
        }
        Per::Month => {
            let first = NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap_or(date);
            let next = if date.month() == 12 {
                NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
            };
            (first, next)
        }
    };
    let _ = local.hour();
    let at_midnight = |d: NaiveDate| -> i64 {
        let naive = d.and_hms_opt(0, 0, 0).unwrap_or_default();
        // A midnight that does not exist (a DST gap at 00:00) starts at the first
        // instant that does.
        zone.from_local_datetime(&naive)
            .earliest()
            .or_else(|| {
                zone.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                    .earliest()
            })
            .map_or(ms, |t| t.timestamp_millis())
    };
    let start_ms = at_midnight(start);
    let end_ms = end.map_or(start_ms + per.ms(), at_midnight);
    (start_ms, end_ms)
}

/// A quota's count over its window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Calendar: the window's bounds; rolling: unused.
    start_ms: i64,
    end_ms: i64,
    used: f64,
    /// Rolling: (slice start, amount), oldest first.
    slices: VecDeque<(i64, f64)>,
    /// Alert thresholds already reported in this window (bit i: `alert_at[i]`).
    pub alerted: u32,
}

impl Window {
    /// Bring the window up to `now_ms`: a calendar window that ended starts afresh; a
    /// rolling one forgets what is older than `per`.
    pub fn roll(&mut self, per: Per, rolling: bool, zone: Tz, now_ms: i64) {
        if rolling {
            let horizon = now_ms - per.ms();
            while let Some((at, amount)) = self.slices.front().copied() {
                if at > horizon {
                    break;
                }
                self.slices.pop_front();
                self.used -= amount;
            }
            if self.slices.is_empty() {
                self.used = 0.0;
                self.alerted = 0;
            }
        } else if now_ms >= self.end_ms || now_ms < self.start_ms {
            (self.start_ms, self.end_ms) = calendar(per, zone, now_ms);
            self.used = 0.0;
            self.alerted = 0;
        }
    }

    pub fn used(&self) -> f64 {
        self.used.max(0.0)
    }

    /// Count `amount` at `at_ms` (the caller rolled the window first).
    pub fn add(&mut self, per: Per, rolling: bool, amount: f64, at_ms: i64) {
        self.used += amount;
        if rolling {
            let slice = (per.ms() / ROLLING_SLICES).max(1000);
            let at = at_ms - at_ms.rem_euclid(slice);
            match self.slices.back_mut() {
                Some((last, a)) if *last == at => *a += amount,
                _ => self.slices.push_back((at, amount)),
            }
        }
    }

    /// Take back `amount` counted for a call that did not run.
    pub fn remove(&mut self, amount: f64) {
        self.used -= amount;
        if let Some((_, a)) = self.slices.back_mut() {
            *a -= amount;
        }
    }

    /// When the count next goes down: the window's end (calendar), or when its oldest
    /// slice leaves (rolling).
    pub fn resets_ms(&self, per: Per, rolling: bool, now_ms: i64) -> i64 {
        if rolling {
            let slice = (per.ms() / ROLLING_SLICES).max(1000);
            self.slices
                .front()
                .map_or(now_ms, |(at, _)| at + per.ms() + slice)
        } else {
            self.end_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn calendar_windows_start_at_the_zone_s_midnight_monday_and_first() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            calendar(Per::Day, berlin, ms("2026-06-10T23:30:00+02:00")),
            (
                ms("2026-06-10T00:00:00+02:00"),
                ms("2026-06-11T00:00:00+02:00")
            )
        );
        // 2026-06-10 is a Wednesday.
        assert_eq!(
            calendar(Per::Week, berlin, ms("2026-06-10T12:00:00+02:00")).0,
            ms("2026-06-08T00:00:00+02:00")
        );
        assert_eq!(
            calendar(Per::Month, berlin, ms("2026-12-31T23:59:00+01:00")),
            (
                ms("2026-12-01T00:00:00+01:00"),
                ms("2027-01-01T00:00:00+01:00")
            )
        );
        // The day clocks spring forward is 23 hours long.
        let (start, end) = calendar(Per::Day, berlin, ms("2026-03-29T12:00:00+02:00"));
        assert_eq!(end - start, 23 * 3_600_000);
    }

    #[test]
    fn a_calendar_quota_rolls_over_at_midnight_and_a_rolling_one_forgets_slowly() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        let mut w = Window::default();
        let t = ms("2026-06-10T23:59:00+09:00");
        w.roll(Per::Day, false, tokyo, t);
        w.add(Per::Day, false, 5.0, t);
        assert_eq!(w.used(), 5.0);
        assert_eq!(
            w.resets_ms(Per::Day, false, t),
            ms("2026-06-11T00:00:00+09:00")
        );
        w.roll(Per::Day, false, tokyo, ms("2026-06-11T00:00:01+09:00"));
        assert_eq!(w.used(), 0.0, "a new day in Tokyo");

        let mut r = Window::default();
        let h = 3_600_000;
        for i in 0..4 {
            r.roll(Per::Hour, true, tokyo, i * 15 * 60_000);
            r.add(Per::Hour, true, 1.0, i * 15 * 60_000);
        }
        assert_eq!(r.used(), 4.0);
        r.roll(Per::Hour, true, tokyo, h + 60_000);
        assert_eq!(r.used(), 3.0, "the first quarter hour left the window");
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut b = Bucket::full(2.0, 0);
        assert!(b.take(1.0, Per::Second, 2.0, 0).is_ok());
        assert!(b.take(1.0, Per::Second, 2.0, 0).is_ok());
        assert_eq!(b.take(1.0, Per::Second, 2.0, 0), Err(1000));
        assert!(b.take(1.0, Per::Second, 2.0, 1000).is_ok());
        assert!(b.available(1.0, Per::Second, 2.0, 100_000) <= 2.0);
    }
}
