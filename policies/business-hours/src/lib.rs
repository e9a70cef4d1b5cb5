//! `business-hours`: outside the configured working hours, calls to tools that are
//! not read-only are denied (or held for approval). It reads the request time from
//! the action, so the same action always gets the same decision.
//!
//! ```toml
//! [policy.config]
//! utc_offset_minutes = 60             # the team's time zone
//! days = ["mon", "tue", "wed", "thu", "fri"]
//! start = "09:00"
//! end = "18:00"
//! outside = "deny"                    # or "soft" / "hard": hold instead of deny
//! applies_to = "writes"               # or "all"
//! ```
#![no_std]
// no_std with warden's lean runtime: the component imports no WASI at all, which keeps
// a fresh instance per decision cheap (see BENCHMARKS.md).

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};
use serde_json::Value;
use warden_guest::policy::{Action, ApprovalSpec, Decision, Guest, Tier};

const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn minutes(value: Option<&Value>, key: &str, default: &str) -> Result<i64, String> {
    let text = match value {
        None => default,
        Some(v) => v
            .as_str()
            .ok_or(format!("config {key} must be \"HH:MM\""))?,
    };
    let (h, m) = text
        .split_once(':')
        .ok_or(format!("config {key} must be \"HH:MM\""))?;
    match (h.parse::<i64>(), m.parse::<i64>()) {
        (Ok(h), Ok(m)) if (0..=24).contains(&h) && (0..60).contains(&m) => Ok(h * 60 + m),
        _ => Err(format!("config {key} must be \"HH:MM\", got {text:?}")),
    }
}

fn decide(action: &Action) -> Result<Decision, String> {
    let config: Value = serde_json::from_str(&action.config).map_err(|e| format!("config: {e}"))?;
    for key in config.as_object().ok_or("config must be a table")?.keys() {
        if !matches!(
            key.as_str(),
            "utc_offset_minutes" | "days" | "start" | "end" | "outside" | "applies_to"
        ) {
            return Err(format!("config: unknown key {key:?}"));
        }
    }
    let offset = config
        .get("utc_offset_minutes")
        .map_or(Some(0), Value::as_i64)
        .ok_or("config utc_offset_minutes must be an integer")?;
    let days: Vec<&str> = match config.get("days") {
        None => DAYS[1..6].to_vec(),
        Some(v) => v
            .as_array()
            .and_then(|l| l.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or("config days must be a list of day names")?,
    };
    if let Some(bad) = days.iter().find(|d| !DAYS.contains(d)) {
        return Err(format!("config days: unknown day {bad:?}"));
    }
    let start = minutes(config.get("start"), "start", "09:00")?;
    let end = minutes(config.get("end"), "end", "18:00")?;
    let writes_only = match config.get("applies_to").and_then(Value::as_str) {
        None | Some("writes") => true,
        Some("all") => false,
        Some(other) => {
            return Err(format!(
                "config applies_to: expected \"writes\" or \"all\", got {other:?}"
            ));
        }
    };
    if writes_only && action.annotations.read_only {
        return Ok(Decision::Allow);
    }

    let local_secs = (action.time_ms / 1000) as i64 + offset * 60;
    let day = local_secs.div_euclid(86_400);
    let weekday = DAYS[(day + 4).rem_euclid(7) as usize]; // 1970-01-01 was a Thursday
    let minute = local_secs.rem_euclid(86_400) / 60;
    if days.contains(&weekday) && (start..end).contains(&minute) {
        return Ok(Decision::Allow);
    }
    let reason = format!(
        "{} is outside business hours ({weekday} {:02}:{:02}, UTC{:+}min)",
        action.tool,
        minute / 60,
        minute % 60,
        offset
    );
    let hold = |tier| ApprovalSpec {
        tier,
        reason: reason.clone(),
        approvers: vec![],
        timeout_secs: None,
        approvals_required: None,
    };
    Ok(match config.get("outside").and_then(Value::as_str) {
        None | Some("deny") => Decision::Deny(reason),
        Some("soft") => Decision::RequireApproval(hold(Tier::Soft)),
        Some("hard") => Decision::RequireApproval(hold(Tier::Hard)),
        Some(other) => {
            return Err(format!(
                "config outside: expected \"deny\", \"soft\" or \"hard\", got {other:?}"
            ));
        }
    })
}

struct BusinessHours;

impl Guest for BusinessHours {
    fn evaluate(action: Action) -> Decision {
        decide(&action).unwrap_or_else(|e| Decision::Deny(format!("business-hours: {e}")))
    }
}

warden_guest::export_policy!(BusinessHours);
warden_guest::lean_runtime!();
