//! What the queue holds and is asked: a request (`Approval`) and each holding policy's
//! share of it (`HoldSet`), a new request, a choice and the ballot that casts it, a
//! pending webhook notice. Plain data; the rules and the store act on it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::call::{ApprovalRef, ApprovalState, PolicyHold, Tier, Vote};

/// One holding policy's share of a request: who may approve for it, and how many
/// distinct approvals it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldSet {
    pub policy: String,
    pub tier: Tier,
    /// Principals or `group:NAME` (the configured default when the policy named none).
    pub approvers: Vec<String>,
    pub required: u32,
}

/// A request, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub id: String,
    pub run_id: String,
    pub principal: String,
    pub tool: String,
    pub plugin: String,
    pub plugin_digest: String,
    /// The canonical input that will run, exactly.
    pub input: String,
    pub input_sha256: String,
    /// The policy decisions that held the call.
    pub decisions: Value,
    pub tier: Tier,
    pub reasons: Vec<String>,
    /// Principals or `group:NAME` who may decide (every holding policy's).
    pub approvers: Vec<String>,
    /// The most distinct approvals any one hold needs.
    pub required: u32,
    /// Each holding policy's approvers and approvals; all must be satisfied.
    pub holds: Vec<HoldSet>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub state: ApprovalState,
    pub state_ms: i64,
    /// The outcome or why it ended, once it has.
    pub result: Option<String>,
    pub votes: Vec<Vote>,
    /// What started the call (`schedule:NAME`, `trigger:NAME`), if no caller did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
}

impl Approval {
    /// What a call report shows of this request.
    pub fn reference(&self, held_by: Value) -> ApprovalRef {
        let a = self;
        ApprovalRef {
            id: a.id.clone(),
            state: a.state,
            input_sha256: a.input_sha256.clone(),
            expires_ms: a.expires_ms,
            approvals_required: a.required,
            votes: a.votes.clone(),
            held_by,
        }
    }
}

/// A call the policies held, to be queued.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub run_id: &'a str,
    pub principal: &'a str,
    pub tool: &'a str,
    pub plugin: &'a str,
    pub plugin_digest: &'a str,
    pub input: &'a str,
    pub decisions: Value,
    pub tier: Tier,
    pub reasons: &'a [String],
    /// Each holding policy with the approvers it named (the configured default applies
    /// to a policy that named none).
    pub holds: &'a [PolicyHold],
    pub timeout_secs: Option<u32>,
    pub now_ms: i64,
    /// What started the call (`schedule:NAME`, `trigger:NAME`), if no caller did.
    pub started_by: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Approve,
    Reject,
}

/// One principal's decision on a request.
#[derive(Debug, Clone, Copy)]
pub struct Ballot<'a> {
    /// Who decides (proved by their token or their link).
    pub principal: &'a str,
    pub choice: Choice,
    pub reason: Option<&'a str>,
    /// `cli`, `link` or `api`.
    pub via: &'a str,
    /// The input hash the decider was shown: a vote on another input is refused.
    pub input_sha256: &'a str,
    /// Break-glass: an operator (`principal`) decides for this approver, and the vote
    /// says so.
    pub on_behalf_of: Option<&'a str>,
    pub now_ms: i64,
}

/// The delivery state of a request's webhook notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub attempts: u32,
    pub delivered: bool,
    pub gave_up: bool,
    pub last_error: Option<String>,
}

/// What an executed request's run returned, kept with the request so a caller waiting
/// on another host than the one that ran it gets the result (as its run history
/// stores it: redacted, bounded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ran {
    pub status: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub backtrace: Option<String>,
}
