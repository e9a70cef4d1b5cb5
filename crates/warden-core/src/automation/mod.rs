//! Work warden starts itself: `[[schedule]]`s on a clock (`scheduler`) and `[[trigger]]`s
//! on signed webhooks (`trigger`, `signature`), each run through the governed path as
//! its own principal, recorded as started by it, and judged against its success
//! criteria (`runtime::criteria`).
//!
//! It never decides what may run: policies, approvals and the audit log apply to these
//! runs exactly as to an agent's call.

pub mod scheduler;
pub mod signature;
pub mod trigger;

use serde::Serialize;

use crate::config::ScheduleConfig;
use crate::runtime::Runtime;
use crate::store::automation::{AutomationError, AutomationStore};
use crate::store::runs::RunFilter;

/// Runs looked at for a schedule's success rate.
pub const RECENT_RUNS: usize = 20;

/// What `warden schedules list` shows of one schedule.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleSummary {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub tool: String,
    pub principal: String,
    pub enabled: bool,
    pub paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// The next three fire times, on the schedule's wall clock.
    pub next: Vec<String>,
    pub next_ms: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// Of the last [`RECENT_RUNS`] runs that ended (held ones excluded), how many were
    /// `ok`; `None` before any ended.
    pub success_rate: Option<f64>,
    pub recent_runs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub id: String,
    pub status: String,
    pub started_ms: i64,
}

/// The summary of every schedule of `rt`.
pub fn summaries(
    rt: &Runtime,
    store: &AutomationStore,
    now_ms: i64,
) -> Result<Vec<ScheduleSummary>, AutomationError> {
    rt.config
        .schedules
        .iter()
        .map(|s| summary(rt, store, s, now_ms))
        .collect()
}

fn summary(
    rt: &Runtime,
    store: &AutomationStore,
    s: &ScheduleConfig,
    now_ms: i64,
) -> Result<ScheduleSummary, AutomationError> {
    let state = store.state(&s.name)?.unwrap_or_default();
    let runs = rt
        .runs
        .list(&RunFilter {
            started_by: Some(s.origin()),
            limit: RECENT_RUNS,
            ..RunFilter::default()
        })
        .unwrap_or_default();
    let ended: Vec<&str> = runs
        .iter()
        .map(|r| r.status.as_str())
        .filter(|s| *s != "held")
        .collect();
    let ok = ended.iter().filter(|s| **s == "ok").count();
    let next_ms = if s.enabled && !state.paused {
        s.timing.upcoming(now_ms, 3)
    } else {
        Vec::new()
    };
    Ok(ScheduleSummary {
        name: s.name.clone(),
        cron: s.timing.pattern().to_string(),
        timezone: s.timing.zone().to_string(),
        tool: s.tool.clone(),
        principal: s.principal.clone(),
        enabled: s.enabled,
        paused: state.paused,
        paused_by: state.paused_by,
        pause_reason: state.reason,
        next: next_ms.iter().map(|&t| s.timing.local(t)).collect(),
        next_ms,
        last_run: runs.first().map(|r| LastRun {
            id: r.id.clone(),
            status: r.status.clone(),
            started_ms: r.started_ms,
        }),
        success_rate: (!ended.is_empty()).then(|| ok as f64 / ended.len() as f64),
        recent_runs: ended.len(),
    })
}
