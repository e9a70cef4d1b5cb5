//! Budgets: limits counted by the host and enforced on the governed path, exact under
//! concurrency and across restarts; runaway guards; the kill switch; usage seen by
//! operators and by policies.

use std::sync::Arc;

use super::*;
use crate::approvals::test_tokens;
use support::metric;

/// text-stats (and `extra` plugins, limits and settings) with the test tokens.
fn budget_env(extra: &str) -> Env {
    costed_env("", extra)
}

/// As `budget_env`, with text-stats' declared cost (`cost = N`, or nothing).
fn costed_env(cost: &str, extra: &str) -> Env {
    let env = Env::new("");
    env.write_config(&format!(
        r#"
{tokens}
[approvals]
approvers = ["alice", "bob"]

[[plugin]]
id = "text-stats"
component = "{{text-stats}}"
{cost}

{extra}
"#,
        tokens = test_tokens(),
    ));
    env
}

fn call_as(env: &Env, who: &str, text: &str) -> (support::Run, Value) {
    let input = serde_json::json!({ "text": text }).to_string();
    let run = env.warden(&["call", "text_stats", "--input", &input, "--as", who]);
    let out = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    (run, out)
}

fn next_utc_midnight() -> i64 {
    let now = warden_core::now_ms() as i64;
    (now / 86_400_000 + 1) * 86_400_000
}

#[test]
fn quotas_and_rates_admit_n_and_refuse_the_next_with_its_reset_time_across_restarts() {
    let env = budget_env(
        r#"
[[limit]]
name = "daily"
scope = { principal = "alice", tool = "text_stats" }
kind = "quota"
measure = "calls"
max = 3
per = "day"

[[limit]]
name = "burst"
scope = { principal = "bob" }
kind = "rate"
rate = 1
per = "hour"
burst = 2
"#,
    );
    // Every `warden call` is a fresh process: the counts come back from the history.
    for i in 0..3 {
        let (run, _) = call_as(&env, "alice", &format!("call {i}"));
        assert_eq!(run.code, OK, "{run:?}");
    }
    let midnight = next_utc_midnight();
    let (run, out) = call_as(&env, "alice", "one too many");
    assert_eq!(run.code, DENIED, "{run:?}");
    assert_eq!(out["status"], "limited", "{run:?}");
    assert_eq!(out["limit"], "daily");
    // (Or the one after, when this ran across midnight.)
    let daily_resets = out["resets_ms"].as_i64().unwrap();
    assert!(
        [midnight, next_utc_midnight()].contains(&daily_resets),
        "{out}"
    );
    assert!(
        run.stderr.contains("limit daily: 3 calls of 3; resets at "),
        "which limit, the usage, when it resets: {run:?}"
    );

    for i in 0..2 {
        let (run, _) = call_as(&env, "bob", &format!("call {i}"));
        assert_eq!(run.code, OK, "{run:?}");
    }
    let (run, out) = call_as(&env, "bob", "past the burst");
    assert_eq!(run.code, DENIED, "{run:?}");
    assert_eq!(out["limit"], "burst");
    let now = warden_core::now_ms() as i64;
    let resets = out["resets_ms"].as_i64().unwrap();
    assert!(resets > now && resets <= now + 3_600_000, "{out}");
    // Other principals are not counted by either.
    let (run, _) = call_as(&env, "carol", "free");
    assert_eq!(run.code, OK, "{run:?}");

    let limited = env.warden(&["runs", "list", "--status", "limited", "--json"]);
    assert_eq!(limited.stdout.lines().count(), 2, "{limited:?}");
    let ends: Vec<Value> = audit_records(&env)
        .into_iter()
        .filter(|r| r["kind"] == "run-end" && r["status"] == "limited")
        .collect();
    let mut limits: Vec<&str> = ends.iter().map(|r| r["limit"].as_str().unwrap()).collect();
    limits.sort();
    assert_eq!(limits, ["burst", "daily"], "every refusal is audited");

    let usage = env.warden(&["usage", "--principal", "alice", "--json"]);
    assert_eq!(usage.code, OK, "{usage:?}");
    let usage: Value = serde_json::from_str(&usage.stdout).unwrap();
    let daily = &usage["limits"][0];
    assert_eq!(
        (
            &daily["limit"],
            &daily["used"],
            &daily["max"],
            &daily["remaining"]
        ),
        (&"daily".into(), &3.0.into(), &3.0.into(), &0.0.into()),
        "{usage}"
    );
    assert_eq!(daily["resets_ms"], daily_resets);
    let text = env.warden(&["usage", "--since", "1h"]);
    assert!(
        text.stdout
            .contains("daily: 3 calls of 3 per day used, 0 left")
            && text
                .stdout
                .contains("alice -> text_stats: 3 calls, 1 limited"),
        "{text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_callers_never_overshoot_and_every_slot_comes_back() {
    let env = budget_env(
        r#"
[[limit]]
name = "ten"
kind = "quota"
measure = "calls"
max = 10
per = "hour"

[[limit]]
name = "in-flight"
kind = "concurrency"
max = 64
"#,
    );
    let rt = Arc::new(
        Runtime::load(Config::load(&env.config()).unwrap())
            .await
            .unwrap(),
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (rt, barrier) = (rt.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let input = format!(r#"{{"text":"caller {i}"}}"#);
            barrier.wait().await;
            let report = rt
                .call(CallRequest {
                    principal: "alice",
                    tool: "text_stats",
                    input: &input,
                    started_by: None,
                })
                .await
                .unwrap();
            report.outcome.status()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == "ok").count();
    let limited = statuses.iter().filter(|s| **s == "limited").count();
    assert_eq!((ok, limited), (10, 54), "{statuses:?}");
    let rows = rt.budgets.snapshot(warden_core::now_ms() as i64);
    let flight = rows.iter().find(|r| r.limit == "in-flight").unwrap();
    assert_eq!(flight.used, 0.0, "every concurrency slot is given back");
    let ten = rows.iter().find(|r| r.limit == "ten").unwrap();
    assert_eq!(ten.used, 10.0);
    rt.close();
}

fn fetch_env(limit: &str, port: u16) -> Env {
    budget_env(&format!(
        r#"
[[plugin]]
id = "http-fetch"
component = "{{http-fetch}}"
[plugin.grants]
http = ["http://127.0.0.1:{port}"]

{limit}
"#
    ))
}

#[test]
fn an_egress_budget_stops_a_plugin_mid_call_at_the_request_or_byte_past_it() {
    let server = Listener::http();
    // Requests: a redirect chain needs three; the third is refused mid-call.
    let env = fetch_env(
        r#"
[[limit]]
name = "two-requests"
scope = { plugin = "http-fetch" }
kind = "quota"
measure = "egress_requests"
max = 2
per = "hour"
"#,
        server.port,
    );
    let last = server.url("/final");
    let middle = server.url(&format!("/redirect?to={last}"));
    let first = server.url(&format!("/redirect?to={middle}"));
    let (run, report) = env.call("http_get", &serde_json::json!({ "url": first }).to_string());
    assert_eq!(run.code, TOOL_ERROR, "{run:?}");
    let denied = report["denied_requests"].to_string();
    assert!(
        denied.contains("/final") && denied.contains("limit two-requests"),
        "{report}"
    );
    assert_eq!(report["usage"]["egress_requests"], 2, "{report}");

    // Bytes: the answer's body passes the budget and is cut off there.
    let env = fetch_env(
        r#"
[[limit]]
name = "hundred-bytes"
scope = { tool = "http_get" }
kind = "quota"
measure = "egress_bytes"
max = 100
per = "hour"
"#,
        server.port,
    );
    let long = server.url(&format!("/{}", "x".repeat(300)));
    let (run, report) = env.call("http_get", &serde_json::json!({ "url": long }).to_string());
    assert_eq!(run.code, TOOL_ERROR, "{run:?}");
    assert!(
        report["denied_requests"]
            .to_string()
            .contains("cut off: limit hundred-bytes"),
        "{report}"
    );
    assert!(
        report["usage"]["egress_bytes"].as_u64().unwrap() > 100,
        "{report}"
    );
    // The budget is spent: the next call does not run at all.
    let before = server.count();
    let (run, report) = env.call(
        "http_get",
        &serde_json::json!({ "url": server.url("/small") }).to_string(),
    );
    assert_eq!(run.code, DENIED, "{run:?}");
    assert_eq!(report["limit"], "hundred-bytes", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("egress_bytes of 100"),
        "{report}"
    );
    assert_eq!(server.count(), before, "no connection was made");
}

#[test]
fn a_hold_limit_sends_the_over_budget_call_to_the_queue_and_it_runs_once_when_approved() {
    let env = budget_env(
        r#"
[[limit]]
name = "one-a-day"
scope = { tool = "text_stats" }
kind = "quota"
measure = "calls"
max = 1
on_exceed = "hold"
"#,
    );
    let (run, _) = call_as(&env, "agent", "first");
    assert_eq!(run.code, OK, "{run:?}");
    let (run, held) = call_as(&env, "agent", "second");
    assert_eq!(run.code, HELD, "{run:?}");
    assert_eq!(held["tier"], "hard");
    assert!(
        held["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("limit:one-a-day: limit one-a-day: 1 calls of 1"),
        "{held}"
    );
    let id = held["approval_id"].as_str().unwrap();
    let yes = env.warden(&["approvals", "approve", id, "--token", "token-alice"]);
    assert_eq!(yes.code, OK, "{yes:?}");
    assert!(yes.stdout.contains("\"words\""), "it ran: {yes:?}");
    let again = env.warden(&["approvals", "approve", id, "--token", "token-bob"]);
    assert_eq!(again.code, USAGE, "it runs once: {again:?}");
    let row = env.warden(&["runs", "show", held["run_id"].as_str().unwrap(), "--json"]);
    let row: Value = serde_json::from_str(&row.stdout).unwrap();
    assert_eq!(row["status"], "ok");
    // The approved call is counted: the next one is held again.
    let (run, _) = call_as(&env, "agent", "third");
    assert_eq!(run.code, HELD, "{run:?}");
    let usage = env.warden(&["usage", "--json"]);
    let usage: Value = serde_json::from_str(&usage.stdout).unwrap();
    assert_eq!(usage["limits"][0]["used"], 2.0, "{usage}");
}

#[tokio::test]
async fn a_loop_is_caught_and_a_failing_plugin_s_breaker_opens_fails_fast_and_closes() {
    let hook = Listener::http();
    let env = hostile_env(1, HOSTILE_LIMITS);
    env.append_config(&format!(
        r#"
[approvals.webhook]
url = "{}"

[runaway]
loop_max = 5
loop_window_secs = 60
breaker_error_rate = 0.5
breaker_calls = 4
breaker_cooldown_secs = 1
"#,
        hook.url("/notices")
    ));
    let rt = Runtime::load(Config::load(&env.config()).unwrap())
        .await
        .unwrap();
    let call = |tool: &'static str, input: &'static str| {
        let rt = &rt;
        async move {
            rt.call(CallRequest {
                principal: "agent",
                tool,
                input,
                started_by: None,
            })
            .await
            .unwrap()
        }
    };
    for _ in 0..5 {
        assert_eq!(
            call("text_stats", r#"{"text":"again"}"#)
                .await
                .outcome
                .status(),
            "ok"
        );
    }
    let looped = call("text_stats", r#"{"text":"again"}"#).await;
    match &looped.outcome {
        Outcome::Limited { limit, reason, .. } => {
            assert_eq!(limit, "loop");
            assert!(reason.contains("same input more than 5 times"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        looped.decisions.is_empty(),
        "no policy ran for a refused loop"
    );
    assert_eq!(
        call("text_stats", r#"{"text":"something else"}"#)
            .await
            .outcome
            .status(),
        "ok"
    );

    for _ in 0..4 {
        assert_eq!(call("panic", "{}").await.outcome.status(), "trapped");
    }
    let fast = call("env", "{}").await;
    assert!(
        matches!(&fast.outcome, Outcome::Limited { limit, .. } if limit == "breaker"),
        "{:?}",
        fast.outcome
    );
    assert_eq!(
        rt.budgets
            .runaway
            .open_breakers(warden_core::now_ms() as i64),
        ["hostile"]
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        call("env", "{}").await.outcome.status(),
        "ok",
        "the trial call"
    );
    assert_eq!(
        call("env", "{}").await.outcome.status(),
        "ok",
        "closed again"
    );
    rt.close();

    let kinds: Vec<String> = audit_records(&env)
        .iter()
        .filter_map(|r| r["kind"].as_str().map(str::to_string))
        .filter(|k| k.starts_with("breaker"))
        .collect();
    assert_eq!(kinds, ["breaker-open", "breaker-close"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(hook.received().contains("runaway.loop")
        && hook.received().contains("breaker.opened")
        && hook.received().contains("breaker.closed"))
    {
        assert!(Instant::now() < deadline, "notices: {}", hook.received());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mcp_call(server: &support::Served, text: &str) -> Value {
    let url = server.url("/mcp");
    let input = serde_json::json!({ "text": text }).to_string();
    let run = support::mcp_client(&[
        "--http",
        &url,
        "--token",
        "token-agent",
        "call",
        "text_stats",
        &input,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn suspend_and_resume_take_effect_on_a_running_server_at_once_and_survive_restarts() {
    let env = budget_env(
        r#"
[[limit]]
name = "agent-calls"
scope = { principal = "agent" }
kind = "quota"
measure = "calls"
max = 1000
"#,
    );
    let mut server = env.serve();
    assert_eq!(mcp_call(&server, "before")["is_error"], false);
    let suspend = env.warden(&[
        "suspend",
        "tool",
        "text_stats",
        "--reason",
        "incident 7",
        "--token",
        "token-ops",
    ]);
    assert_eq!(suspend.code, OK, "{suspend:?}");
    let refused = mcp_call(&server, "during");
    assert_eq!(refused["is_error"], true, "{refused}");
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("tool text_stats is suspended: incident 7"),
        "{refused}"
    );
    assert_eq!(
        metric(&server, "warden_limit_refusals_total{limit=\"suspended\"}"),
        1.0
    );
    assert_eq!(
        metric(&server, "warden_limit_used{limit=\"agent-calls\""),
        1.0
    );
    let usage = env.warden(&["usage", "--json", "--token", "token-ops"]);
    let usage: Value = serde_json::from_str(&usage.stdout).unwrap();
    assert_eq!(usage["suspended"][0]["reason"], "incident 7", "{usage}");
    assert_eq!(usage["suspended"][0]["by"], "ops");

    server.stop();
    let mut server = env.serve();
    assert_eq!(mcp_call(&server, "after a restart")["is_error"], true);
    let resume = env.warden(&["resume", "tool", "text_stats", "--token", "token-ops"]);
    assert_eq!(resume.code, OK, "{resume:?}");
    assert_eq!(mcp_call(&server, "resumed")["is_error"], false);
    server.stop();

    let changes: Vec<(String, String)> = audit_records(&env)
        .iter()
        .filter(|r| r["kind"] == "suspend" || r["kind"] == "resume")
        .map(|r| {
            (
                r["kind"].as_str().unwrap().into(),
                r["by"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("suspend".into(), "ops".into()),
            ("resume".into(), "ops".into())
        ]
    );
    let unknown = env.warden(&[
        "suspend",
        "tool",
        "no_such",
        "--reason",
        "x",
        "--token",
        "token-ops",
    ]);
    assert_eq!(unknown.code, USAGE, "{unknown:?}");
    assert!(
        unknown.stderr.contains("no tool named `no_such`"),
        "{unknown:?}"
    );
    let agent = env.warden(&[
        "suspend",
        "principal",
        "x",
        "--reason",
        "x",
        "--token",
        "token-agent",
    ]);
    assert_eq!(
        agent.code, USAGE,
        "an agent cannot pull the switch: {agent:?}"
    );
}

#[test]
fn policies_see_the_caller_s_usage_and_hold_past_the_spend_line() {
    let env = costed_env(
        "cost = 30",
        r#"
[[limit]]
name = "spend-per-principal"
each = "principal"
kind = "quota"
measure = "cost"
max = 1000
per = "day"

[[policy]]
id = "tiers"
component = "{tiered-approval}"
[policy.config]
usage = [{ limit = "spend-per-principal", above = 50, tier = "hard" }]
"#,
    );
    let check = env.warden(&["check"]);
    assert_eq!(check.code, OK, "{check:?}");
    for i in 0..2 {
        let (run, _) = call_as(&env, "alice", &format!("spend {i}"));
        assert_eq!(run.code, OK, "{run:?}");
    }
    let (run, held) = call_as(&env, "alice", "over the line");
    assert_eq!(run.code, HELD, "{run:?}");
    assert!(
        held["reasons"][0]
            .as_str()
            .unwrap()
            .contains("spend-per-principal used 60 (above 50)"),
        "{held}"
    );
    // Counted per principal: another one starts at 0.
    let (run, _) = call_as(&env, "bob", "fresh");
    assert_eq!(run.code, OK, "{run:?}");
}

#[test]
fn a_limit_whose_scope_matches_nothing_is_a_config_error_with_its_place() {
    for (scope, says) in [
        (
            r#"{ tool = "txt_stats" }"#,
            "counts tool `txt_stats`, which matches no tool",
        ),
        (
            r#"{ plugin = "text-stat" }"#,
            "counts plugin `text-stat`, which matches no configured plugin",
        ),
        (
            r#"{ principal = "mallory" }"#,
            "counts principal `mallory`, which matches no principal",
        ),
        (
            r#"{ schedule = "nightly" }"#,
            "counts schedule `nightly`, which matches no [[schedule]]",
        ),
    ] {
        let env = budget_env(&format!(
            "[[limit]]\nname = \"typo\"\nscope = {scope}\nkind = \"quota\"\nmeasure = \"calls\"\nmax = 1\n"
        ));
        let run = env.warden(&["check"]);
        assert_eq!(run.code, USAGE, "{run:?}");
        assert!(run.stderr.contains(says), "{scope}: {run:?}");
        assert!(
            run.stderr.contains("warden.toml:"),
            "file:line:column: {run:?}"
        );
    }
    let env = budget_env("[[limit]]\nname = \"x\"\nkind = \"quota\"\nmax = 1\n");
    let run = env.warden(&["check"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(run.stderr.contains("a quota needs a measure"), "{run:?}");
}

#[test]
fn counts_carry_over_a_reload_of_a_running_server() {
    let env = budget_env(
        r#"
[[limit]]
name = "three"
scope = { principal = "agent" }
kind = "quota"
measure = "calls"
max = 3
"#,
    );
    let server = env.serve();
    for i in 0..2 {
        assert_eq!(mcp_call(&server, &format!("before {i}"))["is_error"], false);
    }
    // The same limit, with a new alert setting: the count stays.
    let text = std::fs::read_to_string(env.config()).unwrap();
    std::fs::write(
        env.config(),
        text.replace("max = 3\n", "max = 3\nalert_at = [0.5]\n"),
    )
    .unwrap();
    let reload = env.warden(&["reload"]);
    assert_eq!(reload.code, OK, "{reload:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&server, "warden_reloads_total{result=\"ok\"}") < 1.0 {
        assert!(Instant::now() < deadline, "no reload: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mcp_call(&server, "after")["is_error"], false);
    let refused = mcp_call(&server, "one too many");
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("limit three: 3 calls of 3"),
        "{refused}"
    );
}
