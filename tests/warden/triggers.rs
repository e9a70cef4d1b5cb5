//! Triggers: a signed webhook starts a governed call; anything unsigned, forged,
//! replayed or oversized runs nothing and is counted; a redelivery runs once.

use super::*;
use crate::approvals::test_tokens;
use support::http;
use warden_core::automation::signature::sign;

const GH_SECRET: &str = "gh-hook-secret-9f2c";
const SLACK_SECRET: &str = "slack-signing-7ad1";
const HMAC_SECRET: &str = "hmac-key-55e0";

fn trigger_env() -> Env {
    let env = Env::new("");
    let init = env.warden(&["secrets", "init"]);
    assert_eq!(init.code, OK, "{init:?}");
    for (name, value) in [
        ("gh_hook", GH_SECRET),
        ("slack_hook", SLACK_SECRET),
        ("ci_hook", HMAC_SECRET),
    ] {
        let run = env.warden_stdin(&["secrets", "set", name], &format!("{value}\n"));
        assert_eq!(run.code, OK, "{run:?}");
    }
    env.write_config(&format!(
        r#"
{tokens}
[[plugin]]
id = "text-stats"
component = "{{text-stats}}"

[[trigger]]
name = "gh"
tool = "text_stats"
signature = "github"
secret = "gh_hook"
events = ["push"]
[trigger.map]
text = "/head_commit/message"

[[trigger]]
name = "slack"
tool = "text_stats"
signature = "slack"
secret = "slack_hook"
[trigger.map]
text = "/event/text"

[[trigger]]
name = "ci"
tool = "text_stats"
signature = "hmac"
secret = "ci_hook"
header = "x-ci-signature"
max_body_kb = 1
input = {{ text = "fixed" }}
"#,
        tokens = test_tokens(),
    ));
    env
}

fn github(
    served: &support::Served,
    body: &str,
    delivery: &str,
    signature: Option<&str>,
) -> (u16, Value) {
    let good = format!("sha256={}", sign(GH_SECRET.as_bytes(), &[body.as_bytes()]));
    let mut headers = vec![
        ("x-github-event", "push"),
        ("x-github-delivery", delivery),
        ("content-type", "application/json"),
    ];
    let sig = signature.map(str::to_string).unwrap_or(good);
    if signature != Some("") {
        headers.push(("x-hub-signature-256", sig.as_str()));
    }
    let (status, text) = http("POST", &served.url("/hooks/gh"), &headers, Some(body));
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn runs_of(env: &Env, origin: &str) -> Vec<Value> {
    let run = env.warden(&["runs", "list", "--started-by", origin, "--json"]);
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn signed_github_deliveries_run_once_and_forged_ones_never() {
    let env = trigger_env();
    let mut served = env.serve();
    let body = r#"{"head_commit":{"message":"fix the flaky test"}}"#;

    let (status, answer) = github(&served, body, "d-1", None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "ok", "{answer}");
    assert_eq!(
        answer["output"]["words"], 4,
        "the payload mapped onto the input: {answer}"
    );
    let run_id = answer["run_id"].as_str().unwrap().to_string();

    // GitHub retries a delivery it thinks failed: it runs once.
    let (status, again) = github(&served, body, "d-1", None);
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &Value::Bool(true)),
        "{again}"
    );

    for (why, sig) in [
        ("unsigned", Some("")),
        (
            "forged",
            Some("sha256=0000000000000000000000000000000000000000000000000000000000000000"),
        ),
        ("signed with another key", None),
    ] {
        let forged_body = if why == "signed with another key" {
            // A valid signature of a different body.
            r#"{"head_commit":{"message":"rm -rf"}}"#
        } else {
            body
        };
        let sig_for_other;
        let sig = if why == "signed with another key" {
            sig_for_other = format!(
                "sha256={}",
                sign(b"not-the-secret", &[forged_body.as_bytes()])
            );
            Some(sig_for_other.as_str())
        } else {
            sig
        };
        let (status, answer) = github(&served, forged_body, &format!("d-{why}"), sig);
        assert_eq!(status, 401, "{why}: {answer}");
    }
    // A ping, and an event the trigger does not take: acknowledged, nothing runs.
    let ping_sig = format!("sha256={}", sign(GH_SECRET.as_bytes(), &[b"{}"]));
    let (status, _) = http(
        "POST",
        &served.url("/hooks/gh"),
        &[
            ("x-github-event", "ping"),
            ("x-github-delivery", "p-1"),
            ("x-hub-signature-256", &ping_sig),
        ],
        Some("{}"),
    );
    assert_eq!(status, 202);

    let (_, metrics) = http(
        "GET",
        &served.url("/metrics"),
        &[("authorization", "Bearer token-ops")],
        None,
    );
    served.stop();
    assert!(
        metrics.contains(
            "warden_trigger_deliveries_total{trigger=\"gh\",result=\"refused-signature\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_trigger_deliveries_total{trigger=\"gh\",result=\"duplicate\"} 1")
    );

    let runs = runs_of(&env, "trigger:gh");
    assert_eq!(runs.len(), 1, "only the genuine delivery ran: {runs:?}");
    assert_eq!(runs[0]["id"], run_id.as_str());
    assert_eq!(runs[0]["principal"], "trigger:gh");
    let audit = warden_core::store::audit::read_all(&env.path().join("data/audit")).unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r["kind"] == "auth-denied" && r["path"] == "/hooks/gh"),
        "a forged delivery is audited like a failed token"
    );
    assert!(
        audit
            .iter()
            .any(|r| r["kind"] == "run-start" && r["started_by"] == "trigger:gh")
    );
    let everything = serde_json::to_string(&audit).unwrap();
    assert!(
        !everything.contains(GH_SECRET),
        "the signing secret never reaches the log"
    );
}

#[test]
fn slack_deliveries_need_a_fresh_signature_and_url_verification_answers_the_challenge() {
    let env = trigger_env();
    let mut served = env.serve();
    let post = |body: &str, stamp: i64| {
        let stamp = stamp.to_string();
        let sig = format!(
            "v0={}",
            sign(
                SLACK_SECRET.as_bytes(),
                &[b"v0:", stamp.as_bytes(), b":", body.as_bytes()]
            )
        );
        http(
            "POST",
            &served.url("/hooks/slack"),
            &[
                ("x-slack-signature", sig.as_str()),
                ("x-slack-request-timestamp", stamp.as_str()),
            ],
            Some(body),
        )
    };
    let now = (warden_core::now_ms() / 1000) as i64;
    let event =
        r#"{"type":"event_callback","event_id":"Ev1","event":{"text":"deploy the thing now"}}"#;
    let (status, answer) = post(event, now);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"words\":4"), "{answer}");
    let (status, answer) = post(event, now);
    assert!(
        status == 200 && answer.contains("duplicate"),
        "same event_id: {answer}"
    );
    let replay = event.replace("Ev1", "Ev2");
    let (status, answer) = post(&replay, now - 600);
    assert_eq!(status, 401, "ten minutes old is a replay: {answer}");
    let (status, answer) = post(r#"{"type":"url_verification","challenge":"c-123"}"#, now);
    assert_eq!(status, 200);
    assert!(answer.contains("c-123"), "{answer}");
    served.stop();
    assert_eq!(runs_of(&env, "trigger:slack").len(), 1);
}

#[test]
fn generic_hmac_deliveries_are_bounded_and_bad_payloads_run_nothing() {
    let env = trigger_env();
    let mut served = env.serve();
    let post = |path: &str, body: &str| {
        let sig = sign(HMAC_SECRET.as_bytes(), &[body.as_bytes()]);
        http(
            "POST",
            &served.url(path),
            &[("x-ci-signature", sig.as_str())],
            Some(body),
        )
    };
    let (status, answer) = post("/hooks/ci", r#"{"build":1}"#);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"words\":1"), "the fixed input: {answer}");
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2048));
    let (status, _) = post("/hooks/ci", &big);
    assert_eq!(status, 413, "over max_body_kb");
    let (status, _) = post("/hooks/ci", "not json");
    assert_eq!(status, 400);
    let (status, _) = post("/hooks/nope", "{}");
    assert_eq!(status, 404);
    // The github trigger's mapping finds nothing in this payload.
    let body = r#"{"zen":"x"}"#;
    let sig = format!("sha256={}", sign(GH_SECRET.as_bytes(), &[body.as_bytes()]));
    let (status, answer) = http(
        "POST",
        &served.url("/hooks/gh"),
        &[
            ("x-github-event", "push"),
            ("x-github-delivery", "d-9"),
            ("x-hub-signature-256", &sig),
        ],
        Some(body),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("/head_commit/message"), "{answer}");
    served.stop();
    assert_eq!(runs_of(&env, "trigger:ci").len(), 1);
    assert!(runs_of(&env, "trigger:gh").is_empty());
}

#[test]
fn a_trigger_whose_secret_is_not_in_the_vault_is_a_located_config_error() {
    let env = trigger_env();
    let text = std::fs::read_to_string(env.config())
        .unwrap()
        .replace("secret = \"ci_hook\"", "secret = \"missing_hook\"");
    std::fs::write(env.config(), text).unwrap();
    let run = env.warden(&["check"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(
        run.stderr.contains("trigger[2].secret") && run.stderr.contains("missing_hook"),
        "{run:?}"
    );
    let list = env.warden(&["triggers", "list"]);
    assert_eq!(list.code, OK, "{list:?}");
    assert!(list.stdout.contains("POST /hooks/gh"), "{list:?}");
}
