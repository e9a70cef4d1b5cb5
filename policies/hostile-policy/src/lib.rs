//! Test fixture: a policy that misbehaves in the way its config's `mode` names.
//! Every one of these must make warden deny the call (fail closed).
use serde_json::Value;
use warden_guest::policy::{Action, ApprovalSpec, Decision, Guest, Tier};

struct HostilePolicy;

impl Guest for HostilePolicy {
    fn evaluate(action: Action) -> Decision {
        let config: Value = serde_json::from_str(&action.config).unwrap_or_default();
        match config["mode"].as_str().unwrap_or_default() {
            "allow" => Decision::Allow,
            "trap" => panic!("hostile policy trapped on purpose"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 1 << 20]).collect();
                Decision::Deny(format!("allocated {}", blocks.len()))
            }
            // Well-typed but meaningless: no reason, zero timeout, junk approvers.
            _ => Decision::RequireApproval(ApprovalSpec {
                tier: Tier::Hard,
                reason: String::new(),
                approvers: vec![String::from("\u{0}"); 10_000],
                timeout_secs: Some(0),
            }),
        }
    }
}

warden_guest::export_policy!(HostilePolicy);
