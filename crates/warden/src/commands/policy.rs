//! `warden policy test POLICY.wasm CASES.toml`: run a policy against cases of
//! expected decisions, like `opa test`, so security teams can change a policy safely.
//!
//! Each case is an action (tool, principal, annotations, input, time, config) and the
//! expected decision; a failing case prints the action, what was expected and what the
//! policy decided. Exit 0 when every case passes, 1 when any fails, 2 on a bad file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::Deserialize;

use warden_core::bindings::{Action, Annotations};
use warden_core::call::{Tier, Verdict};
use warden_core::config::{DEFAULT_POLICY_LIMITS, PolicyConfig};
use warden_core::runtime::Shared;
use warden_core::sandbox::engine::EngineOptions;
use warden_core::sandbox::policy::Policy;

use crate::exit;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Run a policy against a case file and report every case that fails.
    Test {
        /// The policy component (`.wasm`).
        policy: PathBuf,
        /// The cases (TOML): `[config]`, `[defaults]` and `[[case]]` tables.
        cases: PathBuf,
        /// Print passing cases too.
        #[arg(long, short)]
        verbose: bool,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// The policy's config, as under `[policy.config]` in warden.toml.
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    defaults: RawCase,
    #[serde(default, rename = "case")]
    cases: Vec<toml::Spanned<RawCase>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Option<String>,
    tool: Option<String>,
    principal: Option<String>,
    plugin: Option<String>,
    annotations: Option<BTreeMap<String, bool>>,
    input: Option<toml::Value>,
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    time: Option<String>,
    time_ms: Option<u64>,
    usage: Option<toml::Table>,
    /// Replaces the file's `[config]` for this case.
    config: Option<toml::Table>,
    /// `allow`, `soft`, `hard` or `deny`.
    expect: Option<String>,
    /// The reason must contain this text.
    reason: Option<String>,
    /// The approvers must be exactly these.
    approvers: Option<Vec<String>>,
    timeout_secs: Option<u32>,
}

impl RawCase {
    /// `self` with every unset field taken from `defaults`.
    fn or(self, d: &RawCase) -> RawCase {
        let d = d.clone();
        RawCase {
            name: self.name.or(d.name),
            tool: self.tool.or(d.tool),
            principal: self.principal.or(d.principal),
            plugin: self.plugin.or(d.plugin),
            annotations: self.annotations.or(d.annotations),
            input: self.input.or(d.input),
            time: self.time.or(d.time),
            time_ms: self.time_ms.or(d.time_ms),
            usage: self.usage.or(d.usage),
            config: self.config.or(d.config),
            expect: self.expect.or(d.expect),
            reason: self.reason.or(d.reason),
            approvers: self.approvers.or(d.approvers),
            timeout_secs: self.timeout_secs.or(d.timeout_secs),
        }
    }
}

pub async fn run(command: &PolicyCommand) -> Result<ExitCode> {
    let PolicyCommand::Test {
        policy,
        cases,
        verbose,
    } = command;
    let text =
        std::fs::read_to_string(cases).with_context(|| format!("reading {}", cases.display()))?;
    let file: CaseFile = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        anyhow::anyhow!(
            "{}:{}: {}",
            cases.display(),
            line_of(&text, at),
            e.message()
        )
    })?;
    if file.cases.is_empty() {
        bail!("{}: no [[case]] tables", cases.display());
    }
    let shared = Shared::new(EngineOptions::default(), super::user_cache_dir().as_deref())?;
    let load = |config: &toml::Table| -> Result<Policy> {
        Policy::load(
            &shared,
            &PolicyConfig {
                id: "under-test".into(),
                component: policy.clone(),
                sha256: None,
                tools: vec!["*".into()],
                config: serde_json::to_value(config)?,
                limits: DEFAULT_POLICY_LIMITS,
                span: 0,
            },
        )
        .with_context(|| format!("loading {}", policy.display()))
    };
    let base = load(&file.config)?;
    let (mut passed, mut failed) = (0, 0);
    let mut out = String::new();
    for (i, spanned) in file.cases.iter().enumerate() {
        let line = line_of(&text, spanned.span().start);
        let case = spanned.get_ref().clone().or(&file.defaults);
        let where_ = format!("{}:{line}", cases.display());
        let name = case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", i + 1));
        let (action, expect) =
            action_of(&case).map_err(|e| anyhow::anyhow!("{where_}: {name}: {e}"))?;
        let decision = match &case.config {
            Some(config) => {
                let mut a = action.clone();
                a.config = serde_json::to_value(config)?.to_string();
                load(config)?.evaluate(&a).await
            }
            None => {
                let mut a = action.clone();
                a.config = base.config.clone();
                base.evaluate(&a).await
            }
        };
        let (actual, reason, approvers, timeout) = match &decision.verdict {
            Verdict::Allow => ("allow", String::new(), vec![], None),
            Verdict::Deny { reason } => ("deny", reason.clone(), vec![], None),
            Verdict::RequireApproval {
                tier,
                reason,
                approvers,
                timeout_secs,
                ..
            } => (
                if *tier == Tier::Soft { "soft" } else { "hard" },
                reason.clone(),
                approvers.clone(),
                *timeout_secs,
            ),
        };
        let mut problems = Vec::new();
        if actual != expect {
            problems.push(format!("expected {expect}, got {actual}"));
        }
        if let Some(want) = &case.reason
            && !reason.contains(want.as_str())
        {
            problems.push(format!(
                "expected the reason to contain {want:?}, got {reason:?}"
            ));
        }
        if let Some(want) = &case.approvers
            && *want != approvers
        {
            problems.push(format!("expected approvers {want:?}, got {approvers:?}"));
        }
        if case.timeout_secs.is_some() && case.timeout_secs != timeout {
            problems.push(format!(
                "expected timeout {:?}, got {timeout:?}",
                case.timeout_secs
            ));
        }
        if let Some(f) = &decision.failure {
            problems.push(format!("the policy failed: {f}"));
        }
        if problems.is_empty() {
            passed += 1;
            if *verbose {
                out += &format!("PASS {name}\n");
            }
        } else {
            failed += 1;
            out += &format!("FAIL {name} ({where_})\n");
            out += &format!(
                "  action:   tool={} principal={} plugin={} time_ms={} annotations={}\n  input:    {}\n",
                action.tool,
                action.principal,
                action.plugin,
                action.time_ms,
                annotations_text(&action.annotations),
                action.input
            );
            out += &format!(
                "  expected: {expect}\n  actual:   {actual}{}\n",
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                }
            );
            for p in problems {
                out += &format!("  - {p}\n");
            }
        }
    }
    out += &format!("{}: {passed} passed, {failed} failed\n", cases.display());
    crate::output::print(&out)?;
    Ok(ExitCode::from(if failed == 0 {
        exit::OK
    } else {
        exit::TOOL_ERROR
    }))
}

fn action_of(case: &RawCase) -> Result<(Action, String), String> {
    let expect = match case.expect.as_deref() {
        Some(e @ ("allow" | "soft" | "hard" | "deny")) => e.to_string(),
        Some("auto") => "allow".to_string(),
        Some(other) => return Err(format!("expect = {other:?}: use allow, soft, hard or deny")),
        None => return Err("missing `expect`".into()),
    };
    let tool = case.tool.clone().ok_or("missing `tool`")?;
    let mut annotations = Annotations {
        read_only: false,
        destructive: false,
        idempotent: false,
        open_world: false,
    };
    for (k, v) in case.annotations.iter().flatten() {
        match k.as_str() {
            "read_only" => annotations.read_only = *v,
            "destructive" => annotations.destructive = *v,
            "idempotent" => annotations.idempotent = *v,
            "open_world" => annotations.open_world = *v,
            other => {
                return Err(format!(
                    "unknown annotation {other:?} (read_only, destructive, idempotent, open_world)"
                ));
            }
        }
    }
    let time_ms = match (&case.time, case.time_ms) {
        (Some(_), Some(_)) => return Err("set `time` or `time_ms`, not both".into()),
        (Some(t), None) => {
            parse_utc(t).ok_or_else(|| format!("time {t:?}: expected YYYY-MM-DDTHH:MM:SSZ"))?
        }
        (None, Some(ms)) => ms,
        (None, None) => 0,
    };
    let json = |v: Option<serde_json::Value>| v.map_or("{}".to_string(), |v| v.to_string());
    Ok((
        Action {
            principal: case.principal.clone().unwrap_or_else(|| "agent".into()),
            plugin: case.plugin.clone().unwrap_or_else(|| "plugin".into()),
            plugin_digest:
                "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
            tool,
            input: json(
                case.input
                    .as_ref()
                    .and_then(|v| serde_json::to_value(v).ok()),
            ),
            annotations,
            time_ms,
            config: String::new(),
            usage: json(
                case.usage
                    .as_ref()
                    .and_then(|v| serde_json::to_value(v).ok()),
            ),
        },
        expect,
    ))
}

fn annotations_text(a: &Annotations) -> String {
    let set: Vec<&str> = [
        ("read_only", a.read_only),
        ("destructive", a.destructive),
        ("idempotent", a.idempotent),
        ("open_world", a.open_world),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.then_some(k))
    .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join(",")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..text.floor_char_boundary(offset)]
        .matches('\n')
        .count()
        + 1
}

/// `YYYY-MM-DDTHH:MM:SSZ` as milliseconds since the Unix epoch.
fn parse_utc(t: &str) -> Option<u64> {
    // A calendar library, not arithmetic: `2026-02-31` is not a date.
    let at = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%SZ").ok()?;
    u64::try_from(at.and_utc().timestamp_millis()).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times_parse() {
        assert_eq!(super::parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            super::parse_utc("2026-11-26T10:00:00Z"),
            Some(1_795_687_200_000)
        );
        assert_eq!(super::parse_utc("2026-13-01T00:00:00Z"), None);
        assert_eq!(super::parse_utc("2026-02-31T00:00:00Z"), None);
        assert_eq!(super::parse_utc("2026-02-28T24:00:00Z"), None);
        assert_eq!(super::parse_utc("2026-02-28T10:00:00"), None);
    }
}
