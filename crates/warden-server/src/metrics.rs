//! Prometheus metrics of `warden serve`: calls by tool and outcome, policy decision
//! latency, authentication failures, reloads; gauges (approval queue depth, audit lag,
//! calls in flight, whether auditing is on) are read when scraped.
//!
//! Owns the metrics and their exposition (the `prometheus-client` encoder, which never
//! writes a series twice). It must never put a principal, an input or anything a caller
//! controls in a label: a tool label is a loaded tool's name or `unknown`, so the set of
//! series is bounded by the config, not by what agents send.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the policy decision histogram.
const BUCKETS_S: [f64; 10] = [
    0.000_010, 0.000_025, 0.000_050, 0.000_100, 0.000_250, 0.000_500, 0.001, 0.005, 0.025, 0.1,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tool: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    decisions: Histogram,
    auth_failures: Counter,
    auth_throttled: Counter,
    reloads: Family<ResultLabel, Counter>,
    pending: Gauge,
    lag: Gauge,
    in_flight: Gauge,
    audit_enabled: Gauge,
    /// Serializes encoding with the gauges set just before it.
    render: Mutex<()>,
}

/// Values read at scrape time.
pub struct Gauges {
    pub pending_approvals: u64,
    pub audit_lag_records: u64,
    pub in_flight: u64,
    pub audit_enabled: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "warden_calls",
            "Governed calls by tool (a loaded tool, or unknown) and outcome",
            calls.clone(),
        );
        let decisions = Histogram::new(BUCKETS_S);
        registry.register(
            "warden_policy_decision_seconds",
            "Time to evaluate every policy in scope of a call",
            decisions.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "warden_auth_failures",
            "Requests refused for a missing or wrong token",
            auth_failures.clone(),
        );
        let auth_throttled = Counter::default();
        registry.register(
            "warden_auth_throttled",
            "Requests refused because their source failed to authenticate too often",
            auth_throttled.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "warden_reloads",
            "Config reloads by result",
            reloads.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::<i64, AtomicI64Alias>::default();
            registry.register(name, help, g.clone());
            g
        };
        let pending = gauge(
            &mut registry,
            "warden_approvals_pending",
            "Held calls waiting for a decision",
        );
        let lag = gauge(
            &mut registry,
            "warden_audit_lag_records",
            "Audit records handed to the writer and not yet acknowledged",
        );
        let in_flight = gauge(
            &mut registry,
            "warden_calls_in_flight",
            "Governed calls running now",
        );
        let audit_enabled = gauge(
            &mut registry,
            "warden_audit_enabled",
            "1 when calls are audited; 0 when [audit] enabled = false (nothing is recorded)",
        );
        Metrics {
            registry,
            calls,
            decisions,
            auth_failures,
            auth_throttled,
            reloads,
            pending,
            lag,
            in_flight,
            audit_enabled,
            render: Mutex::new(()),
        }
    }
}

type AtomicI64Alias = std::sync::atomic::AtomicI64;

impl Metrics {
    /// Count one call of `tool` ending in `status`, with its policy time. `tool` is
    /// counted under its name only if `known` says it is a loaded tool.
    pub fn call(&self, tool: &str, known: bool, status: &str, policy_us: Option<u64>) {
        let tool = if known { tool } else { "unknown" };
        self.calls
            .get_or_create(&CallLabels {
                tool: tool.to_string(),
                outcome: status.to_string(),
            })
            .inc();
        if let Some(us) = policy_us {
            self.decisions.observe(us as f64 / 1e6);
        }
    }

    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    pub fn auth_throttled(&self) {
        self.auth_throttled.inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let _one = self.render.lock().unwrap_or_else(|p| p.into_inner());
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.pending.set(gauge(g.pending_approvals));
        self.lag.set(gauge(g.audit_lag_records));
        self.in_flight.set(gauge(g.in_flight));
        self.audit_enabled.set(i64::from(g.audit_enabled));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
