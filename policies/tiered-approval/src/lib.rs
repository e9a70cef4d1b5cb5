//! `tiered-approval`: maps tools and their annotations to a tier (auto, soft, hard
//! or deny) from the policy's config. The strictest matching rule wins.
//!
//! ```toml
//! [policy.config]
//! default = "auto"                    # tier for calls no rule matches
//! approvers = ["group:oncall"]        # who may approve held calls
//! timeout_secs = 3600                 # how long a held call waits
//! hard_approvals = 2                  # distinct approvals a hard call needs
//! annotations = { destructive = "hard", open_world = "soft" }
//! tools = { notes_write = "soft", http_get = "auto" }
//! # By usage (`action.usage`, the caller's counts under warden's [[limit]]s): once
//! # `used` passes `above`, or `used / max` passes `fraction`, the call needs `tier`.
//! usage = [{ limit = "spend-per-principal", above = 50, tier = "hard" }]
//! ```
#![no_std]
// no_std with warden's lean runtime: the component imports no WASI at all, which keeps
// a fresh instance per decision cheap (see BENCHMARKS.md).

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use alloc::{format, vec};
use serde_json::Value;
use warden_guest::policy::{Action, ApprovalSpec, Decision, Guest, Tier};

#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Level {
    Auto,
    Soft,
    Hard,
    Deny,
}

fn level(value: &Value, key: &str) -> Result<Level, String> {
    match value.as_str() {
        Some("auto") => Ok(Level::Auto),
        Some("soft") => Ok(Level::Soft),
        Some("hard") => Ok(Level::Hard),
        Some("deny") => Ok(Level::Deny),
        _ => Err(format!(
            "config {key}: expected \"auto\", \"soft\", \"hard\" or \"deny\", got {value}"
        )),
    }
}

fn decide(action: &Action) -> Result<Decision, String> {
    let config: Value = serde_json::from_str(&action.config).map_err(|e| format!("config: {e}"))?;
    let config = config.as_object().ok_or("config must be a table")?;
    for key in config.keys() {
        if !matches!(
            key.as_str(),
            "default"
                | "approvers"
                | "timeout_secs"
                | "hard_approvals"
                | "annotations"
                | "tools"
                | "usage"
        ) {
            return Err(format!("config: unknown key {key:?}"));
        }
    }

    let mut tier = match config.get("default") {
        Some(v) => level(v, "default")?,
        None => Level::Auto,
    };
    let mut why = vec![];
    let a = &action.annotations;
    let flags = [
        ("read_only", a.read_only),
        ("destructive", a.destructive),
        ("idempotent", a.idempotent),
        ("open_world", a.open_world),
    ];
    if let Some(rules) = config.get("annotations") {
        let rules = rules
            .as_object()
            .ok_or("config annotations must be a table")?;
        for (name, rule) in rules {
            let Some((_, set)) = flags.iter().find(|(flag, _)| flag == name) else {
                return Err(format!("config annotations: unknown annotation {name:?}"));
            };
            let rule = level(rule, &format!("annotations.{name}"))?;
            if *set && rule > tier {
                tier = rule;
                why.push(format!("tool is {name}"));
            }
        }
    }
    if let Some(rules) = config.get("tools") {
        let rules = rules.as_object().ok_or("config tools must be a table")?;
        if let Some(rule) = rules.get(&action.tool) {
            let rule = level(rule, &format!("tools.{}", action.tool))?;
            if rule > tier {
                tier = rule;
                why.push(format!(
                    "tool {} is configured {}",
                    action.tool,
                    rule_name(rule)
                ));
            }
        }
    }

    if let Some(rules) = config.get("usage") {
        let rules = rules
            .as_array()
            .ok_or("config usage must be a list of tables")?;
        let usage: Value = serde_json::from_str(&action.usage).unwrap_or(Value::Null);
        for (i, rule) in rules.iter().enumerate() {
            let key = format!("usage[{i}]");
            let limit = rule["limit"]
                .as_str()
                .ok_or_else(|| format!("config {key}.limit must be a limit's name"))?;
            let level = level(&rule["tier"], &format!("{key}.tier"))?;
            let above = rule.get("above").map(|v| v.as_f64());
            let fraction = rule.get("fraction").map(|v| v.as_f64());
            if above.is_none() && fraction.is_none() {
                return Err(format!("config {key}: give above or fraction"));
            }
            if above == Some(None) || fraction == Some(None) {
                return Err(format!("config {key}: above and fraction must be numbers"));
            }
            // A limit not in scope of this call (absent from usage) counts nothing.
            let Some(count) = usage.get(limit) else {
                continue;
            };
            let used = count["used"].as_f64().unwrap_or(0.0);
            let max = count["max"].as_f64().unwrap_or(0.0);
            let passed = match (above.flatten(), fraction.flatten()) {
                (Some(a), _) if used > a => Some(format!("{limit} used {used} (above {a})")),
                (_, Some(f)) if max > 0.0 && used / max > f => {
                    Some(format!("{limit} used {used} of {max} (past {f} of it)"))
                }
                _ => None,
            };
            if let Some(text) = passed
                && level > tier
            {
                tier = level;
                why.push(text);
            }
        }
    }

    let reason = if why.is_empty() {
        "default tier".to_string()
    } else {
        why.join("; ")
    };
    let approvers = match config.get("approvers") {
        None => vec![],
        Some(v) => v
            .as_array()
            .and_then(|list| {
                list.iter()
                    .map(|p| p.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or("config approvers must be a list of strings")?,
    };
    let positive = |key: &str| -> Result<Option<u32>, String> {
        match config.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| format!("config {key} must be a positive integer")),
        }
    };
    let timeout_secs = positive("timeout_secs")?;
    let approvals_required = positive("hard_approvals")?;
    let spec = |tier| ApprovalSpec {
        tier,
        reason: reason.clone(),
        approvers: approvers.clone(),
        timeout_secs,
        approvals_required,
    };
    Ok(match tier {
        Level::Auto => Decision::Allow,
        Level::Soft => Decision::RequireApproval(spec(Tier::Soft)),
        Level::Hard => Decision::RequireApproval(spec(Tier::Hard)),
        Level::Deny => Decision::Deny(reason),
    })
}

fn rule_name(level: Level) -> &'static str {
    match level {
        Level::Auto => "auto",
        Level::Soft => "soft",
        Level::Hard => "hard",
        Level::Deny => "deny",
    }
}

struct TieredApproval;

impl Guest for TieredApproval {
    fn evaluate(action: Action) -> Decision {
        // A policy that cannot read its own config must not let calls through.
        decide(&action).unwrap_or_else(|e| Decision::Deny(format!("tiered-approval: {e}")))
    }
}

warden_guest::export_policy!(TieredApproval);
warden_guest::lean_runtime!();
