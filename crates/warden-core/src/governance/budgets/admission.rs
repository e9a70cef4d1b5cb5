//! A call's reservations from its admission to its end: settling what it used, giving
//! back what it never used, and drawing its outgoing HTTP from the egress quotas.

use std::sync::Arc;

use super::counts::Count;
use super::{Budgets, Crossing, Used, trim};
use crate::config::{LimitKind, Measure};
use crate::grants::http::EgressBudget;

impl Budgets {
    /// The egress budget of a call admitted with `admission`, when a limit in its scope
    /// counts egress.
    pub fn egress(admission: &Admission) -> Option<Arc<dyn EgressBudget>> {
        let limits = &admission.budgets.limits;
        let entries: Vec<(usize, Option<Arc<str>>)> = admission
            .held
            .iter()
            .filter(|(i, ..)| {
                matches!(
                    limits[*i].kind,
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

#[derive(Debug, Clone, Copy)]
pub(super) enum Reserved {
    Nothing,
    Token,
    Slot,
    Amount(f64),
}

/// A call's reservations until it ends: `settle` counts what it used; dropped unsettled
/// (it never ran), everything is given back.
pub struct Admission {
    pub(super) budgets: Arc<Budgets>,
    /// (limit, key (`None`: the shared count), what was reserved)
    pub(super) held: Vec<(usize, Option<Arc<str>>, Reserved)>,
    /// Alert thresholds its reservation passed.
    pub crossings: Vec<Crossing>,
    pub(super) settled: bool,
    /// What it took from the counts shared with other hosts.
    pub(super) shared: Vec<super::cluster::Taken>,
}

impl Admission {
    /// The call ran and used `used` (egress was counted as it went): count wall time
    /// and fuel, free its concurrency slots. The alert thresholds passed.
    pub fn settle(mut self, used: &Used, now_ms: i64) -> Vec<Crossing> {
        self.settled = true;
        let mut crossings = std::mem::take(&mut self.crossings);
        let budgets = &self.budgets;
        if let Some(cluster) = budgets.cluster.get() {
            for (i, key, _) in &self.held {
                if let LimitKind::Quota { measure, .. } = budgets.limits[*i].kind
                    && !budgets.limits[*i].counted_at_admission()
                    && used.of(measure) > 0.0
                {
                    let key = key.as_deref().unwrap_or_default();
                    cluster.record(budgets, *i, key, used.of(measure), now_ms);
                }
            }
        }
        let pending = self.held.iter().filter(|(i, ..)| {
            let l = &budgets.limits[*i];
            // Egress was counted as it moved and fuel is counted when some was used: a
            // call that used none changes nothing there.
            let unchanged = match l.kind {
                LimitKind::Quota {
                    measure: Measure::EgressRequests | Measure::EgressBytes,
                    ..
                } => used.egress_requests == 0.0 && used.egress_bytes == 0.0,
                LimitKind::Quota {
                    measure: Measure::Fuel,
                    ..
                } => used.fuel == 0.0,
                _ => l.counted_at_admission(),
            };
            !unchanged
        });
        let mut pending = pending.peekable();
        if pending.peek().is_none() {
            return crossings;
        }
        let mut counts = budgets.lock();
        if budgets.successor.get().is_none() {
            // The common case: every count is here, under one lock.
            for (i, key, reserved) in pending {
                let key = key.as_deref().unwrap_or_default();
                if let Some(count) = counts[*i].get_mut(key) {
                    crossings.extend(settle_one(budgets, *i, count, key, *reserved, used, now_ms));
                }
            }
            return crossings;
        }
        drop(counts);
        for (i, key, reserved) in pending {
            let key = key.as_deref().unwrap_or_default();
            let crossed = budgets.with_counts(*i, |b, j, counts| {
                settle_one(b, j, counts.get_mut(key)?, key, *reserved, used, now_ms)
            });
            crossings.extend(crossed.flatten());
        }
        crossings
    }
}

/// Settle one reservation of limit `i` (in `b`); the alert threshold it passed.
fn settle_one(
    b: &Budgets,
    i: usize,
    count: &mut Count,
    key: &str,
    reserved: Reserved,
    used: &Used,
    now_ms: i64,
) -> Option<Crossing> {
    match (b.limits[i].kind, count) {
        (LimitKind::Concurrency { .. }, Count::Flight(n)) => {
            if matches!(reserved, Reserved::Slot) {
                *n = n.saturating_sub(1);
            }
            None
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
            if matches!(measure, Measure::WallMs | Measure::Fuel) {
                w.roll(per, rolling, zone, now_ms);
                w.add(per, rolling, used.of(measure), now_ms);
            }
            b.crossing(i, key, w, max, now_ms)
        }
        _ => None,
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(cluster) = self.budgets.cluster.get() {
            cluster.give_back(std::mem::take(&mut self.shared));
        }
        for (i, key, reserved) in &self.held {
            let key = key.as_deref().unwrap_or_default();
            self.budgets.with_counts(*i, |b, j, counts| {
                match (*reserved, b.limits[j].kind, counts.get_mut(key)) {
                    (
                        Reserved::Token,
                        LimitKind::Rate { burst, .. },
                        Some(Count::Bucket(bucket)),
                    ) => bucket.give_back(burst),
                    (Reserved::Slot, _, Some(Count::Flight(n))) => *n = n.saturating_sub(1),
                    (Reserved::Amount(a), _, Some(Count::Window(w))) if a > 0.0 => w.remove(a),
                    _ => {}
                }
            });
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
            let key = key.as_deref().unwrap_or_default();
            let drawn = self.budgets.with_counts(*i, |b, j, counts| {
                let LimitKind::Quota {
                    measure,
                    max,
                    per,
                    rolling,
                    zone,
                } = b.limits[j].kind
                else {
                    return Ok(());
                };
                let Some(Count::Window(w)) = counts.get_mut(key) else {
                    return Ok(());
                };
                if measure != which {
                    return Ok(());
                }
                let name = &b.configs[j].name;
                w.roll(per, rolling, zone, now);
                if strict && w.used() + n > max {
                    return Err(format!(
                        "limit {name}: {} of {} {} used",
                        trim(w.used()),
                        trim(max),
                        measure.as_str()
                    ));
                }
                w.add(per, rolling, n, now);
                if w.used() > max {
                    return Err(format!(
                        "limit {name}: over {} {}",
                        trim(max),
                        measure.as_str()
                    ));
                }
                Ok(())
            });
            drawn.unwrap_or(Ok(()))?;
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
