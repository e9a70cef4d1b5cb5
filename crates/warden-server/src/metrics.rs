//! Prometheus metrics of `warden serve`: calls by tool and outcome, policy decision
//! latency, authentication failures, reloads, schedules (runs, skips, lag), triggers'
//! deliveries, outcomes of the runs they start, refusals by limit; gauges (approval
//! queue depth, audit lag, calls in flight, whether auditing is on, usage against each
//! limit, open circuit breakers) are read when scraped.
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    schedule: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: String,
    /// Whose count (a limit with `each`), or empty.
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

/// Most usage series exposed (limits counted per principal, plugin or tool have a
/// series per key; keys come from the config or authenticated callers).
const MAX_LIMIT_SERIES: usize = 1000;

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Upper bounds (seconds) of the scheduler lag histogram.
const LAG_BUCKETS_S: [f64; 9] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    decisions: Histogram,
    auth_failures: Counter,
    auth_throttled: Counter,
    csp_reports: Counter,
    reloads: Family<ResultLabel, Counter>,
    fired: Family<ScheduleLabels, Counter>,
    skipped: Family<ScheduleLabels, Counter>,
    finished: Family<OriginLabels, Counter>,
    lag_seconds: Histogram,
    deliveries: Family<TriggerLabels, Counter>,
    pending: Gauge,
    lag: Gauge,
    in_flight: Gauge,
    audit_enabled: Gauge,
    limit_used: Family<LimitLabels, FloatGauge>,
    limit_max: Family<LimitLabels, FloatGauge>,
    refusals: Family<LimitLabel, Counter>,
    breaker_open: Family<PluginLabel, Gauge>,
    /// Per upstream MCP server (configured ids only): up, restarts, calls, failures
    /// since the config was loaded.
    upstream: [Family<UpstreamLabel, Gauge>; 4],
    /// The shared store (`[store] url`): reached at the last attempt (1/0),
    /// connections held, round trips and failures since start.
    store: [Gauge; 4],
    /// Serializes encoding with the gauges set just before it.
    render: Mutex<()>,
}

/// Values read at scrape time.
pub struct Gauges {
    pub pending_approvals: u64,
    pub audit_lag_records: u64,
    pub in_flight: u64,
    pub audit_enabled: bool,
    pub limits: Vec<warden_core::governance::budgets::UsageRow>,
    /// Calls refused so far, by limit (shared across reloads, so never going down).
    pub refusals: Vec<(String, u64)>,
    pub plugins: Vec<String>,
    pub open_breakers: Vec<String>,
    pub upstreams: Vec<warden_core::upstream::Status>,
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
        let csp_reports = Counter::default();
        registry.register(
            "warden_console_csp_reports",
            "Content-Security-Policy violations browsers reported from console pages",
            csp_reports.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "warden_reloads",
            "Config reloads by result",
            reloads.clone(),
        );
        let fired = Family::<ScheduleLabels, Counter>::default();
        registry.register(
            "warden_schedule_runs",
            "Schedule runs started, by schedule and kind (scheduled, catch-up, queued, manual)",
            fired.clone(),
        );
        let skipped = Family::<ScheduleLabels, Counter>::default();
        registry.register(
            "warden_schedule_skipped",
            "Schedule fire times that ran nothing, by schedule and reason (overlap, paused, late, missed)",
            skipped.clone(),
        );
        let finished = Family::<OriginLabels, Counter>::default();
        registry.register(
            "warden_automation_runs_finished",
            "Runs started by a schedule or trigger, by origin and status (unmet: the criteria failed)",
            finished.clone(),
        );
        let lag_seconds = Histogram::new(LAG_BUCKETS_S);
        registry.register(
            "warden_schedule_lag_seconds",
            "From a fire time to the start of its run",
            lag_seconds.clone(),
        );
        let deliveries = Family::<TriggerLabels, Counter>::default();
        registry.register(
            "warden_trigger_deliveries",
            "Webhook deliveries by trigger (a configured one, or unknown) and result",
            deliveries.clone(),
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
        let limit_used = Family::<LimitLabels, FloatGauge>::default();
        registry.register(
            "warden_limit_used",
            "Usage counted against each limit now (per key for limits counted apart)",
            limit_used.clone(),
        );
        let limit_max = Family::<LimitLabels, FloatGauge>::default();
        registry.register(
            "warden_limit_max",
            "Each limit's maximum (the burst for a rate)",
            limit_max.clone(),
        );
        let refusals = Family::<LimitLabel, Counter>::default();
        registry.register(
            "warden_limit_refusals",
            "Calls refused, by limit (suspended, loop and breaker for the guards)",
            refusals.clone(),
        );
        let breaker_open = Family::<PluginLabel, Gauge>::default();
        registry.register(
            "warden_breaker_open",
            "1 while a plugin's circuit breaker is open",
            breaker_open.clone(),
        );
        let upstream = [
            (
                "warden_upstream_up",
                "1 while an upstream MCP server is running",
            ),
            (
                "warden_upstream_restarts",
                "Restarts of an upstream since the config was loaded",
            ),
            (
                "warden_upstream_calls",
                "Calls sent to an upstream since the config was loaded",
            ),
            (
                "warden_upstream_failures",
                "Calls an upstream failed (errors, timeouts, deaths) since the config was loaded",
            ),
        ]
        .map(|(name, help)| {
            let family = Family::<UpstreamLabel, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        });
        let store = [
            (
                "warden_store_up",
                "The shared store (PostgreSQL) answered at the last attempt (1) or not (0)",
            ),
            (
                "warden_store_connections",
                "Connections to the shared store held by this process",
            ),
            (
                "warden_store_round_trips",
                "Round trips to the shared store since start (statements, prepares, BEGIN, COMMIT)",
            ),
            (
                "warden_store_errors",
                "Failed statements and connections to the shared store since start",
            ),
        ]
        .map(|(name, help)| gauge(&mut registry, name, help));
        Metrics {
            store,
            limit_used,
            limit_max,
            refusals,
            breaker_open,
            upstream,
            registry,
            calls,
            decisions,
            auth_failures,
            auth_throttled,
            csp_reports,
            reloads,
            fired,
            skipped,
            finished,
            lag_seconds,
            deliveries,
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

    pub fn csp_report(&self) {
        self.csp_reports.inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// A webhook delivery to `trigger` (counted as `unknown` unless `known`) and how it
    /// ended.
    pub fn delivery(&self, trigger: &str, known: bool, result: &str) {
        let trigger = if known { trigger } else { "unknown" };
        self.deliveries
            .get_or_create(&TriggerLabels {
                trigger: trigger.to_string(),
                result: result.to_string(),
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
        let stats = &warden_core::store::postgres::STATS;
        let load = |v: &std::sync::atomic::AtomicU64| {
            i64::try_from(v.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX)
        };
        self.store[0].set(stats.up.load(std::sync::atomic::Ordering::Relaxed));
        self.store[1].set(stats.open.load(std::sync::atomic::Ordering::Relaxed));
        self.store[2].set(load(&stats.round_trips));
        self.store[3].set(load(&stats.errors));
        self.limit_used.clear();
        self.limit_max.clear();
        for row in g.limits.iter().take(MAX_LIMIT_SERIES) {
            let labels = LimitLabels {
                limit: row.limit.clone(),
                key: row.key.clone(),
            };
            self.limit_used.get_or_create(&labels).set(row.used);
            self.limit_max.get_or_create(&labels).set(row.max);
        }
        for (limit, total) in &g.refusals {
            let counter = self.refusals.get_or_create(&LimitLabel {
                limit: limit.clone(),
            });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.breaker_open.clear();
        for plugin in &g.plugins {
            let open = g.open_breakers.contains(plugin);
            self.breaker_open
                .get_or_create(&PluginLabel {
                    plugin: plugin.clone(),
                })
                .set(i64::from(open));
        }
        for family in &self.upstream {
            family.clear();
        }
        for u in &g.upstreams {
            let label = UpstreamLabel {
                upstream: u.id.clone(),
            };
            let values = [u64::from(u.running), u.restarts, u.calls, u.failures];
            for (family, value) in self.upstream.iter().zip(values) {
                family.get_or_create(&label).set(gauge(value));
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The scheduler's and triggers' events, as metrics. Schedule and origin labels come
/// from the config (the scheduler and triggers only report configured names).
impl Metrics {
    pub fn fired(&self, schedule: &str, kind: &str, lag_ms: u64) {
        self.fired
            .get_or_create(&ScheduleLabels {
                schedule: schedule.to_string(),
                kind: kind.to_string(),
            })
            .inc();
        self.lag_seconds.observe(lag_ms as f64 / 1e3);
    }

    pub fn skipped(&self, schedule: &str, reason: &str) {
        self.skipped
            .get_or_create(&ScheduleLabels {
                schedule: schedule.to_string(),
                kind: reason.to_string(),
            })
            .inc();
    }

    pub fn finished(&self, origin: &str, status: &str) {
        self.finished
            .get_or_create(&OriginLabels {
                origin: origin.to_string(),
                status: status.to_string(),
            })
            .inc();
    }
}
