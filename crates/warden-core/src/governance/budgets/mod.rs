//! Budgets: what each agent, plugin, tool and schedule may consume, counted by the host
//! and enforced on the call path, with the kill switch and runaway guards beside them.
//!
//! A call in scope of some limits is admitted by reserving what it will use (a token of
//! each rate, a slot of each concurrency bound, one call and its declared cost of each
//! quota) under the budgets' lock, so 64 callers against a limit of N see exactly N
//! admitted; what it used is settled when it ends (wall time, fuel), its outgoing HTTP
//! is counted as it happens (`EgressBudget`), and a call admitted but never run gives
//! its reservation back. Quotas and rates are rebuilt from the run history when warden
//! starts, so they survive restarts; a reload moves every count to the new budgets, and
//! calls admitted before it settle there.
//!
//! Every call in scope passes here, so the decision data of all limits sit together
//! (`Limit`, one lock over every count): a call that instantiated two components has
//! emptied the cache, and each cache line touched costs as much as the arithmetic.
//!
//! It never decides alone: a refusal is `deny` (the call ends `limited`) or `hold` (the
//! call waits for a human in the approval queue), as each limit says.

mod admission;
pub mod cluster;
mod counts;
pub mod runaway;
mod suspensions;
mod usage;
pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::config::{Each, LimitConfig, LimitKind, Measure, OnExceed, RunawayConfig};
use crate::util::pattern_matches;

pub use admission::Admission;
use admission::Reserved;
use counts::{Count, Counts};
pub use suspensions::{Suspensions, Target};
use usage::usage_prefix;
pub use usage::{UsageFilter, UsageRow};
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

/// What every call needs of one limit, kept small and together (its config, with the
/// patterns and names, is read only when a pattern must be matched or a refusal or
/// an alert described).
#[derive(Debug, Clone, Copy)]
struct Limit {
    kind: LimitKind,
    each: Option<Each>,
    on_exceed: OnExceed,
    /// The scope takes any principal, plugin, tool (none given, or `*`), any schedule
    /// (none given).
    any: [bool; 4],
    /// The lowest alert threshold: below it no alert is looked for.
    first_alert: f64,
    /// Where its `"NAME":{"kind":…,"measure":…,"per":…,` is in `Budgets::prefixes`.
    prefix: (u32, u32),
}

impl Limit {
    fn fresh(&self, now_ms: i64) -> Count {
        match self.kind {
            LimitKind::Rate { burst, .. } => Count::Bucket(Bucket::full(burst, now_ms)),
            LimitKind::Concurrency { .. } => Count::Flight(0),
            LimitKind::Quota { .. } => Count::Window(Window::default()),
        }
    }

    /// Rates and quotas of calls and cost are counted when a call is admitted; what
    /// else a call used is counted when it is settled.
    fn counted_at_admission(&self) -> bool {
        matches!(
            self.kind,
            LimitKind::Rate { .. }
                | LimitKind::Quota {
                    measure: Measure::Calls | Measure::Cost,
                    ..
                }
        )
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
    /// Why, when it is not the count (the shared count could not be reached).
    pub note: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(note) = &self.note {
            return write!(f, "limit {}: {note}", self.limit);
        }
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

/// What a finished call used, by measure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    /// Calls (1 for one call; replayed history sums a minute's).
    pub calls: f64,
    pub cost: f64,
    pub wall_ms: f64,
    pub fuel: f64,
    pub egress_requests: f64,
    pub egress_bytes: f64,
}

impl Used {
    fn of(&self, m: Measure) -> f64 {
        match m {
            Measure::Calls => self.calls,
            Measure::Cost => self.cost,
            Measure::WallMs => self.wall_ms,
            Measure::Fuel => self.fuel,
            Measure::EgressRequests => self.egress_requests,
            Measure::EgressBytes => self.egress_bytes,
        }
    }
}

pub struct Budgets {
    limits: Vec<Limit>,
    configs: Vec<LimitConfig>,
    /// Every limit's start of its `action.usage` entry, one after another.
    prefixes: String,
    /// Every limit's counts, by index, under one lock.
    counts: Mutex<Vec<Counts>>,
    /// The budgets a reload moved the counts to: what is settled here after it goes
    /// there.
    successor: OnceLock<Arc<Budgets>>,
    pub runaway: runaway::Runaway,
    pub suspensions: Arc<Suspensions>,
    /// The counts shared with other hosts (`[store] url`): set once, kept on reload.
    cluster: OnceLock<Arc<cluster::Cluster>>,
    /// Calls refused, by limit (`suspended`, `loop`, `breaker` for the guards).
    refusals: Arc<Mutex<HashMap<String, u64>>>,
}

impl Budgets {
    /// The budgets of `limits`. On a reload (`previous`), the counts of same-named
    /// limits of the same kind move here (what is settled on `previous` afterwards
    /// follows them), and the runaway guards, the kill switch and the refusal counters
    /// are shared.
    pub fn new(
        limits: &[LimitConfig],
        runaway: &RunawayConfig,
        previous: Option<&Arc<Budgets>>,
    ) -> Arc<Budgets> {
        let mut prefixes = String::new();
        let hot = limits
            .iter()
            .map(|c| {
                let start = prefixes.len();
                prefixes.push_str(&usage_prefix(c));
                let any = |p: &Option<String>| p.as_deref().is_none_or(|p| p == "*");
                Limit {
                    kind: c.kind,
                    each: c.each,
                    on_exceed: c.on_exceed,
                    any: [
                        any(&c.scope.principal),
                        any(&c.scope.plugin),
                        any(&c.scope.tool),
                        c.scope.schedule.is_none(),
                    ],
                    first_alert: c.alert_at.iter().copied().fold(f64::INFINITY, f64::min),
                    prefix: (start as u32, prefixes.len() as u32),
                }
            })
            .collect();
        let mut budgets = Budgets {
            limits: hot,
            configs: limits.to_vec(),
            prefixes,
            counts: Mutex::new(limits.iter().map(|_| Counts::default()).collect()),
            successor: OnceLock::new(),
            runaway: match previous {
                Some(p) => runaway::Runaway::carry(runaway.clone(), &p.runaway),
                None => runaway::Runaway::new(runaway.clone()),
            },
            suspensions: previous.map(|p| p.suspensions.clone()).unwrap_or_default(),
            refusals: previous.map(|p| p.refusals.clone()).unwrap_or_default(),
            cluster: OnceLock::new(),
        };
        if let Some(shared) = previous.and_then(|p| p.cluster.get()) {
            let _ = budgets.cluster.set(shared.clone());
        }
        let Some(mut previous) = previous else {
            return Arc::new(budgets);
        };
        // The counts are wherever the last reload moved them.
        while let Some(next) = previous.successor.get() {
            previous = next;
        }
        // Moved and handed on under the previous lock: whatever settles there either
        // lands before the move (and moves with it) or finds the successor.
        let mut old = previous.lock();
        let counts = budgets.counts.get_mut().unwrap_or_else(|p| p.into_inner());
        for (j, c) in limits.iter().enumerate() {
            if let Some(i) = previous
                .configs
                .iter()
                .position(|p| p.name == c.name && same_kind(&p.kind, &c.kind))
            {
                counts[j] = std::mem::take(&mut old[i]);
            }
        }
        let budgets = Arc::new(budgets);
        let _ = previous.successor.set(budgets.clone());
        drop(old);
        budgets
    }

    /// Count rates and quotas of calls and cost across hosts too, in `cluster`.
    pub fn share(&self, cluster: Arc<cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Counts>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Room for `action.usage` when every limit is in scope (so writing it does not
    /// grow the string as it goes).
    pub fn usage_capacity(&self) -> usize {
        2 + self.prefixes.len() + 96 * self.limits.len()
    }

    /// Does limit `i` count the calls of `who`?
    fn covers(&self, i: usize, who: &Who<'_>) -> bool {
        let l = &self.limits[i];
        if l.any == [true; 4] {
            return true;
        }
        let s = &self.configs[i].scope;
        let ok = |any: bool, pattern: &Option<String>, value: &str| {
            any || pattern.as_deref().is_none_or(|p| pattern_matches(p, value))
        };
        ok(l.any[0], &s.principal, who.principal)
            && ok(l.any[1], &s.plugin, who.plugin)
            && ok(l.any[2], &s.tool, who.tool)
            && match (&s.schedule, who.schedule) {
                (None, _) => true,
                (Some(p), Some(name)) => pattern_matches(p, name),
                (Some(_), None) => false,
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
            .filter_map(|l| match l.kind {
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
        // Made before the lock is taken, so that on a refusal the lock is released
        // before the admission gives back what it had reserved.
        let mut admission = Admission {
            budgets: self.clone(),
            held: Vec::with_capacity(self.limits.len()),
            crossings: Vec::new(),
            settled: false,
            shared: Vec::new(),
        };
        let mut counts = self.lock();
        if let Some(next) = self.successor.get() {
            drop(counts);
            admission.settled = true;
            return next.admit(who, cost, force, now_ms, usage);
        }
        if let Some(u) = usage.as_deref_mut() {
            u.clear();
            u.push('{');
        }
        for (i, l) in self.limits.iter().enumerate() {
            if !self.covers(i, who) {
                continue;
            }
            let key = who.key(l.each);
            let (count, held_key) = counts[i].entry(key, || l.fresh(now_ms));
            let reserved = match (l.kind, count) {
                (LimitKind::Rate { rate, per, burst }, Count::Bucket(bucket)) => {
                    if let Some(u) = usage.as_deref_mut() {
                        let left = bucket.available(rate, per, burst, now_ms);
                        self.usage_entry(u, i, burst - left, burst, None);
                    }
                    match bucket.take(rate, per, burst, now_ms) {
                        Ok(()) => Reserved::Token,
                        Err(_) if force => Reserved::Nothing,
                        Err(at) => {
                            return Err(self.refusal(
                                i,
                                0.0,
                                burst,
                                "calls left of the burst",
                                Some(at),
                            ));
                        }
                    }
                }
                (LimitKind::Concurrency { max }, Count::Flight(n)) => {
                    if let Some(u) = usage.as_deref_mut() {
                        self.usage_entry(u, i, *n as f64, max as f64, None);
                    }
                    if *n >= max && !force {
                        return Err(self.refusal(
                            i,
                            *n as f64,
                            max as f64,
                            "calls in flight",
                            None,
                        ));
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
                    w.roll(per, rolling, zone, now_ms);
                    if let Some(u) = usage.as_deref_mut() {
                        let resets = w.resets_ms(per, rolling, now_ms);
                        self.usage_entry(u, i, w.used(), max, Some(resets));
                    }
                    let amount = match measure {
                        Measure::Calls => 1.0,
                        Measure::Cost => cost,
                        _ => 0.0,
                    };
                    let over = if amount > 0.0 {
                        w.used() + amount > max
                    } else {
                        w.used() >= max
                    };
                    if over && !force {
                        let resets = w.resets_ms(per, rolling, now_ms);
                        return Err(self.refusal(i, w.used(), max, measure.as_str(), Some(resets)));
                    }
                    if amount > 0.0 {
                        w.add(per, rolling, amount, now_ms);
                        if let Some(c) = self.crossing(i, key, w, max, now_ms) {
                            admission.crossings.push(c);
                        }
                    }
                    Reserved::Amount(amount)
                }
                // A count of another kind (cannot happen: a reload moves counts only
                // between limits of one kind): start it afresh, counting nothing now.
                (_, count) => {
                    *count = l.fresh(now_ms);
                    continue;
                }
            };
            admission.held.push((i, held_key, reserved));
        }
        drop(counts);
        if let Some(u) = usage {
            u.push('}');
        }
        if let Some(cluster) = self.cluster.get() {
            for (i, key, _) in &admission.held {
                let key = key.as_deref().unwrap_or_default();
                // A refusal drops the admission, which gives back what was taken.
                if let Some(t) = cluster.take(self, *i, key, cost, force, now_ms)? {
                    admission.shared.push(t);
                }
            }
        }
        Ok(admission)
    }

    /// Count what the history says `who` used at `at_ms` (at start: a minute's calls
    /// and their sums, oldest first, since a rate's bucket is replayed in order).
    pub fn replay(&self, who: &Who<'_>, at_ms: i64, used: &Used, now_ms: i64) {
        let mut counts = self.lock();
        for (i, l) in self.limits.iter().enumerate() {
            if !self.covers(i, who) {
                continue;
            }
            let key = who.key(l.each);
            match (l.kind, counts[i].entry(key, || l.fresh(at_ms)).0) {
                (LimitKind::Rate { rate, per, burst }, Count::Bucket(b)) => {
                    // More than a burst empties it all the same.
                    let calls = used.calls.min(burst + 1.0) as u64;
                    for _ in 0..calls {
                        let _ = b.take(rate, per, burst, at_ms);
                    }
                }
                (
                    LimitKind::Quota {
                        measure,
                        per,
                        rolling,
                        zone,
                        ..
                    },
                    Count::Window(w),
                ) => {
                    w.roll(per, rolling, zone, now_ms);
                    let start = if rolling {
                        now_ms - per.ms()
                    } else {
                        window::calendar(per, zone, now_ms).0
                    };
                    if at_ms >= start {
                        w.add(per, rolling, used.of(measure), at_ms);
                    }
                }
                // Calls in flight died with the process that ran them.
                _ => {}
            }
        }
    }

    /// Run `f` on limit `i`'s counts where they are now: here, or, after a reload, in
    /// the budgets that replaced these (the same-named limit of the same kind; `None`
    /// when the reload dropped it).
    fn with_counts<R>(
        &self,
        i: usize,
        f: impl FnOnce(&Budgets, usize, &mut Counts) -> R,
    ) -> Option<R> {
        let mut counts = self.lock();
        let Some(next) = self.successor.get() else {
            return Some(f(self, i, &mut counts[i]));
        };
        drop(counts);
        let (name, kind) = (&self.configs[i].name, &self.limits[i].kind);
        let j = next
            .configs
            .iter()
            .position(|c| c.name == *name && same_kind(&c.kind, kind))?;
        next.with_counts(j, f)
    }

    fn refusal(
        &self,
        i: usize,
        used: f64,
        max: f64,
        measure: &'static str,
        resets_ms: Option<i64>,
    ) -> Refusal {
        Refusal {
            limit: self.configs[i].name.clone(),
            on_exceed: self.limits[i].on_exceed,
            used,
            max,
            measure,
            resets_ms,
            note: None,
        }
    }

    /// The first alert threshold of quota `i` that `w` passed and had not told yet.
    fn crossing(
        &self,
        i: usize,
        key: &str,
        w: &mut Window,
        max: f64,
        now_ms: i64,
    ) -> Option<Crossing> {
        let LimitKind::Quota { per, rolling, .. } = self.limits[i].kind else {
            return None;
        };
        let fraction = w.used() / max;
        if fraction < self.limits[i].first_alert {
            return None;
        }
        let config = &self.configs[i];
        let mut crossed = None;
        for (n, t) in config.alert_at.iter().enumerate() {
            let bit = 1u32 << n.min(31);
            if fraction >= *t && w.alerted & bit == 0 {
                w.alerted |= bit;
                crossed = Some(*t);
            }
        }
        crossed.map(|fraction| Crossing {
            limit: config.name.clone(),
            key: key.to_string(),
            fraction,
            used: w.used(),
            max,
            resets_ms: w.resets_ms(per, rolling, now_ms),
        })
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

#[cfg(test)]
mod tests;
