//! What a call is: the request, its report and outcome, why it failed, the policies'
//! decisions and tiers, its log and progress, and the view of its approval request.
//!
//! Plain data shared along the path of a call (the sandbox fills in failures and logs,
//! the governed call builds reports, the record builder and the approval queue read
//! them), so that none of those has to import another for its types. It must never do
//! anything: no I/O, no engine, no policy.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

/// What the caller asks for.
#[derive(Debug, Clone, Copy)]
pub struct CallRequest<'a> {
    /// The authenticated principal making the call.
    pub principal: &'a str,
    pub tool: &'a str,
    /// The input, as JSON text.
    pub input: &'a str,
    /// What started the call when no caller did (`schedule:NAME`, `trigger:NAME`):
    /// recorded with the run, and the key to its success criteria.
    pub started_by: Option<&'a str>,
}

/// A call refused before anything ran (the caller must fix the request), or one that
/// could not be recorded (fail closed).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CallError {
    #[error("unknown tool `{tool}`{hint}")]
    UnknownTool { tool: String, hint: String },
    #[error("input is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("input does not match the schema of `{tool}`: {}", errors.join("; "))]
    InvalidInput { tool: String, errors: Vec<String> },
    /// The call could not be recorded; if the tool ran, its result is withheld.
    #[error("the call could not be recorded, so it was stopped: {0}")]
    NotRecorded(String),
}

/// How the call ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// The tool ran and returned this output.
    Ok { output: Value },
    /// The tool ran and returned, but the output or the time it took fails the
    /// success criteria of the schedule or trigger that started it.
    Unmet { output: Value, reasons: Vec<String> },
    /// A policy denied the call; the tool did not run.
    Denied { reasons: Vec<String> },
    /// The call needs approval; the tool did not run (yet).
    Held {
        tier: Tier,
        reasons: Vec<String>,
        approvers: Vec<String>,
        timeout_secs: Option<u32>,
    },
    /// A limit, a runaway guard or the kill switch refused the call; the tool did not
    /// run. `limit` names it (a `[[limit]]`'s name, `suspended`, `loop`, `breaker`).
    Limited {
        limit: String,
        reason: String,
        /// When the call could pass again, if that is known.
        #[serde(skip_serializing_if = "Option::is_none")]
        resets_ms: Option<i64>,
    },
    /// The run was cut off (warden stopped while it ran); whether the tool had its
    /// effect is unknown.
    Interrupted { reason: String },
    /// The tool ran and failed, or was stopped at a limit.
    Failed {
        #[serde(serialize_with = "failure_kind")]
        kind: Failure,
        error: String,
    },
}

fn failure_kind<S: serde::Serializer>(failure: &Failure, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(failure_name(failure))
}

pub fn failure_name(failure: &Failure) -> &'static str {
    match failure {
        Failure::Tool { .. } => "tool-error",
        Failure::Limit(crate::call::LimitExceeded::Timeout(_)) => "timed-out",
        Failure::Limit(crate::call::LimitExceeded::Memory(_)) => "memory-limit",
        Failure::Limit(crate::call::LimitExceeded::Fuel(_)) => "fuel-exhausted",
        Failure::Limit(crate::call::LimitExceeded::Capacity(..)) => "over-capacity",
        Failure::Trap { .. } => "trapped",
        Failure::BadOutput(_) => "bad-output",
        Failure::Host(_) => "host-error",
    }
}

/// What a call used that limits count besides calls, time and fuel: its declared cost
/// and its outgoing HTTP, measured by the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub cost: f64,
    pub egress_requests: u64,
    pub egress_bytes: u64,
}

impl Usage {
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// Time spent in each step.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    pub policy_us: u64,
    pub instantiate_us: u64,
    pub execute_us: u64,
    pub total_us: u64,
}

/// Everything known about one governed call.
#[derive(Debug, Clone, Serialize)]
pub struct CallReport {
    pub run_id: String,
    pub principal: String,
    pub tool: String,
    pub plugin: String,
    pub plugin_digest: String,
    /// When the call was requested (ms since the Unix epoch); policies see this time.
    pub time_ms: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub decisions: Vec<PolicyDecision>,
    pub log: Vec<LogLine>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<ProgressUpdate>,
    /// Outgoing requests the HTTP grant refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_requests: Vec<String>,
    /// Secrets revealed to the plugin (names only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_reveals: Vec<String>,
    pub peak_memory_bytes: usize,
    /// Fuel the tool consumed, when the engine counts fuel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel_used: Option<u64>,
    /// Host calls the policies and the tool made (0 when auditing is off).
    pub host_calls: u64,
    pub timings: Timings,
    #[serde(skip_serializing_if = "Usage::is_zero")]
    pub usage: Usage,
    /// The approval request, for a held call or one run after approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// What started the call when no caller did (`schedule:NAME`, `trigger:NAME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
}

/// A report's view of its approval request.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRef {
    pub id: String,
    pub state: ApprovalState,
    /// The input the request holds (what an approver must see and vote on).
    pub input_sha256: String,
    pub expires_ms: i64,
    pub approvals_required: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<Vote>,
    /// For a call run after approval: the decisions that held it.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub held_by: Value,
}

impl CallReport {
    /// A report of a call not run yet: no decisions, no output, no timings.
    pub fn new(
        run_id: String,
        principal: &str,
        tool: &str,
        (plugin, digest): (&str, &str),
        time_ms: u64,
    ) -> CallReport {
        CallReport {
            run_id,
            principal: principal.to_string(),
            tool: tool.to_string(),
            plugin: plugin.to_string(),
            plugin_digest: digest.to_string(),
            time_ms,
            outcome: Outcome::Denied { reasons: vec![] },
            decisions: Vec::new(),
            log: Vec::new(),
            progress: Vec::new(),
            denied_requests: Vec::new(),
            secret_reveals: Vec::new(),
            peak_memory_bytes: 0,
            fuel_used: None,
            host_calls: 0,
            timings: Timings::default(),
            usage: Usage::default(),
            approval: None,
            started_by: None,
        }
    }
}

impl Outcome {
    /// The run's status: `ok`, `denied`, `held`, or the failure kind.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Unmet { .. } => "unmet",
            Outcome::Denied { .. } => "denied",
            Outcome::Held { .. } => "held",
            Outcome::Limited { .. } => "limited",
            Outcome::Interrupted { .. } => "interrupted",
            Outcome::Failed { kind, .. } => failure_name(kind),
        }
    }
}

/// Why a call did not produce output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The tool returned an error on purpose.
    Tool { code: String, message: String },
    /// The host stopped it at a limit.
    Limit(LimitExceeded),
    /// The guest trapped (a panic, `unreachable`, a bad memory access...).
    Trap { message: String, backtrace: String },
    /// The output broke the contract (not JSON, too large).
    BadOutput(String),
    /// The host could not set the call up (a granted directory gone, say): nothing of
    /// the tool ran, and it is not the tool's doing.
    Host(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Tool { code, message } => write!(f, "tool error ({code}): {message}"),
            Failure::Limit(limit) => write!(f, "stopped: {limit}"),
            Failure::Trap { message, .. } => write!(f, "trapped: {message}"),
            Failure::BadOutput(why) => write!(f, "bad output: {why}"),
            Failure::Host(why) => write!(f, "host error: {why}"),
        }
    }
}

/// Why a call was stopped by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("memory limit of {0} MiB exceeded")]
    Memory(u64),
    #[error("fuel budget of {0} exhausted")]
    Fuel(u64),
    /// Not run: the calls in flight already hold the server's guest memory bound.
    #[error(
        "not run: the calls in flight hold the server's guest memory bound ({1} MiB; this call needs {0} MiB); call again shortly"
    )]
    Capacity(u64, u64),
}

/// The tier of a held call. Ordered: the highest wins when policies combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Soft,
    Hard,
}

/// One policy's hold on a call: each holding policy's approvers must be satisfied on
/// their own (an approver named by one policy never satisfies another's hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PolicyHold {
    pub policy: String,
    pub tier: Tier,
    /// Principals or `group:NAME`; empty: the configured default approvers.
    pub approvers: Vec<String>,
    /// Distinct approvals from `approvers` the policy asked for (hard holds).
    pub approvals_required: Option<u32>,
}

/// A validated decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Verdict {
    Allow,
    RequireApproval {
        tier: Tier,
        reason: String,
        approvers: Vec<String>,
        timeout_secs: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        approvals_required: Option<u32>,
    },
    Deny {
        reason: String,
    },
}

/// One policy's decision on one call, with what it logged.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyDecision {
    pub policy: String,
    pub digest: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Set when the verdict is a deny because the policy itself failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogLine>,
    #[serde(skip)]
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogLine {
    pub level: &'static str,
    /// `log`, `stdout` or `stderr`.
    pub source: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProgressUpdate {
    pub done: u64,
    pub total: Option<u64>,
    pub message: Option<String>,
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Rejected,
    Expired,
    Executing,
    Executed,
    Failed,
}

impl ApprovalState {
    pub const ALL: [ApprovalState; 7] = [
        ApprovalState::Pending,
        ApprovalState::Approved,
        ApprovalState::Rejected,
        ApprovalState::Expired,
        ApprovalState::Executing,
        ApprovalState::Executed,
        ApprovalState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
            ApprovalState::Executing => "executing",
            ApprovalState::Executed => "executed",
            ApprovalState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ApprovalState> {
        ApprovalState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Nothing more will happen to the request.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ApprovalState::Rejected
                | ApprovalState::Expired
                | ApprovalState::Executed
                | ApprovalState::Failed
        )
    }
}

/// One vote on a request. The queue's own votes (a soft window passing, a hard
/// timeout) are cast by the principal `warden`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vote {
    pub seq: i64,
    pub principal: String,
    /// `approve`, `reject`, `window` (soft window passed) or `expire`.
    pub vote: String,
    pub reason: Option<String>,
    /// The input hash the voter saw; execution checks it is still the input's.
    pub input_sha256: String,
    pub at_ms: i64,
    /// `cli`, `link`, `api` or `queue`.
    pub via: String,
    /// Already in the audit log.
    #[serde(skip)]
    pub audited: bool,
}
