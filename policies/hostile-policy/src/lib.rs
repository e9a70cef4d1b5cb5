//! Test fixture: a policy that misbehaves in the way its config's `mode` names.
//! Every one of these must make warden deny the call (fail closed).
use std::sync::atomic::{AtomicU32, Ordering};

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
            // Must always allow: every decision gets a fresh instance.
            "stateful" => {
                static CALLS: AtomicU32 = AtomicU32::new(0);
                match CALLS.fetch_add(1, Ordering::Relaxed) {
                    0 => Decision::Allow,
                    n => Decision::Deny(format!("state carried over from {n} earlier decisions")),
                }
            }
            // Reports what the sandbox shows it: the clock, the environment, the files.
            "probe" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let env = std::env::vars().count();
                let files = std::fs::read_dir("/").is_ok()
                    || std::fs::read_to_string("/etc/passwd").is_ok();
                Decision::Deny(format!("now={now} env={env} files={files}"))
            }
            // Reports what its randomness gives it: the same action must give the same.
            "random" => {
                use std::hash::BuildHasher;
                let a = std::collections::hash_map::RandomState::new().hash_one(42u64);
                let b = std::collections::hash_map::RandomState::new().hash_one(42u64);
                Decision::Deny(format!("random={a:016x}{b:016x}"))
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
                approvals_required: None,
            }),
        }
    }
}

warden_guest::export_policy!(HostilePolicy);
