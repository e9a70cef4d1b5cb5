//! Approval policies: loading them, evaluating one decision in a fresh sandbox, and
//! combining the decisions of every policy in scope.
//!
//! Fail closed: a policy that traps, runs out of time or memory, or returns a
//! malformed decision denies the call. It must never let an error become an allow.

use std::path::PathBuf;
use std::time::Instant;

use wasmtime::Store;

use crate::bindings::policy::PolicyPre;
use crate::bindings::{Action, Decision, Tier as WitTier};
use crate::call::{PolicyDecision, PolicyHold, Tier, Verdict};
use crate::config::{Limits, PolicyConfig};
use crate::sandbox::component::World;
use crate::sandbox::context::PolicyState;
use crate::sandbox::limits;
use crate::sandbox::shared::Shared;
use crate::util::pattern_matches;

/// Bounds on a well-formed decision.
const MAX_REASON: usize = 2048;
const MAX_APPROVERS: usize = 64;
const MAX_PRINCIPAL: usize = 128;
const MAX_TIMEOUT_SECS: u32 = 30 * 24 * 3600;
const MAX_APPROVALS_REQUIRED: u32 = 16;

pub struct Policy {
    pub id: String,
    pub digest: String,
    pub path: PathBuf,
    /// Tool-name patterns this policy applies to.
    pub tools: Vec<String>,
    /// The policy's config table as JSON text, passed in every action.
    pub config: String,
    pub limits: Limits,
    pre: PolicyPre<PolicyState>,
    fuel: bool,
}

/// The combination of every decision in scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Combined {
    Allow,
    Hold {
        tier: Tier,
        reasons: Vec<String>,
        /// Every approver any holding policy named (for display; `holds` decides).
        approvers: Vec<String>,
        timeout_secs: Option<u32>,
        /// The most approvals any policy asked for.
        approvals_required: Option<u32>,
        /// Each holding policy, with its own approvers.
        holds: Vec<PolicyHold>,
    },
    Deny {
        reasons: Vec<String>,
    },
}

impl Policy {
    pub fn load(shared: &Shared, config: &PolicyConfig) -> anyhow::Result<Policy> {
        let loaded =
            shared.component(&config.component, config.sha256.as_deref(), World::Policy)?;
        let pre = PolicyPre::new(shared.policy_linker.instantiate_pre(&loaded.component)?)?;
        Ok(Policy {
            id: config.id.clone(),
            digest: loaded.digest,
            path: config.component.clone(),
            tools: config.tools.clone(),
            config: config.config.to_string(),
            limits: config.limits,
            pre,
            fuel: shared.fuel,
        })
    }

    pub fn applies_to(&self, tool: &str) -> bool {
        self.tools.iter().any(|p| pattern_matches(p, tool))
    }

    /// Instantiate once and drop the instance, so the first decision does not pay for
    /// its pool slot's first use (making the memory accessible, mapping the initial
    /// image): the slot is kept for this component. Nothing of the guest runs; an error
    /// is left for the first decision to report.
    pub async fn warm(&self) {
        let _running = crate::sandbox::engine::Running::start();
        let mut store = Store::new(
            self.pre.engine(),
            PolicyState::new(&self.limits, 0, [0; 32]),
        );
        if limits::apply(&mut store, &self.limits, self.fuel).is_ok() {
            let instantiate = self.pre.instantiate_async(&mut store);
            let _ = tokio::time::timeout(limits::call_budget(&self.limits), instantiate).await;
        }
    }

    /// Decide on `action` in a fresh instance. Never fails: failure is a deny.
    pub async fn evaluate(&self, action: &Action) -> PolicyDecision {
        let started = Instant::now();
        let _running = crate::sandbox::engine::Running::start();
        let mut store = Store::new(
            self.pre.engine(),
            PolicyState::new(&self.limits, action.time_ms, seed_of(action)),
        );
        let result = match limits::apply(&mut store, &self.limits, self.fuel) {
            Err(e) => Err(format!("{e:#}")),
            Ok(()) => {
                let run = async {
                    let instance = self.pre.instantiate_async(&mut store).await?;
                    instance.call_evaluate(&mut store, action).await
                };
                match tokio::time::timeout(limits::call_budget(&self.limits), run).await {
                    Err(_) => Err(format!("timed out after {} ms", self.limits.timeout_ms)),
                    Ok(Err(e)) => Err(
                        match limits::classify(&e, &self.limits, store.data().limiter.hit) {
                            Some(limit) => limit.to_string(),
                            None => match e.downcast_ref::<wasmtime::Trap>() {
                                Some(trap) => format!("trapped: {trap}"),
                                None => format!("{e:#}"),
                            },
                        },
                    ),
                    Ok(Ok(decision)) => validate(decision),
                }
            }
        };
        let log = std::mem::take(&mut store.data_mut().log).into_lines();
        let (verdict, failure) = match result {
            Ok(verdict) => (verdict, None),
            Err(why) => {
                let reason = format!("policy {} failed, denying: {why}", self.id);
                (Verdict::Deny { reason }, Some(why))
            }
        };
        PolicyDecision {
            policy: self.id.clone(),
            digest: self.digest.clone(),
            verdict,
            failure,
            log,
            elapsed: started.elapsed(),
        }
    }
}

/// The seed of a decision's randomness: a digest of every field of the action, each
/// prefixed with its length.
fn seed_of(action: &Action) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"warden-policy-random-1");
    for field in [
        &action.principal,
        &action.tool,
        &action.plugin,
        &action.plugin_digest,
        &action.input,
        &action.config,
        &action.usage,
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.update(action.time_ms.to_le_bytes());
    let a = action.annotations;
    h.update([
        a.read_only as u8,
        a.destructive as u8,
        a.idempotent as u8,
        a.open_world as u8,
    ]);
    h.finalize().into()
}

/// Check a decision is well formed; anything else is a failure (and so a deny).
fn validate(decision: Decision) -> Result<Verdict, String> {
    let text = |what: &str, s: &str| -> Result<(), String> {
        if s.trim().is_empty() {
            return Err(format!("malformed decision: empty {what}"));
        }
        if s.len() > MAX_REASON {
            return Err(format!(
                "malformed decision: {what} longer than {MAX_REASON} bytes"
            ));
        }
        if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(format!("malformed decision: control characters in {what}"));
        }
        Ok(())
    };
    match decision {
        Decision::Allow => Ok(Verdict::Allow),
        Decision::Deny(reason) => {
            text("deny reason", &reason)?;
            Ok(Verdict::Deny { reason })
        }
        Decision::RequireApproval(spec) => {
            text("approval reason", &spec.reason)?;
            if spec.approvers.len() > MAX_APPROVERS {
                return Err(format!(
                    "malformed decision: more than {MAX_APPROVERS} approvers"
                ));
            }
            for approver in &spec.approvers {
                let ok = !approver.is_empty()
                    && approver.len() <= MAX_PRINCIPAL
                    && !approver
                        .chars()
                        .any(|c| c.is_control() || c.is_whitespace());
                if !ok {
                    return Err(format!("malformed decision: invalid approver {approver:?}"));
                }
            }
            if let Some(t) = spec.timeout_secs
                && !(1..=MAX_TIMEOUT_SECS).contains(&t)
            {
                return Err(format!(
                    "malformed decision: timeout-secs {t} outside 1..={MAX_TIMEOUT_SECS}"
                ));
            }
            if let Some(n) = spec.approvals_required
                && !(1..=MAX_APPROVALS_REQUIRED).contains(&n)
            {
                return Err(format!(
                    "malformed decision: approvals-required {n} outside 1..={MAX_APPROVALS_REQUIRED}"
                ));
            }
            let tier = match spec.tier {
                WitTier::Soft => Tier::Soft,
                WitTier::Hard => Tier::Hard,
            };
            Ok(Verdict::RequireApproval {
                tier,
                reason: spec.reason,
                approvers: spec.approvers,
                timeout_secs: spec.timeout_secs,
                approvals_required: spec.approvals_required,
            })
        }
    }
}

/// Any deny denies; otherwise the highest tier holds; otherwise allow.
pub fn combine(decisions: &[PolicyDecision]) -> Combined {
    let mut denies = Vec::new();
    let mut hold: Option<Tier> = None;
    let mut reasons = Vec::new();
    let mut approvers: Vec<String> = Vec::new();
    let mut timeout: Option<u32> = None;
    let mut required: Option<u32> = None;
    let mut holds = Vec::new();
    for d in decisions {
        match &d.verdict {
            Verdict::Allow => {}
            Verdict::Deny { reason } => denies.push(format!("{}: {reason}", d.policy)),
            Verdict::RequireApproval {
                tier,
                reason,
                approvers: who,
                timeout_secs,
                approvals_required,
            } => {
                hold = hold.max(Some(*tier));
                required = required.max(*approvals_required);
                holds.push(PolicyHold {
                    policy: d.policy.clone(),
                    tier: *tier,
                    approvers: who.clone(),
                    approvals_required: *approvals_required,
                });
                reasons.push(format!("{}: {reason}", d.policy));
                for a in who {
                    if !approvers.contains(a) {
                        approvers.push(a.clone());
                    }
                }
                // The strictest (shortest) timeout any policy asked for.
                timeout = match (timeout, timeout_secs) {
                    (Some(a), Some(b)) => Some(a.min(*b)),
                    (a, b) => a.or(*b),
                };
            }
        }
    }
    if !denies.is_empty() {
        return Combined::Deny { reasons: denies };
    }
    match hold {
        Some(tier) => Combined::Hold {
            tier,
            reasons,
            approvers,
            timeout_secs: timeout,
            approvals_required: required,
            holds,
        },
        None => Combined::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn decision(policy: &str, verdict: Verdict) -> PolicyDecision {
        PolicyDecision {
            policy: policy.into(),
            digest: String::new(),
            verdict,
            failure: None,
            log: vec![],
            elapsed: Duration::ZERO,
        }
    }

    fn hold(tier: Tier, timeout: Option<u32>) -> Verdict {
        Verdict::RequireApproval {
            tier,
            reason: "r".into(),
            approvers: vec!["ops".into()],
            timeout_secs: timeout,
            approvals_required: None,
        }
    }

    #[test]
    fn any_deny_denies_and_highest_tier_wins() {
        assert_eq!(combine(&[]), Combined::Allow);
        assert_eq!(combine(&[decision("a", Verdict::Allow)]), Combined::Allow);
        let soft_hard = combine(&[
            decision("a", hold(Tier::Soft, Some(60))),
            decision("b", hold(Tier::Hard, Some(30))),
        ]);
        assert!(
            matches!(
                soft_hard,
                Combined::Hold {
                    tier: Tier::Hard,
                    timeout_secs: Some(30),
                    ..
                }
            ),
            "{soft_hard:?}"
        );
        let denied = combine(&[
            decision("a", hold(Tier::Hard, None)),
            decision(
                "b",
                Verdict::Deny {
                    reason: "no".into(),
                },
            ),
        ]);
        assert_eq!(
            denied,
            Combined::Deny {
                reasons: vec!["b: no".into()]
            }
        );
    }

    #[test]
    fn malformed_decisions_are_refused() {
        use crate::bindings::ApprovalSpec;
        assert!(validate(Decision::Deny(String::new())).is_err());
        let spec = |approvers: Vec<String>, timeout| ApprovalSpec {
            tier: WitTier::Soft,
            reason: "ok".into(),
            approvers,
            timeout_secs: timeout,
            approvals_required: None,
        };
        assert!(validate(Decision::RequireApproval(spec(vec!["".into()], None))).is_err());
        let mut zero = spec(vec![], None);
        zero.approvals_required = Some(0);
        assert!(validate(Decision::RequireApproval(zero)).is_err());
        assert!(validate(Decision::RequireApproval(spec(vec![], Some(0)))).is_err());
        assert!(
            validate(Decision::RequireApproval(spec(
                vec!["group:ops".into()],
                Some(60)
            )))
            .is_ok()
        );
    }
}
