//! Budgets: what each agent, plugin, tool and schedule may consume, counted by the host
//! and enforced on the call path, with the kill switch and runaway guards beside them.
//!
//! A call in scope of some limits is admitted by reserving what it will use (a token of
//! each rate, a slot of each concurrency bound, one call and its declared cost of each
//! quota) under each limit's lock, so 64 callers against a limit of N see exactly N
//! admitted; what it used is settled when it ends (wall time, fuel), its outgoing HTTP
//! is counted as it happens (`EgressBudget`), and a call admitted but never run gives
//! its reservation back. Quotas are rebuilt from the run history when warden starts,
//! so they survive restarts; a reload keeps every count.
//!
//! It never decides alone: a refusal is `deny` (the call ends `limited`) or `hold` (the
//! call waits for a human in the approval queue), as each limit says.

pub mod runaway;
pub mod window;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};

use crate::config::{Each, LimitConfig, LimitKind, Measure, OnExceed, Per, RunawayConfig};
use crate::grants::http::EgressBudget;
use crate::util::pattern_matches;

use window::{Bucket, Window};

/// Who a call is, as limits see it.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub principal: &'a str,
    pub plugin: &'a str,
    pub tool: &'a str,
    /// The schedule that started it, if one did.
    pub schedule: Option<&'a str>,
}

impl<'a> Who<'a> {
    fn key(&self, each: Option<Each>) -> &'a str {
        match each {
            None => "",
            Some(Each::Principal) => self.principal,
            Some(Each::Plugin) => self.plugin,
            Some(Each::Tool) => self.tool,
            Some(Each::Schedule) => self.schedule.unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
enum Count {
    Bucket(Bucket),
    Window(Window),
    Flight(u64),
}

struct Limit {
    config: LimitConfig,
    /// `"NAME":{"kind":…,"measure":…,"per":…,` for `action.usage`, made once: usage is
    /// written on every call's path.
    usage_prefix: String,
    /// Whether the scope takes any principal, plugin, tool (none given, or `*`): the
    /// check every call makes touches no pattern then.
    any: [bool; 3],
    /// Shared with the same limit of the runtime this one replaced (a reload), so
    /// calls still running there settle into the same counts.
    counts: Arc<Mutex<Counts>>,
}

impl Limit {
    fn covers(&self, who: &Who<'_>) -> bool {
        let s = &self.config.scope;
        let [any_principal, any_plugin, any_tool] = self.any;
        let ok = |any: bool, pattern: &Option<String>, value: &str| {
            any || pattern.as_deref().is_none_or(|p| pattern_matches(p, value))
        };
        ok(any_principal, &s.principal, who.principal)
            && ok(any_plugin, &s.plugin, who.plugin)
            && ok(any_tool, &s.tool, who.tool)
            && match (&s.schedule, who.schedule) {
                (None, _) => true,
                (Some(p), Some(name)) => pattern_matches(p, name),
                (Some(_), None) => false,
            }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh count of this limit's kind.
    fn fresh(&self, now_ms: i64) -> Count {
        match &self.config.kind {
            LimitKind::Rate { burst, .. } => Count::Bucket(Bucket::full(*burst, now_ms)),
            LimitKind::Concurrency { .. } => Count::Flight(0),
            LimitKind::Quota { .. } => Count::Window(Window::default()),
        }
    }
}

/// One limit's counts: the shared one (a limit without `each`, or the empty key) and
/// one per key. Keys are shared with the admissions that hold them, so admitting a
/// call allocates no key once its count exists.
#[derive(Debug, Default)]
struct Counts {
    shared: Option<Count>,
    each: HashMap<Arc<str>, Count>,
}

impl Counts {
    fn get_mut(&mut self, key: &str) -> Option<&mut Count> {
        if key.is_empty() {
            self.shared.as_mut()
        } else {
            self.each.get_mut(key)
        }
    }

    /// `key`'s count, made by `fresh` when missing, and the key to find it again.
    fn entry(
        &mut self,
        key: &str,
        fresh: impl FnOnce() -> Count,
    ) -> (&mut Count, Option<Arc<str>>) {
        if key.is_empty() {
            return (self.shared.get_or_insert_with(fresh), None);
        }
        let held = match self.each.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(key);
                self.each.insert(k.clone(), fresh());
                k
            }
        };
        let count = self
            .each
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("found or inserted above"));
        (count, Some(held))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Count)> {
        self.shared
            .iter_mut()
            .map(|c| ("", c))
            .chain(self.each.iter_mut().map(|(k, c)| (&**k, c)))
    }
}

/// Why a call may not run under a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub limit: String,
    pub on_exceed: OnExceed,
    /// What was used and what is allowed (for a rate: tokens left and the burst).
    pub used: f64,
    pub max: f64,
    pub measure: &'static str,
    /// When the count next goes down (or a token is back).
    pub resets_ms: Option<i64>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "limit {}: {} {} of {}",
            self.limit,
            trim(self.used),
            self.measure,
            trim(self.max)
        )?;
        if let Some(at) = self.resets_ms {
            write!(f, "; resets at {}", crate::util::rfc3339_ms(at))?;
        }
        Ok(())
    }
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// A quota passing one of its alert thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub limit: String,
    pub key: String,
    pub fraction: f64,
    pub used: f64,
    pub max: f64,
    pub resets_ms: i64,
}

/// Which counts `warden usage` shows.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct UsageFilter {
    pub principal: Option<String>,
    pub plugin: Option<String>,
    pub tool: Option<String>,
}

/// One row of `warden usage`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UsageRow {
    pub limit: String,
    /// What happens past it: `deny` or `hold`.
    pub on_exceed: OnExceed,
    /// Whose count (`each`); empty for a shared one.
    pub key: String,
    pub kind: String,
    pub measure: String,
    pub per: Option<String>,
    pub used: f64,
    pub max: f64,
    pub remaining: f64,
    pub resets_ms: Option<i64>,
}

/// What is suspended (the kill switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Principal,
    Plugin,
    Tool,
    Schedule,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "principal" => Some(Target::Principal),
            "plugin" => Some(Target::Plugin),
            "tool" => Some(Target::Tool),
            "schedule" => Some(Target::Schedule),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Principal => "principal",
            Target::Plugin => "plugin",
            Target::Tool => "tool",
            Target::Schedule => "schedule",
        }
    }
}

/// The kill switch: suspended principals, plugins, tools and schedules, with why. Kept
/// by the store; this is the copy every call consults.
#[derive(Default)]
pub struct Suspensions(RwLock<HashMap<(Target, String), String>>);

impl Suspensions {
    pub fn set(&self, target: Target, name: &str, reason: Option<String>) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(r) => {
                map.insert((target, name.to_string()), r);
            }
            None => {
                map.remove(&(target, name.to_string()));
            }
        }
    }

    /// Why the call `who` may not run, if something it involves is suspended.
    pub fn check(&self, who: &Who<'_>) -> Option<String> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return None;
        }
        let mut targets = vec![
            (Target::Principal, who.principal),
            (Target::Plugin, who.plugin),
            (Target::Tool, who.tool),
        ];
        if let Some(s) = who.schedule {
            targets.push((Target::Schedule, s));
        }
        targets.into_iter().find_map(|(t, name)| {
            map.get(&(t, name.to_string()))
                .map(|why| format!("{} {name} is suspended: {why}", t.as_str()))
        })
    }
}

pub struct Budgets {
    limits: Vec<Limit>,
    pub runaway: runaway::Runaway,
    pub suspensions: Arc<Suspensions>,
    /// Calls refused, by limit (`suspended`, `loop`, `breaker` for the guards).
    refusals: Arc<Mutex<HashMap<String, u64>>>,
}

impl Budgets {
    /// The budgets of `limits`; counts of same-named limits of the same kind are shared
    /// with `previous` (a reload), as are the runaway guards, the kill switch and the
    /// refusal counters.
    pub fn new(
        limits: &[LimitConfig],
        runaway: &RunawayConfig,
        previous: Option<&Budgets>,
    ) -> Budgets {
        let limits = limits
            .iter()
            .map(|c| {
                let counts = previous
                    .and_then(|p| p.limits.iter().find(|l| l.config.name == c.name))
                    .filter(|l| same_kind(&l.config.kind, &c.kind))
                    .map(|l| l.counts.clone())
                    .unwrap_or_default();
                let any = |p: &Option<String>| p.as_deref().is_none_or(|p| p == "*");
                Limit {
                    any: [
                        any(&c.scope.principal),
                        any(&c.scope.plugin),
                        any(&c.scope.tool),
                    ],
                    usage_prefix: usage_prefix(c),
                    config: c.clone(),
                    counts,
                }
            })
            .collect();
        Budgets {
            limits,
            runaway: match previous {
                Some(p) => runaway::Runaway::carry(runaway.clone(), &p.runaway),
                None => runaway::Runaway::new(runaway.clone()),
            },
            suspensions: previous.map(|p| p.suspensions.clone()).unwrap_or_default(),
            refusals: previous.map(|p| p.refusals.clone()).unwrap_or_default(),
        }
    }

    /// Count a call refused by `limit`.
    pub fn refused(&self, limit: &str) {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        match r.get_mut(limit) {
            Some(n) => *n += 1,
            None => {
                r.insert(limit.to_string(), 1);
            }
        }
    }

    /// Calls refused so far, by limit, sorted.
    pub fn refusals(&self) -> Vec<(String, u64)> {
        let r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = r.iter().map(|(k, v)| (k.clone(), *v)).collect();
        out.sort();
        out
    }

    /// From when runs must be replayed at start to rebuild every count: the start of
    /// the longest quota's current window, or as long back as a rate's bucket takes to
    /// fill. `None` when nothing is counted over time.
    pub fn replay_from(&self, now_ms: i64) -> Option<i64> {
        self.limits
            .iter()
            .filter_map(|l| match l.config.kind {
                LimitKind::Quota {
                    per, rolling, zone, ..
                } => Some(if rolling {
                    now_ms - per.ms()
                } else {
                    window::calendar(per, zone, now_ms).0
                }),
                LimitKind::Rate { rate, per, burst } => {
                    Some(now_ms - (burst / rate * per.ms() as f64).ceil() as i64)
                }
                LimitKind::Concurrency { .. } => None,
            })
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Room for `action.usage` when every limit is in scope (so writing it does not
    /// grow the string as it goes).
    pub fn usage_capacity(&self) -> usize {
        2 + self
            .limits
            .iter()
            .map(|l| l.usage_prefix.len() + 96)
            .sum::<usize>()
    }

    pub fn configs(&self) -> impl Iterator<Item = &LimitConfig> {
        self.limits.iter().map(|l| &l.config)
    }

    /// The caller's usage of every limit in scope of `who`, as the JSON object policies
    /// get in `action.usage`: `{"NAME": {"kind", "measure", "per", "used", "max",
    /// "remaining", "resets_ms"}}`. ([`Budgets::admit`] writes the same while it
    /// reserves.)
    pub fn usage_json(&self, who: &Who<'_>, now_ms: i64) -> String {
        let mut out = String::from("{");
        for l in self.limits.iter().filter(|l| l.covers(who)) {
            let key = who.key(l.config.each);
            let row = row_of(l, key, l.counts().get_mut(key), now_ms);
            usage_entry(&mut out, l, row.used, row.max, row.resets_ms);
        }
        out.push('}');
        out
    }

    /// Reserve what the call `who` (declared cost `cost`) will use, or refuse it. With
    /// `force` (an approved call) nothing is refused, but everything is counted. When
    /// `usage` is given, the caller's usage before this call is written into it as
    /// `action.usage` (see [`Budgets::usage_json`]), in the same pass; after a refusal
    /// it is incomplete.
    pub fn admit(
        self: &Arc<Self>,
        who: &Who<'_>,
        cost: f64,
        force: bool,
        now_ms: i64,
        mut usage: Option<&mut String>,
    ) -> Result<Admission, Refusal> {
        let mut admission = Admission {
            budgets: self.clone(),
            held: Vec::new(),
            crossings: Vec::new(),
            settled: false,
        };
        if let Some(u) = usage.as_deref_mut() {
            u.clear();
            u.push('{');
        }
        for (i, l) in self.limits.iter().enumerate() {
            if !l.covers(who) {
                continue;
            }
            let key = who.key(l.config.each);
            let mut counts = l.counts();
            let (count, held_key) = counts.entry(key, || l.fresh(now_ms));
            let reserved = match (&l.config.kind, count) {
                (LimitKind::Rate { rate, per, burst }, Count::Bucket(bucket)) => {
                    if let Some(u) = usage.as_deref_mut() {
                        let left = bucket.available(*rate, *per, *burst, now_ms);
                        usage_entry(u, l, *burst - left, *burst, None);
                    }
                    match bucket.take(*rate, *per, *burst, now_ms) {
                        Ok(()) => Reserved::Token,
                        Err(_) if force => Reserved::Nothing,
                        Err(at) => {
                            return Err(refusal(
                                l,
                                0.0,
                                *burst,
                                "calls left of the burst",
                                Some(at),
                            ));
                        }
                    }
                }
                (LimitKind::Concurrency { max }, Count::Flight(n)) => {
                    if let Some(u) = usage.as_deref_mut() {
                        usage_entry(u, l, *n as f64, *max as f64, None);
                    }
                    if *n >= *max && !force {
                        return Err(refusal(l, *n as f64, *max as f64, "calls in flight", None));
                    }
                    *n += 1;
                    Reserved::Slot
                }
                (
                    LimitKind::Quota {
                        measure,
                        max,
                        per,
                        rolling,
                        zone,
                    },
                    Count::Window(w),
                ) => {
                    w.roll(*per, *rolling, *zone, now_ms);
                    if let Some(u) = usage.as_deref_mut() {
                        let resets = w.resets_ms(*per, *rolling, now_ms);
                        usage_entry(u, l, w.used(), *max, Some(resets));
                    }
                    let amount = match measure {
                        Measure::Calls => 1.0,
                        Measure::Cost => cost,
                        _ => 0.0,
                    };
                    let over = if amount > 0.0 {
                        w.used() + amount > *max
                    } else {
                        w.used() >= *max
                    };
                    if over && !force {
                        let resets = w.resets_ms(*per, *rolling, now_ms);
                        return Err(refusal(l, w.used(), *max, measure.as_str(), Some(resets)));
                    }
                    if amount > 0.0 {
                        w.add(*per, *rolling, amount, now_ms);
                        if let Some(c) = crossing(l, key, w, *max, now_ms) {
                            admission.crossings.push(c);
                        }
                    }
                    Reserved::Amount(amount)
                }
                // A count of another kind (cannot happen: a reload shares counts only
                // between limits of one kind): start it afresh, counting nothing now.
                (_, count) => {
                    *count = l.fresh(now_ms);
                    continue;
                }
            };
            drop(counts);
            admission.held.push((i, held_key, reserved));
        }
        if let Some(u) = usage {
            u.push('}');
        }
        Ok(admission)
    }

    /// Count a run found in the history (at start): a call that ran at `at_ms`, with
    /// what it used. Runs must come oldest first (a rate's bucket is replayed in order).
    pub fn replay(&self, who: &Who<'_>, at_ms: i64, used: &Used, now_ms: i64) {
        for l in &self.limits {
            if !l.covers(who) {
                continue;
            }
            let key = who.key(l.config.each);
            let mut counts = l.counts();
            match &l.config.kind {
                LimitKind::Rate { rate, per, burst } => {
                    if let (Count::Bucket(b), _) = counts.entry(key, || l.fresh(at_ms)) {
                        let _ = b.take(*rate, *per, *burst, at_ms);
                    }
                }
                LimitKind::Quota {
                    measure,
                    per,
                    rolling,
                    zone,
                    ..
                } => {
                    let (Count::Window(w), _) = counts.entry(key, || l.fresh(at_ms)) else {
                        continue;
                    };
                    w.roll(*per, *rolling, *zone, now_ms);
                    let start = if *rolling {
                        now_ms - per.ms()
                    } else {
                        window::calendar(*per, *zone, now_ms).0
                    };
                    if at_ms >= start {
                        w.add(*per, *rolling, used.of(*measure), at_ms);
                    }
                }
                // Calls in flight died with the process that ran them.
                LimitKind::Concurrency { .. } => {}
            }
        }
    }

    /// Every count, for `warden usage`.
    pub fn snapshot(&self, now_ms: i64) -> Vec<UsageRow> {
        self.usage(&UsageFilter::default(), now_ms)
    }

    /// The counts of the limits that can count a call of `filter`'s principal, plugin
    /// and tool (each given), sorted by limit and key.
    pub fn usage(&self, filter: &UsageFilter, now_ms: i64) -> Vec<UsageRow> {
        let mut out = Vec::new();
        for l in &self.limits {
            let s = &l.config.scope;
            let fits = |pattern: &Option<String>, value: &Option<String>| match (pattern, value) {
                (Some(p), Some(v)) => pattern_matches(p, v),
                _ => true,
            };
            if !(fits(&s.principal, &filter.principal)
                && fits(&s.plugin, &filter.plugin)
                && fits(&s.tool, &filter.tool))
            {
                continue;
            }
            let wanted = match l.config.each {
                Some(Each::Principal) => filter.principal.as_deref(),
                Some(Each::Plugin) => filter.plugin.as_deref(),
                Some(Each::Tool) => filter.tool.as_deref(),
                _ => None,
            };
            let mut counts = l.counts();
            let mut rows: Vec<UsageRow> = counts
                .iter_mut()
                .filter(|(key, _)| wanted.is_none_or(|w| w == *key))
                .map(|(key, count)| row_of(l, key, Some(count), now_ms))
                .collect();
            if rows.is_empty() {
                rows.push(row_of(l, wanted.unwrap_or_default(), None, now_ms));
            }
            rows.sort_by(|a, b| a.key.cmp(&b.key));
            out.extend(rows);
        }
        out
    }

    /// The egress budget of a call admitted with `admission`, when a limit in its scope
    /// counts egress.
    pub fn egress(admission: &Admission) -> Option<Arc<dyn EgressBudget>> {
        let entries: Vec<(usize, Option<Arc<str>>)> = admission
            .held
            .iter()
            .filter(|(i, ..)| {
                matches!(
                    admission.budgets.limits[*i].config.kind,
                    LimitKind::Quota {
                        measure: Measure::EgressRequests | Measure::EgressBytes,
                        ..
                    }
                )
            })
            .map(|(i, key, _)| (*i, key.clone()))
            .collect();
        if entries.is_empty() {
            return None;
        }
        Some(Arc::new(EgressShare {
            budgets: admission.budgets.clone(),
            entries,
        }))
    }
}

fn same_kind(a: &LimitKind, b: &LimitKind) -> bool {
    match (a, b) {
        (LimitKind::Rate { .. }, LimitKind::Rate { .. }) => true,
        (LimitKind::Concurrency { .. }, LimitKind::Concurrency { .. }) => true,
        (
            LimitKind::Quota {
                measure: m1,
                per: p1,
                rolling: r1,
                zone: z1,
                ..
            },
            LimitKind::Quota {
                measure: m2,
                per: p2,
                rolling: r2,
                zone: z2,
                ..
            },
        ) => m1 == m2 && p1 == p2 && r1 == r2 && z1 == z2,
        _ => false,
    }
}

fn usage_prefix(c: &LimitConfig) -> String {
    let (kind, measure, per) = match &c.kind {
        LimitKind::Rate { per, .. } => ("rate", "calls", Some(*per)),
        LimitKind::Concurrency { .. } => ("concurrency", "calls in flight", None),
        LimitKind::Quota { measure, per, .. } => ("quota", measure.as_str(), Some(*per)),
    };
    format!(
        "{}:{{\"kind\":\"{kind}\",\"measure\":\"{measure}\",\"per\":{},",
        serde_json::Value::from(c.name.as_str()),
        per.map_or("null".into(), |p| format!("\"{}\"", p.as_str()))
    )
}

/// One limit's entry of `action.usage`.
fn usage_entry(out: &mut String, l: &Limit, used: f64, max: f64, resets_ms: Option<i64>) {
    if !out.ends_with('{') {
        out.push(',');
    }
    out.push_str(&l.usage_prefix);
    out.push_str("\"used\":");
    push_number(out, used);
    out.push_str(",\"max\":");
    push_number(out, max);
    out.push_str(",\"remaining\":");
    push_number(out, (max - used).max(0.0));
    out.push_str(",\"resets_ms\":");
    match resets_ms {
        Some(r) => out.push_str(itoa::Buffer::new().format(r)),
        None => out.push_str("null"),
    }
    out.push('}');
}

fn push_number(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        match serde_json::Number::from_f64(v) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        }
    }
}

fn refusal(
    l: &Limit,
    used: f64,
    max: f64,
    measure: &'static str,
    resets_ms: Option<i64>,
) -> Refusal {
    Refusal {
        limit: l.config.name.clone(),
        on_exceed: l.config.on_exceed,
        used,
        max,
        measure,
        resets_ms,
    }
}

/// The first alert threshold `w` passed and had not reported yet.
fn crossing(l: &Limit, key: &str, w: &mut Window, max: f64, now_ms: i64) -> Option<Crossing> {
    let LimitKind::Quota { per, rolling, .. } = l.config.kind else {
        return None;
    };
    let fraction = w.used() / max;
    let mut crossed = None;
    for (i, t) in l.config.alert_at.iter().enumerate() {
        let bit = 1u32 << i.min(31);
        if fraction >= *t && w.alerted & bit == 0 {
            w.alerted |= bit;
            crossed = Some(*t);
        }
    }
    crossed.map(|fraction| Crossing {
        limit: l.config.name.clone(),
        key: key.to_string(),
        fraction,
        used: w.used(),
        max,
        resets_ms: w.resets_ms(per, rolling, now_ms),
    })
}

fn row_of(l: &Limit, key: &str, count: Option<&mut Count>, now_ms: i64) -> UsageRow {
    let base =
        |kind: &str, measure: &str, per: Option<Per>, used: f64, max: f64, resets| UsageRow {
            limit: l.config.name.clone(),
            on_exceed: l.config.on_exceed,
            key: key.to_string(),
            kind: kind.to_string(),
            measure: measure.to_string(),
            per: per.map(|p| p.as_str().to_string()),
            used,
            max,
            remaining: (max - used).max(0.0),
            resets_ms: resets,
        };
    match (&l.config.kind, count) {
        (LimitKind::Rate { rate, per, burst }, count) => {
            let left = match count {
                Some(Count::Bucket(b)) => b.available(*rate, *per, *burst, now_ms),
                _ => *burst,
            };
            base("rate", "calls", Some(*per), *burst - left, *burst, None)
        }
        (LimitKind::Concurrency { max }, count) => {
            let n = match count {
                Some(Count::Flight(n)) => *n,
                _ => 0,
            };
            base(
                "concurrency",
                "calls in flight",
                None,
                n as f64,
                *max as f64,
                None,
            )
        }
        (
            LimitKind::Quota {
                measure,
                max,
                per,
                rolling,
                zone,
            },
            count,
        ) => {
            let (used, resets) = match count {
                Some(Count::Window(w)) => {
                    w.roll(*per, *rolling, *zone, now_ms);
                    (w.used(), w.resets_ms(*per, *rolling, now_ms))
                }
                _ => (
                    0.0,
                    if *rolling {
                        now_ms + per.ms()
                    } else {
                        window::calendar(*per, *zone, now_ms).1
                    },
                ),
            };
            base(
                "quota",
                measure.as_str(),
                Some(*per),
                used,
                *max,
                Some(resets),
            )
        }
    }
}

/// What a finished call used, by measure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    pub cost: f64,
    pub wall_ms: f64,
    pub fuel: f64,
    pub egress_requests: f64,
    pub egress_bytes: f64,
}

impl Used {
    fn of(&self, m: Measure) -> f64 {
        match m {
            Measure::Calls => 1.0,
            Measure::Cost => self.cost,
            Measure::WallMs => self.wall_ms,
            Measure::Fuel => self.fuel,
            Measure::EgressRequests => self.egress_requests,
            Measure::EgressBytes => self.egress_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Reserved {
    Nothing,
    Token,
    Slot,
    Amount(f64),
}

/// A call's reservations until it ends: `settle` counts what it used; dropped unsettled
/// (it never ran), everything is given back.
pub struct Admission {
    budgets: Arc<Budgets>,
    /// (limit, key (`None`: the shared count), what was reserved)
    held: Vec<(usize, Option<Arc<str>>, Reserved)>,
    /// Alert thresholds its reservation passed.
    pub crossings: Vec<Crossing>,
    settled: bool,
}

impl Admission {
    /// The call ran and used `used` (egress was counted as it went): count wall time
    /// and fuel, free its concurrency slots. The alert thresholds passed.
    pub fn settle(mut self, used: &Used, now_ms: i64) -> Vec<Crossing> {
        self.settled = true;
        let mut crossings = std::mem::take(&mut self.crossings);
        for (i, key, reserved) in &self.held {
            let l = &self.budgets.limits[*i];
            // Rates and quotas of calls and cost were counted when the call was admitted.
            if matches!(
                l.config.kind,
                LimitKind::Rate { .. }
                    | LimitKind::Quota {
                        measure: Measure::Calls | Measure::Cost,
                        ..
                    }
            ) {
                continue;
            }
            // Egress was counted as it moved, fuel is counted only when some was used:
            // a call that used none changes nothing there.
            let unchanged = match l.config.kind {
                LimitKind::Quota {
                    measure: Measure::EgressRequests | Measure::EgressBytes,
                    ..
                } => used.egress_requests == 0.0 && used.egress_bytes == 0.0,
                LimitKind::Quota {
                    measure: Measure::Fuel,
                    ..
                } => used.fuel == 0.0,
                _ => false,
            };
            if unchanged {
                continue;
            }
            let mut counts = l.counts();
            match (
                &l.config.kind,
                counts.get_mut(key.as_deref().unwrap_or_default()),
            ) {
                (LimitKind::Concurrency { .. }, Some(Count::Flight(n))) => {
                    if matches!(reserved, Reserved::Slot) {
                        *n = n.saturating_sub(1);
                    }
                }
                (
                    LimitKind::Quota {
                        measure: m @ (Measure::WallMs | Measure::Fuel),
                        max,
                        per,
                        rolling,
                        zone,
                    },
                    Some(Count::Window(w)),
                ) => {
                    w.roll(*per, *rolling, *zone, now_ms);
                    w.add(*per, *rolling, used.of(*m), now_ms);
                    if let Some(c) =
                        crossing(l, key.as_deref().unwrap_or_default(), w, *max, now_ms)
                    {
                        crossings.push(c);
                    }
                }
                (
                    LimitKind::Quota {
                        measure: Measure::EgressRequests | Measure::EgressBytes,
                        max,
                        ..
                    },
                    Some(Count::Window(w)),
                ) => {
                    if let Some(c) =
                        crossing(l, key.as_deref().unwrap_or_default(), w, *max, now_ms)
                    {
                        crossings.push(c);
                    }
                }
                _ => {}
            }
        }
        crossings
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        for (i, key, reserved) in &self.held {
            let l = &self.budgets.limits[*i];
            let mut counts = l.counts();
            match (
                reserved,
                &l.config.kind,
                counts.get_mut(key.as_deref().unwrap_or_default()),
            ) {
                (Reserved::Token, LimitKind::Rate { burst, .. }, Some(Count::Bucket(b))) => {
                    b.give_back(*burst)
                }
                (Reserved::Slot, _, Some(Count::Flight(n))) => *n = n.saturating_sub(1),
                (Reserved::Amount(a), _, Some(Count::Window(w))) if *a > 0.0 => w.remove(*a),
                _ => {}
            }
        }
    }
}

/// A call's outgoing HTTP drawn from the egress quotas in its scope, shared with every
/// call counting against them.
struct EgressShare {
    budgets: Arc<Budgets>,
    entries: Vec<(usize, Option<Arc<str>>)>,
}

impl EgressShare {
    fn draw(&self, which: Measure, n: f64, strict: bool) -> Result<(), String> {
        let now = crate::now_ms() as i64;
        for (i, key) in &self.entries {
            let l = &self.budgets.limits[*i];
            let LimitKind::Quota {
                measure,
                max,
                per,
                rolling,
                zone,
            } = &l.config.kind
            else {
                continue;
            };
            if *measure != which {
                continue;
            }
            let mut counts = l.counts();
            if let Some(Count::Window(w)) = counts.get_mut(key.as_deref().unwrap_or_default()) {
                w.roll(*per, *rolling, *zone, now);
                if strict && w.used() + n > *max {
                    return Err(format!(
                        "limit {}: {} of {} {} used",
                        l.config.name,
                        trim(w.used()),
                        trim(*max),
                        measure.as_str()
                    ));
                }
                w.add(*per, *rolling, n, now);
                if w.used() > *max {
                    return Err(format!(
                        "limit {}: over {} {}",
                        l.config.name,
                        trim(*max),
                        measure.as_str()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl EgressBudget for EgressShare {
    fn request(&self) -> Result<(), String> {
        self.draw(Measure::EgressRequests, 1.0, true)?;
        // A request is refused when the byte budget is already spent.
        self.draw(Measure::EgressBytes, 0.0, true)
    }

    fn bytes(&self, n: u64) -> Result<(), String> {
        self.draw(Measure::EgressBytes, n as f64, false)
    }
}

#[cfg(test)]
mod tests;
