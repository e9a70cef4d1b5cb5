//! Prometheus metrics of `warden serve`: calls by tool and outcome, policy decision
//! latency, authentication failures, reloads; gauges (approval queue depth, audit lag,
//! calls in flight) are read when scraped.
//!
//! Owns the counters and the text exposition format. It must never put a principal,
//! an input or anything a caller controls beyond a loaded tool's name in a label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (µs) of the policy decision histogram.
const BUCKETS_US: [u64; 10] = [10, 25, 50, 100, 250, 500, 1_000, 5_000, 25_000, 100_000];

#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    decision_buckets: [AtomicU64; BUCKETS_US.len()],
    decision_count: AtomicU64,
    decision_sum_us: AtomicU64,
    pub auth_failures: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

/// Values read at scrape time.
pub struct Gauges {
    pub pending_approvals: u64,
    pub audit_lag_records: u64,
    pub in_flight: u64,
}

impl Metrics {
    /// Count one call of `tool` (a loaded tool's name, or a refused request) ending
    /// in `status`, with its policy time.
    pub fn call(&self, tool: &str, status: &'static str, policy_us: Option<u64>) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry((tool.to_string(), status)).or_default() += 1;
        }
        if let Some(us) = policy_us {
            for (bound, bucket) in BUCKETS_US.iter().zip(&self.decision_buckets) {
                if us <= *bound {
                    bucket.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.decision_count.fetch_add(1, Ordering::Relaxed);
            self.decision_sum_us.fetch_add(us, Ordering::Relaxed);
        }
    }

    pub fn reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, tools: &[&str], g: &Gauges) -> String {
        let mut out = String::new();
        out += "# HELP warden_calls_total Governed calls by tool and outcome.\n# TYPE warden_calls_total counter\n";
        if let Ok(calls) = self.calls.lock() {
            for ((tool, status), n) in calls.iter() {
                // Names a caller made up are counted under one label, never echoed.
                let tool = if tools.contains(&tool.as_str()) {
                    tool.as_str()
                } else {
                    "(unknown)"
                };
                let _ = writeln!(
                    out,
                    "warden_calls_total{{tool=\"{tool}\",outcome=\"{status}\"}} {n}"
                );
            }
        }
        out += "# HELP warden_policy_decision_seconds Time to evaluate every policy in scope of a call.\n# TYPE warden_policy_decision_seconds histogram\n";
        for (bound, bucket) in BUCKETS_US.iter().zip(&self.decision_buckets) {
            let _ = writeln!(
                out,
                "warden_policy_decision_seconds_bucket{{le=\"{}\"}} {}",
                *bound as f64 / 1e6,
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.decision_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "warden_policy_decision_seconds_bucket{{le=\"+Inf\"}} {count}\nwarden_policy_decision_seconds_sum {}\nwarden_policy_decision_seconds_count {count}",
            self.decision_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP warden_approvals_pending Held calls waiting for a decision.\n# TYPE warden_approvals_pending gauge\nwarden_approvals_pending {}",
            g.pending_approvals
        );
        let _ = writeln!(
            out,
            "# HELP warden_audit_lag_records Audit records handed to the writer and not yet acknowledged.\n# TYPE warden_audit_lag_records gauge\nwarden_audit_lag_records {}",
            g.audit_lag_records
        );
        let _ = writeln!(
            out,
            "# HELP warden_calls_in_flight Governed calls running now.\n# TYPE warden_calls_in_flight gauge\nwarden_calls_in_flight {}",
            g.in_flight
        );
        let _ = writeln!(
            out,
            "# HELP warden_auth_failures_total Requests refused for a missing or wrong token.\n# TYPE warden_auth_failures_total counter\nwarden_auth_failures_total {}",
            self.auth_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP warden_reloads_total Config reloads by result.\n# TYPE warden_reloads_total counter\nwarden_reloads_total{{result=\"ok\"}} {}\nwarden_reloads_total{{result=\"failed\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed)
        );
        out
    }
}
