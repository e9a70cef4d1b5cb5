//! Isolation: no state carries from one call or decision to the next; policies see nothing live.

use super::*;

#[tokio::test]
async fn no_state_carries_from_one_call_or_decision_to_the_next() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    env.append_config("[[policy]]\nid = \"p\"\ncomponent = \"{hostile-policy}\"\ntools = [\"counter\"]\nconfig = { mode = \"stateful\" }\n");
    let rt = Runtime::load(Config::load(&env.config()).unwrap())
        .await
        .unwrap();
    for _ in 0..3 {
        let report = rt
            .call(CallRequest {
                principal: "t",
                tool: "counter",
                input: "{}",
                started_by: None,
            })
            .await
            .unwrap();
        match &report.outcome {
            Outcome::Ok { output } => assert_eq!(output["calls"], 1, "tool state leaked"),
            other => panic!("policy state leaked or call failed: {other:?}"),
        }
    }
}

/// A policy's randomness is a function of the action: two evaluations of one action
/// cannot tell themselves apart, and another action gives another stream.
#[tokio::test]
async fn a_policy_cannot_tell_two_evaluations_of_one_action_apart() {
    let env = Env::new(
        "[[plugin]]\nid = \"t\"\ncomponent = \"{text-stats}\"\n[[policy]]\nid = \"p\"\ncomponent = \"{hostile-policy}\"\nconfig = { mode = \"random\" }\n",
    );
    let rt = Runtime::load(Config::load(&env.config()).unwrap())
        .await
        .unwrap();
    let policy = &rt.policies[0];
    let plugin = rt.plugin_for("text_stats").unwrap();
    let action = |input: &str| warden_core::bindings::Action {
        principal: "p".into(),
        tool: "text_stats".into(),
        plugin: plugin.id.clone(),
        plugin_digest: plugin.digest.clone(),
        input: input.into(),
        annotations: plugin.tool("text_stats").unwrap().annotations,
        time_ms: 1_795_000_000_000,
        config: policy.config.clone(),
        usage: "{}".into(),
    };
    let reason = |d: warden_core::call::PolicyDecision| match d.verdict {
        warden_core::call::Verdict::Deny { reason } => reason,
        other => panic!("{other:?}"),
    };
    let first = reason(policy.evaluate(&action(r#"{"text":"a"}"#)).await);
    let again = reason(policy.evaluate(&action(r#"{"text":"a"}"#)).await);
    let other = reason(policy.evaluate(&action(r#"{"text":"b"}"#)).await);
    assert!(first.starts_with("random="), "{first}");
    assert_eq!(first, again, "the same action, the same randomness");
    assert_ne!(first, other, "another action, another stream");
}

#[test]
fn policies_see_a_frozen_clock_no_env_and_no_files() {
    let env = Env::new(
        "[[plugin]]\nid = \"t\"\ncomponent = \"{text-stats}\"\n[[policy]]\nid = \"p\"\ncomponent = \"{hostile-policy}\"\nconfig = { mode = \"probe\" }\n",
    );
    let run = env.warden_with_env(
        &[
            "call",
            "text_stats",
            "--input",
            r#"{"text":"x"}"#,
            "--report",
        ],
        &[("LEAK", "1")],
    );
    assert_eq!(run.code, DENIED, "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let expected = format!("now={} env=0 files=false", report["time_ms"]);
    assert_eq!(report["decisions"][0]["reason"], expected, "{run:?}");
}
