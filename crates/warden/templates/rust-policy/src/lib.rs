//! `{{name}}`: a warden approval policy. It sees the action (who, which tool, the
//! validated input, annotations, the time, its own config) and decides: allow, hold for
//! a person, or deny. It has no clock and no I/O, so its decisions are reproducible.

use serde_json::Value;
use warden_guest::policy::{Action, ApprovalSpec, Decision, Guest, Tier};

struct Policy;

impl Guest for Policy {
    fn evaluate(action: Action) -> Decision {
        let config: Value = serde_json::from_str(&action.config).unwrap_or(Value::Null);
        if action.annotations.destructive {
            let approvers = config["approvers"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            return Decision::RequireApproval(ApprovalSpec {
                tier: Tier::Hard,
                reason: format!("{} is destructive", action.tool),
                approvers,
                timeout_secs: None,
                approvals_required: None,
            });
        }
        Decision::Allow
    }
}

warden_guest::export_policy!(Policy);
