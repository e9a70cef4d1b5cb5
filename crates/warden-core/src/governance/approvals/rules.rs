//! The rules of approval, apart from where requests are kept: what a held call's request
//! looks like (tiers, timeouts, each policy's approvers and quorum), who may decide,
//! when a request is satisfied, and what a decision on a decided request says.
//!
//! Pure functions of a request and the config; they never touch the store.

use crate::call::{ApprovalState, Tier};
use crate::config::ApprovalsConfig;

use super::{Approval, ApprovalError, HoldSet, NewRequest};

impl Approval {
    pub fn approvals(&self) -> usize {
        self.votes.iter().filter(|v| v.vote == "approve").count()
    }

    /// For each hold, the distinct approvals it has from its own approvers.
    pub fn progress(&self, config: &ApprovalsConfig) -> Vec<(String, u32, u32)> {
        self.holds
            .iter()
            .map(|h| {
                let allowed = expand(config, &h.approvers);
                let mut by: Vec<&str> = self
                    .votes
                    .iter()
                    .filter(|v| v.vote == "approve" && allowed.contains(&v.principal))
                    .map(|v| v.principal.as_str())
                    .collect();
                by.sort_unstable();
                by.dedup();
                (h.policy.clone(), by.len() as u32, h.required)
            })
            .collect()
    }

    /// Has every hold its approvals?
    pub fn satisfied(&self, config: &ApprovalsConfig) -> bool {
        self.progress(config)
            .iter()
            .all(|(_, have, need)| have >= need)
    }
}

/// `sha256:<hex>` of an input.
pub fn input_hash(input: &str) -> String {
    format!("sha256:{}", crate::util::sha256_hex(input.as_bytes()))
}

/// May `principal` vote on `a`? Never on its own request; otherwise only if named by
/// the request's approvers, directly or through a configured group.
pub fn may_decide(
    config: &ApprovalsConfig,
    a: &Approval,
    principal: &str,
) -> Result<(), ApprovalError> {
    let refuse = |why: String| ApprovalError::NotAllowed {
        id: a.id.clone(),
        principal: principal.to_string(),
        why,
    };
    if principal == a.principal {
        return Err(refuse(
            "nobody may approve or reject their own request".into(),
        ));
    }
    if principal == "warden" {
        return Err(refuse("`warden` is the queue's own principal".into()));
    }
    if a.holds.iter().all(|h| h.approvers.is_empty()) {
        return Err(refuse(
            "the request names no approvers and [approvals] approvers is empty".into(),
        ));
    }
    if a.holds
        .iter()
        .any(|h| expand(config, &h.approvers).iter().any(|p| p == principal))
    {
        Ok(())
    } else {
        Err(refuse(format!(
            "not among the approvers ({})",
            a.approvers.join(", ")
        )))
    }
}

/// Approver entries as principals: `group:NAME` replaced by its members.
pub fn expand(config: &ApprovalsConfig, approvers: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in approvers {
        let members = match entry.strip_prefix("group:") {
            Some(group) => config.groups.get(group).cloned().unwrap_or_default(),
            None => vec![entry.clone()],
        };
        for m in members {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

pub(super) fn already(a: &Approval) -> ApprovalError {
    let detail = match a.votes.last() {
        Some(v) if v.principal == "warden" => format!(" ({} at {} ms)", v.vote, v.at_ms),
        Some(v) => format!(" (last decided by {}: {})", v.principal, v.vote),
        None => a
            .result
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
    };
    ApprovalError::AlreadyDecided {
        id: a.id.clone(),
        state: a.state.as_str(),
        detail,
    }
}

pub fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Soft => "soft",
        Tier::Hard => "hard",
    }
}

/// An approval id derived from its run id (one request per run).
pub(super) fn new_id(run_id: &str) -> String {
    format!("apr-{}", run_id.strip_prefix("run-").unwrap_or(run_id))
}

/// The request a held call becomes (not yet queued: see `insert`).
pub fn prepare(config: &ApprovalsConfig, request: &NewRequest<'_>) -> Approval {
    let timeout = match request.tier {
        Tier::Soft => request.timeout_secs.unwrap_or(config.soft_window_secs),
        Tier::Hard => request.timeout_secs.unwrap_or(config.hard_timeout_secs),
    };
    let holds: Vec<HoldSet> = request
        .holds
        .iter()
        .map(|h| HoldSet {
            policy: h.policy.clone(),
            tier: h.tier,
            approvers: if h.approvers.is_empty() {
                config.approvers.clone()
            } else {
                h.approvers.clone()
            },
            required: match h.tier {
                Tier::Soft => 1,
                Tier::Hard => h.approvals_required.unwrap_or(config.hard_approvals).max(1),
            },
        })
        .collect();
    let mut approvers: Vec<String> = Vec::new();
    for h in &holds {
        for a in &h.approvers {
            if !approvers.contains(a) {
                approvers.push(a.clone());
            }
        }
    }
    let required = holds.iter().map(|h| h.required).max().unwrap_or(1);
    Approval {
        id: new_id(request.run_id),
        run_id: request.run_id.to_string(),
        principal: request.principal.to_string(),
        tool: request.tool.to_string(),
        plugin: request.plugin.to_string(),
        plugin_digest: request.plugin_digest.to_string(),
        input: request.input.to_string(),
        input_sha256: input_hash(request.input),
        decisions: request.decisions.clone(),
        tier: request.tier,
        reasons: request.reasons.to_vec(),
        approvers,
        required,
        holds,
        created_ms: request.now_ms,
        expires_ms: request.now_ms + i64::from(timeout) * 1000,
        state: ApprovalState::Pending,
        state_ms: request.now_ms,
        result: None,
        votes: Vec::new(),
        started_by: request.started_by.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{PolicyHold, Vote};
    use serde_json::Value;

    fn config() -> ApprovalsConfig {
        let mut c = ApprovalsConfig {
            approvers: vec!["group:finance".into()],
            ..ApprovalsConfig::default()
        };
        c.groups
            .insert("finance".into(), vec!["fran".into(), "fred".into()]);
        c
    }

    fn hold(policy: &str, tier: Tier, approvers: &[&str], required: Option<u32>) -> PolicyHold {
        PolicyHold {
            policy: policy.into(),
            tier,
            approvers: approvers.iter().map(|a| a.to_string()).collect(),
            approvals_required: required,
        }
    }

    fn request(holds: &[PolicyHold], tier: Tier, timeout: Option<u32>) -> Approval {
        prepare(
            &config(),
            &NewRequest {
                run_id: "run-1",
                principal: "agent",
                tool: "pay",
                plugin: "p",
                plugin_digest: "sha256:0",
                input: "{\"amount\":5}",
                decisions: Value::Null,
                tier,
                reasons: &[],
                holds,
                timeout_secs: timeout,
                now_ms: 1_000,
                started_by: None,
            },
        )
    }

    fn approve(a: &mut Approval, who: &str) {
        a.votes.push(Vote {
            seq: a.votes.len() as i64,
            principal: who.into(),
            vote: "approve".into(),
            reason: None,
            input_sha256: a.input_sha256.clone(),
            at_ms: 2_000,
            via: "cli".into(),
            audited: false,
        });
    }

    #[test]
    fn a_request_takes_its_policies_approvers_quorum_and_timeout() {
        let a = request(
            &[
                hold("limits", Tier::Hard, &["alice"], Some(2)),
                hold("hours", Tier::Soft, &[], None),
            ],
            Tier::Hard,
            None,
        );
        assert_eq!(a.id, "apr-1");
        assert_eq!(a.state, ApprovalState::Pending);
        assert_eq!(a.input_sha256, input_hash("{\"amount\":5}"));
        // A soft hold needs one approval; the policy that named nobody gets the default.
        assert_eq!(
            a.holds.iter().map(|h| h.required).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(a.holds[1].approvers, ["group:finance"]);
        assert_eq!(a.approvers, ["alice", "group:finance"]);
        assert_eq!(a.required, 2);
        let hard = i64::from(ApprovalsConfig::default().hard_timeout_secs) * 1000;
        assert_eq!(a.expires_ms, 1_000 + hard);
        assert_eq!(request(&[], Tier::Soft, Some(7)).expires_ms, 8_000);
    }

    #[test]
    fn only_named_approvers_decide_and_never_on_their_own_request() {
        let c = config();
        let a = request(&[hold("x", Tier::Hard, &[], None)], Tier::Hard, None);
        assert!(may_decide(&c, &a, "fran").is_ok(), "a group member");
        for who in ["agent", "warden", "mallory"] {
            assert!(
                matches!(
                    may_decide(&c, &a, who),
                    Err(ApprovalError::NotAllowed { .. })
                ),
                "{who}"
            );
        }
        let mut none = a.clone();
        none.holds[0].approvers.clear();
        assert!(may_decide(&c, &none, "fran").is_err());
    }

    #[test]
    fn every_hold_needs_its_own_approvers_quorum() {
        let c = config();
        let mut a = request(
            &[
                hold("limits", Tier::Hard, &["alice", "bob"], Some(2)),
                hold("hours", Tier::Hard, &["group:finance"], None),
            ],
            Tier::Hard,
            None,
        );
        approve(&mut a, "alice");
        approve(&mut a, "alice");
        approve(&mut a, "fran");
        assert!(!a.satisfied(&c), "one distinct approval of two for limits");
        approve(&mut a, "bob");
        assert!(a.satisfied(&c));
        assert_eq!(
            a.progress(&c),
            [("limits".to_string(), 2, 2), ("hours".to_string(), 1, 1)]
        );
        // alice approving does not satisfy the finance hold.
        let mut b = request(
            &[
                hold("limits", Tier::Hard, &["alice"], None),
                hold("hours", Tier::Hard, &["group:finance"], None),
            ],
            Tier::Hard,
            None,
        );
        approve(&mut b, "alice");
        assert!(!b.satisfied(&c));
    }

    #[test]
    fn expand_lists_group_members_once() {
        let c = config();
        assert_eq!(
            expand(
                &c,
                &["fran".into(), "group:finance".into(), "group:none".into()]
            ),
            ["fran", "fred"]
        );
    }
}
