//! Failed authentications, per source address: how many, so the audit log gets one
//! record per source per window (with the count) instead of one per request, and a
//! source that keeps failing is turned away (429) before its token is even looked at.
//!
//! It must never let an unauthenticated flood fill the audit log (fail-closed auditing
//! would then stop every call), never lose count of a failure, and never hold more
//! than `MAX_SOURCES` sources (the oldest windows are reported and dropped first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// One record per source per this long.
pub const WINDOW_MS: u64 = 10_000;
/// Failures in one window past which a source is refused with 429 until it ends.
pub const THROTTLE_AFTER: u64 = 30;
/// Most sources tracked at once.
const MAX_SOURCES: usize = 10_000;

/// What to do with one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Record it now (the first failure of the source's window).
    Record,
    /// Counted; reported with the window.
    Counted,
    /// Refused before authentication: too many failures from this source.
    Throttled,
}

/// A window's failures that no record has reported yet (the record is built in core).
pub use warden_core::runtime::record::Unreported;

#[derive(Debug)]
struct Window {
    start_ms: u64,
    last_ms: u64,
    failures: u64,
    /// Failures already in a record.
    reported: u64,
    paths: Vec<String>,
}

#[derive(Default)]
pub struct Ledger {
    sources: Mutex<HashMap<IpAddr, Window>>,
}

impl Ledger {
    /// Is `source` turned away right now?
    pub fn throttled(&self, source: IpAddr, now_ms: u64) -> bool {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .get(&source)
            .is_some_and(|w| now_ms < w.start_ms + WINDOW_MS && w.failures >= THROTTLE_AFTER)
    }

    /// Count a failure of `source` asking for `path`; what to do with it, and what an
    /// earlier window of the same source left unreported.
    pub fn fail(&self, source: IpAddr, path: &str, now_ms: u64) -> (Admission, Vec<Unreported>) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        if let Some(w) = sources.get(&source)
            && now_ms >= w.start_ms + WINDOW_MS
        {
            out.extend(unreported(source, w));
            sources.remove(&source);
        }
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            let oldest = sources
                .iter()
                .min_by_key(|(_, w)| w.last_ms)
                .map(|(ip, _)| *ip);
            if let Some(ip) = oldest
                && let Some(w) = sources.remove(&ip)
            {
                out.extend(unreported(ip, &w));
            }
        }
        let w = sources.entry(source).or_insert(Window {
            start_ms: now_ms,
            last_ms: now_ms,
            failures: 0,
            reported: 0,
            paths: Vec::new(),
        });
        w.failures += 1;
        w.last_ms = now_ms;
        if w.paths.len() < 3 && !w.paths.iter().any(|p| p == path) {
            w.paths.push(path.chars().take(256).collect());
        }
        let admission = if w.failures == 1 {
            w.reported = 1;
            Admission::Record
        } else if w.failures > THROTTLE_AFTER {
            Admission::Throttled
        } else {
            Admission::Counted
        };
        (admission, out)
    }

    /// The windows that have ended with failures no record reported, removed.
    pub fn ended(&self, now_ms: u64) -> Vec<Unreported> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let done: Vec<IpAddr> = sources
            .iter()
            .filter(|(_, w)| now_ms >= w.start_ms + WINDOW_MS)
            .map(|(ip, _)| *ip)
            .collect();
        done.into_iter()
            .filter_map(|ip| sources.remove(&ip).and_then(|w| unreported(ip, &w)))
            .collect()
    }

    /// When the earliest window with failures no record reported ends.
    pub fn next_end_ms(&self) -> Option<u64> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .values()
            .filter(|w| w.failures > w.reported)
            .map(|w| w.start_ms + WINDOW_MS)
            .min()
    }

    /// Everything not yet reported (at shutdown).
    pub fn drain(&self) -> Vec<Unreported> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .drain()
            .filter_map(|(ip, w)| unreported(ip, &w))
            .collect()
    }
}

fn unreported(source: IpAddr, w: &Window) -> Option<Unreported> {
    (w.failures > w.reported).then(|| Unreported {
        source: source.to_string(),
        failures: w.failures - w.reported,
        first_ms: w.start_ms,
        last_ms: w.last_ms,
        paths: w.paths.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_record_then_counts_then_refusals() {
        let ledger = Ledger::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(ledger.fail(ip, "/mcp", 0).0, Admission::Record);
        for i in 1..THROTTLE_AFTER {
            assert_eq!(ledger.fail(ip, "/api/runs", i).0, Admission::Counted);
        }
        assert!(ledger.throttled(ip, 100));
        assert_eq!(ledger.fail(ip, "/mcp", 100).0, Admission::Throttled);
        assert!(ledger.ended(WINDOW_MS - 1).is_empty());
        let ended = ledger.ended(WINDOW_MS);
        assert_eq!(ended.len(), 1);
        assert_eq!(
            ended[0].failures, THROTTLE_AFTER,
            "every failure after the first"
        );
        assert_eq!(ended[0].paths, ["/mcp", "/api/runs"]);
        assert!(!ledger.throttled(ip, WINDOW_MS + 1));
        // A new window starts with a record again; the old one is not counted twice.
        let (admission, old) = ledger.fail(ip, "/mcp", WINDOW_MS + 5);
        assert_eq!((admission, old.len()), (Admission::Record, 0));
    }
}
