//! The scheduler: fires each `[[schedule]]` at its times, through the governed path, as
//! its principal, recorded as `schedule:NAME`.
//!
//! One task per process. It sleeps until the next fire time (no periodic tick: an idle
//! server with a thousand daily schedules does not wake), claims every due fire time in
//! one transaction (a lease in the store: processes sharing a data dir fire each time
//! once, and a restart never fires a time that already ran), and starts the runs. A
//! schedule whose previous run has not finished, or is held for approval, skips or
//! queues (at most one waits) per its `overlap`. At start, fire times missed while no
//! warden ran are skipped or caught up once per `catch_up`, never in a burst; a fire
//! time the process itself was too late for (a stalled machine) is replaced by the
//! latest one, never by all of them.
//!
//! It must never start a run without the claim, nor bypass the governed path.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::call::{CallError, CallReport, CallRequest, Outcome};
use crate::config::{CatchUp, Overlap, ScheduleConfig};
use crate::runtime::Runtime;
use crate::store::automation::{AutomationStore, Fire, ScheduleState};

/// How often a schedule queued behind a held run looks at the approval again.
const HELD_RECHECK: Duration = Duration::from_secs(1);
/// The longest the loop sleeps (it would wake for a fire time anyway; this bounds the
/// effect of a clock stepped backwards).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// What the scheduler reports as it goes (the server turns these into metrics).
pub trait Events: Send + Sync {
    /// A run started: `kind` is `scheduled`, `catch-up`, `queued` or `manual`; `lag_ms`
    /// is from its fire time to its start.
    fn fired(&self, _schedule: &str, _kind: &str, _lag_ms: u64) {}
    /// A fire time ran nothing: `overlap`, `paused`, `late` or `missed`.
    fn skipped(&self, _schedule: &str, _reason: &str) {}
    /// A run started by `origin` (`schedule:NAME`, `trigger:NAME`) ended with `status`.
    fn finished(&self, _origin: &str, _status: &str) {}
    /// Held for as long as a run lasts (the server counts it in flight, so a shutdown
    /// lets it finish).
    fn run_guard(&self) -> Option<Box<dyn Send>> {
        None
    }
}

/// Reports nothing.
pub struct NoEvents;
impl Events for NoEvents {}

#[derive(Default)]
struct Slot {
    /// The timing and switch the slot was planned with (a reload that changes them
    /// replans).
    plan: String,
    next_ms: Option<i64>,
    running: u32,
    /// A run of this schedule held for approval: it has not finished until the request
    /// is final.
    held: Option<String>,
    /// A fire time waiting for the previous run (`overlap = "queue"`).
    queued: Option<i64>,
    /// What a run of it is, ready to start.
    spec: Option<Arc<RunSpec>>,
}

/// One schedule's run, prepared when it is planned (a thousand runs due at once start
/// without rebuilding any of it).
struct RunSpec {
    name: String,
    origin: String,
    principal: String,
    tool: String,
    input: String,
    jitter_ms: u64,
    overlap: Overlap,
}

impl RunSpec {
    fn of(s: &ScheduleConfig) -> RunSpec {
        RunSpec {
            name: s.name.clone(),
            origin: s.origin(),
            principal: s.principal.clone(),
            tool: s.tool.clone(),
            input: s.input.to_string(),
            jitter_ms: s.jitter_ms,
            overlap: s.overlap,
        }
    }
}

struct Done {
    name: String,
    held: Option<String>,
}

pub struct Scheduler {
    store: Arc<AutomationStore>,
    /// Names this process in the claims it makes.
    owner: String,
    events: Arc<dyn Events>,
    wake: Notify,
    slots: Mutex<HashMap<String, Slot>>,
    done: mpsc::UnboundedSender<Done>,
    finished: Mutex<Option<mpsc::UnboundedReceiver<Done>>>,
}

/// Why `run_now` ran nothing.
#[derive(Debug, thiserror::Error)]
pub enum RunNowError {
    #[error("no schedule {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Store(String),
    #[error(transparent)]
    Call(#[from] CallError),
}

impl Scheduler {
    pub fn new(store: Arc<AutomationStore>, events: Arc<dyn Events>) -> Arc<Scheduler> {
        let (done, finished) = mpsc::unbounded_channel();
        let mut token = [0u8; 8];
        let _ = getrandom::fill(&mut token);
        Arc::new(Scheduler {
            store,
            owner: format!("{}-{}", std::process::id(), hex::encode(token)),
            events,
            wake: Notify::new(),
            slots: Mutex::default(),
            done,
            finished: Mutex::new(Some(finished)),
        })
    }

    pub fn store(&self) -> &AutomationStore {
        &self.store
    }

    /// Look at the schedules again now (after a reload, a pause or a resume).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fire schedules until `stop` completes. `runtime` gives the current runtime (a
    /// reload swaps it; the scheduler follows).
    pub async fn run(
        self: Arc<Self>,
        runtime: impl Fn() -> Arc<Runtime> + Send + Sync,
        stop: impl Future<Output = ()>,
    ) {
        let Some(mut finished) = self.finished.lock().ok().and_then(|mut f| f.take()) else {
            return;
        };
        tokio::pin!(stop);
        // Which runtime the plan was made for (its address: a reload swaps it).
        let mut planned_for: Option<usize> = None;
        let mut first = true;
        let mut pruned_ms = 0;
        loop {
            let rt = runtime();
            let now = crate::now_ms() as i64;
            let mut due = Vec::new();
            if planned_for != Some(Arc::as_ptr(&rt) as usize) {
                due.extend(self.plan(&rt, now, first));
                planned_for = Some(Arc::as_ptr(&rt) as usize);
                first = false;
            }
            while let Ok(done) = finished.try_recv() {
                self.finish(done);
            }
            due.extend(self.due(&rt, now));
            if !due.is_empty() {
                self.dispatch(&rt, due, now);
            }
            self.start_queued(&rt);
            if now - pruned_ms > 3_600_000 {
                pruned_ms = now;
                if let Err(e) = self.store.prune(now) {
                    tracing::warn!("{e}");
                }
            }
            let sleep = self.sleep_for(crate::now_ms() as i64);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                Some(done) = finished.recv() => self.finish(done),
                _ = &mut stop => break,
            }
        }
    }

    /// (Re)plan every schedule of `rt`; at process start, the catch-up runs due.
    fn plan(&self, rt: &Runtime, now: i64, first: bool) -> Vec<(String, i64, &'static str)> {
        let schedules = &rt.config.schedules;
        let names: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
        let states = match self.store.register(&names, now) {
            Ok(states) => states,
            Err(e) => {
                tracing::error!("scheduler: {e}; nothing fires until the store answers");
                HashMap::new()
            }
        };
        let mut catch_up = Vec::new();
        let mut slots = self.slots();
        slots.retain(|name, _| names.contains(&name.as_str()));
        for s in schedules {
            let plan = format!("{}|{}|{}", s.timing.pattern(), s.timing.zone(), s.enabled);
            let slot = slots.entry(s.name.clone()).or_default();
            slot.spec = Some(Arc::new(RunSpec::of(s)));
            if slot.plan != plan {
                slot.plan = plan;
                slot.next_ms = s.enabled.then(|| s.timing.next_after(now)).flatten();
            }
            if first
                && s.enabled
                && let Some(state) = states.get(&s.name)
                && let Some(missed) = missed(s, state, now)
            {
                match s.catch_up {
                    CatchUp::Once => catch_up.push((s.name.clone(), missed, "catch-up")),
                    CatchUp::Skip => self.events.skipped(&s.name, "missed"),
                }
            }
        }
        catch_up
    }

    /// The fire times due at `now`, each schedule's next one planned.
    fn due(&self, rt: &Runtime, now: i64) -> Vec<(String, i64, &'static str)> {
        let mut out = Vec::new();
        let mut slots = self.slots();
        for s in &rt.config.schedules {
            let Some(slot) = slots.get_mut(&s.name) else {
                continue;
            };
            let Some(next) = slot.next_ms.filter(|n| *n <= now) else {
                continue;
            };
            // Usually the fire time after this one is still ahead (one lookup); when it
            // is not, several passed (the machine stalled): the latest one runs.
            let after = s.timing.next_after(next);
            let fire = match after {
                Some(a) if a > now => {
                    slot.next_ms = after;
                    next
                }
                _ => {
                    self.events.skipped(&s.name, "late");
                    slot.next_ms = s.timing.next_after(now);
                    s.timing.last_at_or_before(now).unwrap_or(next).max(next)
                }
            };
            out.push((s.name.clone(), fire, "scheduled"));
        }
        out
    }

    /// Claim the due fire times and start (or queue, or skip) their runs.
    fn dispatch(&self, rt: &Arc<Runtime>, due: Vec<(String, i64, &'static str)>, now: i64) {
        let paused = match self.store.paused() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("scheduler: {e}; due schedules not fired");
                return;
            }
        };
        let due: Vec<_> = due
            .into_iter()
            .filter(|(name, ..)| {
                let p = paused.contains(name);
                if p {
                    self.events.skipped(name, "paused");
                }
                !p
            })
            .collect();
        let fires: Vec<Fire<'_>> = due
            .iter()
            .map(|(name, fire_ms, kind)| Fire {
                name,
                fire_ms: *fire_ms,
                kind,
            })
            .collect();
        let claimed = match self.store.claim(&fires, &self.owner, now) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("scheduler: {e}; due schedules not fired");
                return;
            }
        };
        // One pass under the lock: start what is free, queue or skip what is busy;
        // schedules with a held run are looked at apart (that reads the queue).
        let mut start = Vec::new();
        let mut held = Vec::new();
        {
            let mut slots = self.slots();
            for ((name, fire_ms, kind), mine) in due.iter().zip(claimed) {
                let Some(slot) = slots.get_mut(name).filter(|_| mine) else {
                    continue;
                };
                let Some(spec) = slot.spec.clone() else {
                    continue;
                };
                if slot.held.is_some() && slot.running == 0 {
                    held.push((spec, *fire_ms, *kind));
                } else if slot.running > 0 {
                    self.overlapped(slot, &spec, *fire_ms);
                } else {
                    slot.running += 1;
                    start.push((spec, *fire_ms, *kind));
                }
            }
        }
        for (spec, fire_ms, kind) in held {
            if self.busy(rt, &spec.name) {
                if let Some(slot) = self.slots().get_mut(&spec.name) {
                    self.overlapped(slot, &spec, fire_ms);
                }
            } else {
                if let Some(slot) = self.slots().get_mut(&spec.name) {
                    slot.running += 1;
                }
                start.push((spec, fire_ms, kind));
            }
        }
        for (spec, fire_ms, kind) in start {
            self.spawn_run(rt, spec, fire_ms, kind);
        }
    }

    /// A fire time of a busy schedule: skipped, or queued (at most one waits).
    fn overlapped(&self, slot: &mut Slot, spec: &RunSpec, fire_ms: i64) {
        match spec.overlap {
            Overlap::Skip => self.events.skipped(&spec.name, "overlap"),
            Overlap::Queue if slot.queued.is_none() => slot.queued = Some(fire_ms),
            Overlap::Queue => self.events.skipped(&spec.name, "overlap"),
        }
    }

    /// Has `name` a run in flight, or one held for approval that is not final yet?
    fn busy(&self, rt: &Runtime, name: &str) -> bool {
        let held = {
            let slots = self.slots();
            match slots.get(name) {
                None => return false,
                Some(slot) if slot.running > 0 => return true,
                Some(slot) => slot.held.clone(),
            }
        };
        let Some(id) = held else {
            return false;
        };
        let pending = rt
            .approvals
            .as_ref()
            .and_then(|q| q.get(&id).ok().flatten())
            .is_some_and(|a| !a.state.is_final());
        if !pending && let Some(slot) = self.slots().get_mut(name) {
            slot.held = None;
        }
        pending
    }

    fn start_queued(&self, rt: &Arc<Runtime>) {
        let waiting: Vec<(String, i64)> = self
            .slots()
            .iter()
            .filter_map(|(n, s)| s.queued.map(|f| (n.clone(), f)))
            .collect();
        for (name, fire_ms) in waiting {
            if self.busy(rt, &name) {
                continue;
            }
            let spec = self.slots().get_mut(&name).and_then(|slot| {
                slot.queued = None;
                slot.running += 1;
                slot.spec.clone()
            });
            if let Some(spec) = spec {
                self.spawn_run(rt, spec, fire_ms, "queued");
            }
        }
    }

    /// Start one run for `fire_ms` on its own task (its slot already counts it).
    fn spawn_run(&self, rt: &Arc<Runtime>, spec: Arc<RunSpec>, fire_ms: i64, kind: &'static str) {
        let jitter = jitter(spec.jitter_ms);
        let (rt, done, events) = (rt.clone(), self.done.clone(), self.events.clone());
        let guard = self.events.run_guard();
        tokio::spawn(async move {
            let _guard = guard;
            if !jitter.is_zero() {
                tokio::time::sleep(jitter).await;
            }
            let lag = (crate::now_ms() as i64 - fire_ms).max(0) as u64;
            events.fired(&spec.name, kind, lag);
            // Runs due together take turns from their start, rather than each waiting
            // for every run spawned before it to reach its first pause.
            tokio::task::yield_now().await;
            // Boxed: the task the scheduler spawns stays small (a governed call's state
            // is kilobytes), so a thousand spawns at once cost little to the loop.
            let called = Box::pin(rt.call(CallRequest {
                principal: &spec.principal,
                tool: &spec.tool,
                input: &spec.input,
                started_by: Some(&spec.origin),
            }))
            .await;
            let held = ended(&rt, events.as_ref(), &spec.origin, &called);
            let _ = done.send(Done {
                name: spec.name.clone(),
                held,
            });
        });
    }

    fn finish(&self, done: Done) {
        if let Some(slot) = self.slots().get_mut(&done.name) {
            slot.running = slot.running.saturating_sub(1);
            if done.held.is_some() {
                slot.held = done.held;
            }
        }
    }

    fn sleep_for(&self, now: i64) -> Duration {
        let slots = self.slots();
        let mut next = slots
            .values()
            .filter_map(|s| s.next_ms)
            .min()
            .map_or(MAX_SLEEP, |at| {
                Duration::from_millis(u64::try_from(at - now).unwrap_or(0))
            });
        if slots
            .values()
            .any(|s| s.queued.is_some() && s.held.is_some())
        {
            next = next.min(HELD_RECHECK);
        }
        next.min(MAX_SLEEP)
    }

    /// Run schedule `name` now, through the governed path, whatever its overlap (an
    /// operator asked); claimed and recorded as `manual`.
    pub async fn run_now(&self, rt: &Arc<Runtime>, name: &str) -> Result<CallReport, RunNowError> {
        let s = rt
            .config
            .schedules
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| RunNowError::Unknown(name.to_string()))?;
        let now = crate::now_ms() as i64;
        self.store
            .claim(
                &[Fire {
                    name,
                    fire_ms: now,
                    kind: "manual",
                }],
                &self.owner,
                now,
            )
            .map_err(|e| RunNowError::Store(e.to_string()))?;
        if let Some(slot) = self.slots().get_mut(name) {
            slot.running += 1;
        }
        self.events.fired(name, "manual", 0);
        let _guard = self.events.run_guard();
        let report = run_schedule(rt, s).await;
        let held = ended(rt, self.events.as_ref(), &s.origin(), &report);
        self.finish(Done {
            name: name.to_string(),
            held,
        });
        Ok(report?)
    }
}

/// One governed call of schedule `s`.
pub async fn run_schedule(rt: &Runtime, s: &ScheduleConfig) -> Result<CallReport, CallError> {
    let (origin, input) = (s.origin(), s.input.to_string());
    rt.call(CallRequest {
        principal: &s.principal,
        tool: &s.tool,
        input: &input,
        started_by: Some(&origin),
    })
    .await
}

/// Report how a run started by `origin` ended, send the notice of unmet criteria, and
/// return the approval it is held on, if any.
fn ended(
    rt: &Arc<Runtime>,
    events: &dyn Events,
    origin: &str,
    called: &Result<CallReport, CallError>,
) -> Option<String> {
    match called {
        Ok(report) => {
            events.finished(origin, report.outcome.status());
            if matches!(report.outcome, Outcome::Unmet { .. }) {
                rt.notify_unmet(report);
            }
            match report.outcome {
                Outcome::Held { .. } => report.approval.as_ref().map(|a| a.id.clone()),
                _ => None,
            }
        }
        Err(e) => {
            events.finished(origin, "not-run");
            tracing::error!("{origin}: {e}");
            None
        }
    }
}

/// The latest fire time of `s` after what this data dir already ran (or first saw),
/// up to `now`: what `catch_up` is about.
pub fn missed(s: &ScheduleConfig, state: &ScheduleState, now: i64) -> Option<i64> {
    let since = state
        .last_fire_ms
        .unwrap_or(state.seen_ms)
        .max(state.seen_ms);
    s.timing.last_at_or_before(now).filter(|&t| t > since)
}

fn jitter(max_ms: u64) -> Duration {
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    Duration::from_millis(u64::from_le_bytes(bytes) % (max_ms + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Criteria;
    use crate::cron::Timing;

    fn schedule(pattern: &str) -> ScheduleConfig {
        ScheduleConfig {
            name: "s".into(),
            timing: Timing::parse(pattern, "UTC").unwrap(),
            tool: "t".into(),
            input: serde_json::json!({}),
            principal: "schedule:s".into(),
            jitter_ms: 0,
            overlap: Overlap::Skip,
            catch_up: CatchUp::Once,
            enabled: true,
            criteria: Criteria::default(),
            span: 0,
            input_span: 0,
        }
    }

    #[test]
    fn catch_up_looks_only_after_the_last_run_and_first_sight() {
        let hourly = schedule("0 * * * *");
        let hour = 3_600_000;
        let state = |seen, last| ScheduleState {
            seen_ms: seen,
            last_fire_ms: last,
            ..ScheduleState::default()
        };
        // Ran at 10:00, stopped, back at 13:30: one catch-up, for 13:00 (not three).
        assert_eq!(
            missed(&hourly, &state(0, Some(10 * hour)), 13 * hour + hour / 2),
            Some(13 * hour)
        );
        // Ran at 13:00 already: nothing missed.
        assert_eq!(
            missed(&hourly, &state(0, Some(13 * hour)), 13 * hour + 1),
            None
        );
        // Never ran; first seen at 12:30: 13:00 was missed, 12:00 was before its time.
        assert_eq!(
            missed(&hourly, &state(12 * hour + hour / 2, None), 13 * hour + 5),
            Some(13 * hour)
        );
        assert_eq!(
            missed(
                &hourly,
                &state(12 * hour + hour / 2, None),
                12 * hour + hour * 3 / 4
            ),
            None
        );
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        assert_eq!(jitter(0), Duration::ZERO);
        for _ in 0..100 {
            assert!(jitter(50) <= Duration::from_millis(50));
        }
    }
}
