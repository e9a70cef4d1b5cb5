//! Upstream MCP servers nobody here wrote (`mcp-server-time` from PyPI,
//! `@modelcontextprotocol/server-everything` from npm) behind warden: their tools are
//! warden's tools, every call goes through policies, approvals, the audit log and run
//! history; a changed definition is withheld until accepted; a dead or hanging upstream
//! fails its own calls only.

use std::time::Duration;

use super::*;
use crate::approvals::{audit_kinds, test_tokens};
use crate::support::{mcp_client, mcp_client_spawn, upstream_servers};

/// `time` (prefix `time_`) and `everything` (prefix `ev_`, a few tools offered), an
/// approver and an operator token; `extra` appended.
fn upstream_env(extra: &str) -> Env {
    let (time, everything, _) = upstream_servers();
    let env = Env::new("");
    env.write_config(&format!(
        r#"
{tokens}
[approvals]
approvers = ["alice"]

[[upstream]]
id = "time"
command = ["{time}", "--local-timezone", "UTC"]
prefix = "time_"

[[upstream]]
id = "everything"
command = ["{everything}"]
prefix = "ev_"
tools = ["echo", "get-sum", "get-env", "trigger-long-running-operation", "get-structured-content"]
timeout_ms = 20000
{extra}
"#,
        tokens = test_tokens(),
        time = time.display(),
        everything = everything.display(),
    ));
    env
}

fn tool_list(env: &Env) -> Vec<Value> {
    let run = env.warden(&["tools", "--json"]);
    assert_eq!(run.code, OK, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn upstream_tools_are_listed_and_called_through_the_governed_path() {
    let env = upstream_env("");
    let tools = tool_list(&env);
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"time_get_current_time"), "{names:?}");
    assert!(names.contains(&"ev_get-sum"), "{names:?}");
    assert!(
        !names.contains(&"ev_get-tiny-image"),
        "only the tools the operator offers: {names:?}"
    );
    let time = tools
        .iter()
        .find(|t| t["name"] == "time_get_current_time")
        .unwrap();
    assert_eq!(time["plugin"], "time");
    assert_eq!(
        time["inputSchema"]["required"],
        serde_json::json!(["timezone"])
    );
    assert_eq!(time["outputSchema"]["required"][0], "timezone");

    let (run, report) = env.call("time_get_current_time", r#"{"timezone":"Europe/Paris"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(report["output"]["timezone"], "Europe/Paris", "{report}");
    assert_eq!(report["plugin"], "time");
    // Input is checked against the upstream's own schema before anything runs.
    let (run, _) = env.call("time_get_current_time", r#"{"zone":"UTC"}"#);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(run.stderr.contains("does not match the schema"), "{run:?}");

    // In the run history and the audit log like any call.
    let run_id = report["run_id"].as_str().unwrap();
    let shown = env.warden(&["runs", "show", run_id, "--json"]);
    assert_eq!(shown.code, OK, "{shown:?}");
    let kinds = audit_kinds(&env, run_id);
    assert!(
        kinds.contains(&"run-start".to_string()) && kinds.contains(&"run-end".to_string()),
        "{kinds:?}"
    );
    // The definitions seen first were recorded as accepted, in the log.
    let pins: Vec<Value> = warden_core::store::audit::read_all(&env.path().join("data/audit"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "upstream-pin")
        .collect();
    assert!(
        pins.iter()
            .any(|p| p["tool"] == "get_current_time" && p["by"] == "first-sight"),
        "{pins:?}"
    );

    // The upstream's environment is what the config gives it: PATH, nothing else.
    let (run, report) = env.call("ev_get-env", "{}");
    assert_eq!(run.code, OK, "{run:?}");
    let seen: Value = serde_json::from_str(report["output"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        seen.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["PATH"],
        "{seen}"
    );

    // Over MCP, to a client that knows nothing of upstreams.
    let config = env.config();
    let warden = env!("CARGO_BIN_EXE_warden");
    let run = mcp_client(&[
        "--stdio",
        warden,
        "-c",
        config.to_str().unwrap(),
        "serve",
        "--stdio",
        "--",
        "call",
        "ev_get-sum",
        r#"{"a": 2, "b": 40}"#,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let out: Value = serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(out["is_error"], false, "{out}");
    assert!(out["text"].as_str().unwrap().contains("42"), "{out}");
}

#[test]
fn policies_deny_and_hold_upstream_tools_and_an_approved_call_runs_once() {
    let env = upstream_env(
        r#"
[[policy]]
id = "tiers"
component = "{tiered-approval}"
[policy.config]
tools = { "ev_echo" = "hard", "time_convert_time" = "deny" }
"#,
    );
    let (run, report) = env.call(
        "time_convert_time",
        r#"{"source_timezone":"UTC","time":"12:00","target_timezone":"Asia/Tokyo"}"#,
    );
    assert_eq!(run.code, DENIED, "{run:?}");
    assert_eq!(status(&report), "denied");

    let run = env.warden(&[
        "call",
        "ev_echo",
        "--input",
        r#"{"message":"approved by a person"}"#,
        "--as",
        "agent",
    ]);
    assert_eq!(run.code, HELD, "{run:?}");
    let held: Value = serde_json::from_str(&run.stdout).unwrap();
    let id = held["approval_id"].as_str().unwrap();
    let yes = env.warden(&["approvals", "approve", id, "--token", "token-alice"]);
    assert_eq!(yes.code, OK, "{yes:?}");
    assert!(yes.stdout.contains("Echo: approved by a person"), "{yes:?}");
    let again = env.warden(&["approvals", "approve", id, "--token", "token-bob"]);
    assert_eq!(again.code, USAGE, "runs once: {again:?}");
}

#[test]
fn a_changed_definition_is_withheld_until_an_operator_accepts_it() {
    let env = upstream_env("");
    let (run, _) = env.call("ev_echo", r#"{"message":"first"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    // The server now defines `echo` differently from what was accepted (as a
    // compromised server would): here, the accepted digest is made to differ.
    let db = rusqlite::Connection::open(env.path().join("data/runs.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE upstream_pins SET digest = 'sha256:' || hex(randomblob(32)) WHERE upstream = 'everything' AND tool = 'echo'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);

    let (run, report) = env.call("ev_echo", r#"{"message":"second"}"#);
    assert_eq!(run.code, DENIED, "{run:?}");
    let reason = report["decisions"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("changed since it was accepted")
            && reason.contains("warden upstreams accept everything echo"),
        "{reason}"
    );
    assert_eq!(report["decisions"][0]["policy"], "upstream:everything");
    // Agents are not shown the changed definition either: a stub says it is withheld.
    let echo = tool_list(&env)
        .into_iter()
        .find(|t| t["name"] == "ev_echo")
        .unwrap();
    assert!(
        echo["description"]
            .as_str()
            .unwrap()
            .starts_with("Withheld by warden"),
        "{echo}"
    );
    assert_eq!(echo["inputSchema"], serde_json::json!({ "type": "object" }));
    // The others are unaffected.
    let (run, _) = env.call("ev_get-sum", r#"{"a":1,"b":1}"#);
    assert_eq!(run.code, OK, "{run:?}");

    let listed = env.warden(&["upstreams", "list", "--json"]);
    assert_eq!(listed.code, OK, "{listed:?}");
    let listed: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    let everything = listed.iter().find(|u| u["id"] == "everything").unwrap();
    let echo = everything["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ev_echo")
        .unwrap();
    assert!(!echo["changed"].is_null(), "{echo}");

    let refused = env.warden(&[
        "upstreams",
        "accept",
        "everything",
        "echo",
        "--token",
        "token-alice",
    ]);
    assert_eq!(
        refused.code, USAGE,
        "an approver is not an operator: {refused:?}"
    );
    let accept = env.warden(&[
        "upstreams",
        "accept",
        "everything",
        "echo",
        "--token",
        "token-ops",
    ]);
    assert_eq!(accept.code, OK, "{accept:?}");
    assert!(
        accept.stdout.contains("accepted everything echo"),
        "{accept:?}"
    );
    let (run, report) = env.call("ev_echo", r#"{"message":"third"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(report["output"]["text"], "Echo: third");
    let echo = tool_list(&env)
        .into_iter()
        .find(|t| t["name"] == "ev_echo")
        .unwrap();
    assert_eq!(echo["description"], "Echoes back the input string");
    let accepted: Vec<Value> = warden_core::store::audit::read_all(&env.path().join("data/audit"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "upstream-pin" && r["by"] == "ops")
        .collect();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert!(
        accepted[0]["previous"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_ne!(accepted[0]["previous"], accepted[0]["digest"]);

    // A pin in the config wins, and only the config changes it.
    env.append_config(
        "[upstream.pins]\n\"get-sum\" = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n",
    );
    let (run, _) = env.call("ev_get-sum", r#"{"a":1,"b":1}"#);
    assert_eq!(run.code, DENIED, "{run:?}");
    let accept = env.warden(&[
        "upstreams",
        "accept",
        "everything",
        "get-sum",
        "--token",
        "token-ops",
    ]);
    assert_eq!(accept.code, USAGE, "{accept:?}");
    assert!(accept.stderr.contains("pinned in the config"), "{accept:?}");
}

#[test]
fn a_hanging_or_missing_upstream_fails_its_own_calls_only() {
    let env = upstream_env(
        r#"
[[upstream]]
id = "ghost"
command = ["/nonexistent/mcp-server"]
prefix = "ghost_"
"#,
    );
    // Short timeout for everything: a long operation is cut off.
    let text = std::fs::read_to_string(env.config())
        .unwrap()
        .replace("timeout_ms = 20000", "timeout_ms = 1500");
    std::fs::write(env.config(), text).unwrap();
    let (run, report) = env.call(
        "ev_trigger-long-running-operation",
        r#"{"duration": 10, "steps": 2}"#,
    );
    assert_failed(&run, &report, "timed-out");
    let (run, report) = env.call("time_get_current_time", r#"{"timezone":"UTC"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(report["output"]["timezone"], "UTC");

    let listed = env.warden(&["upstreams", "list", "--json"]);
    assert_eq!(listed.code, OK, "{listed:?}");
    let listed: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    let ghost = listed.iter().find(|u| u["id"] == "ghost").unwrap();
    assert_eq!(ghost["running"], false, "{ghost}");
    assert!(
        ghost["last_error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/mcp-server"),
        "{ghost}"
    );
}

#[test]
fn an_upstream_killed_mid_call_fails_that_call_and_is_restarted_for_the_next() {
    let env = upstream_env("");
    let run = env.warden(&["tokens", "create", "agent-1", "--role", "agent", "--write"]);
    assert_eq!(run.code, OK, "{run:?}");
    let token = run.stdout.trim().to_string();
    let served = env.serve();
    let url = served.url("/mcp");
    let slow = mcp_client_spawn(&[
        "--http",
        &url,
        "--token",
        &token,
        "call",
        "ev_trigger-long-running-operation",
        r#"{"duration": 8, "steps": 4}"#,
    ]);
    std::thread::sleep(Duration::from_millis(2000));
    // Kill the upstream (the server-everything process warden started).
    let children = std::process::Command::new("pgrep")
        .args(["-P", &served.child.id().to_string()])
        .output()
        .unwrap();
    let mut killed = 0;
    for pid in String::from_utf8_lossy(&children.stdout).split_whitespace() {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.contains("server-everything") {
            let status = std::process::Command::new("kill")
                .args(["-9", pid])
                .status()
                .unwrap();
            assert!(status.success());
            killed += 1;
        }
    }
    assert_eq!(killed, 1, "one server-everything under warden");
    let out = slow.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap();
    assert_eq!(result["is_error"], true, "{result}");
    assert!(
        result["text"]
            .as_str()
            .unwrap_or_default()
            .contains("upstream"),
        "{result}"
    );
    // The next call starts it again (after its backoff) and answers.
    let mut answered = None;
    for _ in 0..20 {
        let run = mcp_client(&[
            "--http",
            &url,
            "--token",
            &token,
            "call",
            "ev_get-sum",
            r#"{"a": 20, "b": 22}"#,
        ]);
        let out: Value = serde_json::from_str(run.stdout.lines().last().unwrap_or("null"))
            .unwrap_or(Value::Null);
        if out["is_error"] == false {
            answered = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let answered = answered.expect("the upstream came back");
    assert!(
        answered["text"].as_str().unwrap().contains("42"),
        "{answered}"
    );
    let restarts =
        crate::support::metric(&served, "warden_upstream_restarts{upstream=\"everything\"}");
    assert_eq!(restarts, 1.0);
    let up = crate::support::metric(&served, "warden_upstream_up{upstream=\"everything\"}");
    assert_eq!(up, 1.0);
}

#[test]
fn an_upstream_secret_reaches_its_environment_and_never_a_result_or_record() {
    let env = upstream_env("secret_env = { API_TOKEN = \"api_token\" }");
    let init = env.warden(&["secrets", "init"]);
    assert_eq!(init.code, OK, "{init:?}");
    let set = env.warden_stdin(&["secrets", "set", "api_token"], &format!("{SECRET}\n"));
    assert_eq!(set.code, OK, "{set:?}");
    let (run, report) = env.call("ev_get-env", "{}");
    assert_eq!(run.code, OK, "{run:?}");
    let text = report["output"]["text"].as_str().unwrap();
    assert!(
        text.contains("API_TOKEN") && text.contains("[REDACTED]"),
        "the upstream had it, the caller sees it redacted: {text}"
    );
    assert_no_secret(&env, &[&run]);
}

#[test]
fn two_upstreams_offering_one_name_is_a_config_error() {
    let (_, everything, _) = upstream_servers();
    let env = Env::new("");
    env.write_config(&format!(
        "[[upstream]]\nid = \"a\"\ncommand = [\"{e}\"]\ntools = [\"echo\"]\n\n[[upstream]]\nid = \"b\"\ncommand = [\"{e}\"]\ntools = [\"echo\"]\n",
        e = everything.display()
    ));
    let run = env.warden(&["check"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(
        run.stderr
            .contains("upstream \"b\" offers tool `echo`, which \"a\" already exports"),
        "{run:?}"
    );
}

#[test]
fn an_http_upstream_gets_its_token_from_the_vault_and_no_record_shows_it() {
    // The upstream: another warden, serving text-stats over streamable HTTP to holders
    // of a bearer token only.
    let inner = Env::new("[[plugin]]\nid = \"text-stats\"\ncomponent = \"{text-stats}\"\n");
    let run = inner.warden(&[
        "tokens",
        "create",
        "front-door",
        "--role",
        "agent",
        "--write",
    ]);
    assert_eq!(run.code, OK, "{run:?}");
    let token = run.stdout.trim().to_string();
    let served = inner.serve();
    let url = served.url("/mcp");

    let env = Env::new("");
    env.write_config(&format!(
        r#"
[[upstream]]
id = "inner"
url = "{url}"
prefix = "inner_"
secret_headers = [{{ header = "authorization", secret = "inner_token", format = "Bearer {{}}" }}]

[[upstream]]
id = "no-token"
url = "{url}"
prefix = "anon_"
"#
    ));
    assert_eq!(env.warden(&["secrets", "init"]).code, OK);
    let set = env.warden_stdin(&["secrets", "set", "inner_token"], &format!("{token}\n"));
    assert_eq!(set.code, OK, "{set:?}");

    let (run, report) = env.call("inner_text_stats", r#"{"text":"one two three"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(report["output"]["words"], 3, "{report}");
    // Without the header the upstream refuses: its tools are not offered.
    let listed = env.warden(&["upstreams", "list", "--json"]);
    let listed: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    let anon = listed.iter().find(|u| u["id"] == "no-token").unwrap();
    assert_eq!(anon["tools"], serde_json::json!([]), "{anon}");
    let (run, _) = env.call("anon_text_stats", r#"{"text":"x"}"#);
    assert_eq!(run.code, USAGE, "{run:?}");

    // The inner warden saw the call as the token's principal.
    let runs = inner.warden(&["runs", "list", "--json"]);
    assert!(
        runs.stdout.contains("\"principal\":\"front-door\""),
        "{runs:?}"
    );
    // The token is in no file the front warden wrote, nor its output.
    let mut files = vec![env.path().join("data")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_none_or(|e| e != "cwasm") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(!text.contains(&token), "{} holds the token", path.display());
        }
    }
    assert!(!run.stdout.contains(&token) && !run.stderr.contains(&token));
}

#[test]
fn a_tool_its_server_calls_destructive_is_held_and_runs_once_approved() {
    let (_, _, filesystem) = upstream_servers();
    let env = Env::new("");
    let files = env.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("kept.txt"), "as it was").unwrap();
    env.write_config(&format!(
        r#"
{tokens}
[approvals]
approvers = ["alice"]

[[upstream]]
id = "fs"
command = ["{fs}", "{dir}"]
prefix = "fs_"
tools = ["write_file", "read_text_file"]
"#,
        tokens = test_tokens(),
        fs = filesystem.display(),
        dir = files.display(),
    ));
    let target = files.join("kept.txt").display().to_string();
    let (run, report) = env.call(
        "fs_read_text_file",
        &serde_json::json!({ "path": target }).to_string(),
    );
    assert_eq!(run.code, OK, "a read-only tool runs: {run:?}");
    assert!(report.to_string().contains("as it was"), "{report}");

    let input = serde_json::json!({ "path": target, "content": "overwritten" }).to_string();
    let run = env.warden(&["call", "fs_write_file", "--input", &input, "--as", "agent"]);
    assert_eq!(run.code, HELD, "the server marks it destructive: {run:?}");
    let held: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        std::fs::read_to_string(files.join("kept.txt")).unwrap(),
        "as it was",
        "nothing ran"
    );
    let id = held["approval_id"].as_str().unwrap();
    let request = env.warden(&["approvals", "show", id, "--json"]);
    assert!(
        request
            .stdout
            .contains("upstream fs marks `fs_write_file` destructive"),
        "{request:?}"
    );
    let yes = env.warden(&["approvals", "approve", id, "--token", "token-alice"]);
    assert_eq!(yes.code, OK, "{yes:?}");
    assert_eq!(
        std::fs::read_to_string(files.join("kept.txt")).unwrap(),
        "overwritten"
    );
    let again = env.warden(&["approvals", "approve", id, "--token", "token-bob"]);
    assert_eq!(again.code, USAGE, "runs once: {again:?}");
}

#[test]
fn an_upstream_tool_list_change_reaches_warden_clients() {
    use std::io::BufRead;
    let env = Env::new("");
    let python = crate::support::mcp_python();
    let server = support::repo_root().join("tests/upstreams/growing_server.py");
    env.write_config(&format!(
        "{tokens}\n[[upstream]]\nid = \"growing\"\ncommand = [\"{python}\", \"{server}\"]\n",
        tokens = test_tokens(),
        python = python.display(),
        server = server.display(),
    ));
    let run = env.warden(&["tokens", "create", "agent-1", "--role", "agent", "--write"]);
    assert_eq!(run.code, OK, "{run:?}");
    let token = run.stdout.trim().to_string();
    let served = env.serve();
    let url = served.url("/mcp");
    let mut listener = mcp_client_spawn(&["--http", &url, "--token", &token, "listen"]);
    let mut lines = std::io::BufReader::new(listener.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("listening"), "{first}");

    let grow = mcp_client(&["--http", &url, "--token", &token, "call", "grow", "{}"]);
    assert_eq!(grow.code, 0, "{grow:?}");
    let heard = lines.next().and_then(Result::ok).unwrap_or_default();
    let heard: Value = serde_json::from_str(&heard).unwrap_or(Value::Null);
    assert_eq!(heard["changed"], true, "{heard}");
    assert!(
        heard["tools"]
            .as_array()
            .is_some_and(|t| t.contains(&Value::from("grown"))),
        "the new tool is offered: {heard}"
    );
    let _ = listener.wait();
    // The same upstream process answered (it kept its state across the reload).
    let call = mcp_client(&["--http", &url, "--token", &token, "call", "grown", "{}"]);
    let out: Value = serde_json::from_str(call.stdout.lines().last().unwrap_or("null")).unwrap();
    assert_eq!(out["is_error"], false, "{out}");
    assert!(
        out["text"]
            .as_str()
            .unwrap_or_default()
            .contains("here now"),
        "{out}"
    );
}

#[test]
fn a_lazy_upstream_offers_its_accepted_tools_and_starts_on_its_first_call() {
    let env = upstream_env("start = \"lazy\"");
    // Never seen before: started once to learn its tools (recorded as accepted).
    let (run, _) = env.call("ev_get-sum", r#"{"a":1,"b":2}"#);
    assert_eq!(run.code, OK, "{run:?}");
    // Known now: loaded without starting it, its tools from the accepted definitions.
    let listed = env.warden(&["upstreams", "list", "--json"]);
    let listed: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    let everything = listed.iter().find(|u| u["id"] == "everything").unwrap();
    assert_eq!(everything["running"], false, "{everything}");
    assert!(
        everything["tools"].as_array().unwrap().len() >= 4,
        "{everything}"
    );
    let (run, report) = env.call("ev_get-sum", r#"{"a":40,"b":2}"#);
    assert_eq!(run.code, OK, "started by the call: {run:?}");
    assert!(report["output"]["text"].as_str().unwrap().contains("42"));
}
