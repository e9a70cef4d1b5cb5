//! `warden serve` driven by a client nobody here wrote: the official MCP Python SDK,
//! over streamable HTTP and stdio (part of the one `warden` test binary).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::OK;
use std::io::BufRead;

use crate::support::{Env, Run, http, mcp_client, mcp_client_spawn};

/// A config with text-stats (allowed), notes (`notes_read` denied, `notes_write`
/// held hard), an agent token, an approver and an operator; returns the env and the
/// (agent, approver, operator) tokens.
fn served_env(extra: &str) -> (Env, [String; 3]) {
    let env = Env::new("");
    std::fs::create_dir_all(env.path().join("notes")).unwrap();
    env.write_config(&format!(
        r#"
[approvals]
approvers = ["alice"]
wait_ms = 20000
{extra}

[[plugin]]
id = "text-stats"
component = "{{text-stats}}"

[[plugin]]
id = "notes"
component = "{{notes}}"
[plugin.grants]
files = [{{ host = "notes", guest = "/notes", mode = "rw" }}]

[[policy]]
id = "tiers"
component = "{{tiered-approval}}"
[policy.config]
tools = {{ notes_read = "deny", notes_write = "hard" }}
"#
    ));
    let token = |name: &str, role: &str| {
        let run = env.warden(&["tokens", "create", name, "--role", role, "--write"]);
        assert_eq!(run.code, OK, "{run:?}");
        run.stdout.trim().to_string()
    };
    let tokens = [
        token("agent-1", "agent"),
        token("alice", "approver"),
        token("ops", "operator"),
    ];
    (env, tokens)
}

/// The served config and its agent's token.
pub fn agent_env() -> (Env, String) {
    let (env, [agent, _, _]) = served_env("");
    (env, agent)
}

fn json_of(run: &Run) -> Value {
    let last = run.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

fn check_basic(out: &Value) {
    let tools = &out["tools"];
    assert_eq!(tools["text_stats"]["title"], "Text statistics", "{out}");
    assert_eq!(tools["text_stats"]["read_only"], true);
    assert_eq!(tools["notes_write"]["destructive"], true);
    assert_eq!(tools["notes_read"]["input_schema"]["required"][0], "name");
    assert_eq!(out["allowed"]["is_error"], false, "{out}");
    assert_eq!(out["allowed"]["structured"]["words"], 7, "{out}");
    // The result names its run, for `warden runs show`.
    let run_id = out["allowed"]["meta"]["warden/run_id"]
        .as_str()
        .unwrap_or_default();
    assert!(run_id.starts_with("run-"), "{out}");
    assert_eq!(out["allowed"]["meta"]["warden/status"], "ok", "{out}");
    assert_eq!(out["denied"]["meta"]["warden/status"], "denied", "{out}");
    assert_eq!(out["denied"]["is_error"], true);
    assert!(
        out["denied"]["text"]
            .as_str()
            .unwrap()
            .contains("denied by policy"),
        "{out}"
    );
    assert_eq!(
        out["invalid"]["is_error"], true,
        "bad input is a tool error the model can fix"
    );
    assert!(
        out["invalid"]["text"]
            .as_str()
            .unwrap()
            .contains("does not match the schema"),
        "{out}"
    );
    assert!(
        out["unknown"].as_str().unwrap().contains("unknown tool"),
        "an unknown tool is a protocol error: {out}"
    );
}

#[test]
fn mcp_client_over_http_lists_and_calls_tools_through_the_governed_path() {
    let (env, [agent, _, ops]) = served_env("");
    let server = env.serve();
    let url = server.url("/mcp");
    let run = mcp_client(&["--http", &url, "--token", &agent, "basic"]);
    assert_eq!(run.code, 0, "{run:?}");
    check_basic(&json_of(&run));

    // Every call is in the run history as the token's principal (rows are committed
    // in batches a few milliseconds after the call).
    let auth = format!("Bearer {ops}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let runs = loop {
        let (status, body) = http(
            "GET",
            &server.url("/api/runs?tool=text_stats"),
            &[("authorization", &auth)],
            None,
        );
        assert_eq!(status, 200, "{body}");
        let runs: Value = serde_json::from_str(&body).unwrap();
        if runs[0].is_object() || Instant::now() > deadline {
            break runs;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(runs[0]["principal"], "agent-1", "{runs}");
    assert_eq!(runs[0]["status"], "ok");
}

#[test]
fn http_requires_a_valid_token_and_checks_host_and_origin() {
    let (env, [agent, approver, _]) = served_env("");
    let server = env.serve();
    let url = server.url("/mcp");
    let run = mcp_client(&["--http", &url, "--token", "wdn_not-a-token", "basic"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stdout.is_empty(), "nothing was served: {run:?}");
    let (status, _) = http("POST", &url, &[], Some("{}"));
    assert_eq!(status, 401);
    let records = warden_core::store::audit::read_all(&env.path().join("data/audit")).unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "auth-denied" && r["reason"] == "unknown token"),
        "401s are audited"
    );

    let auth = format!("Bearer {agent}");
    let (status, _) = http(
        "GET",
        &server.url("/api/runs"),
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(status, 403, "an agent token is not an operator's");
    let (status, _) = http(
        "POST",
        &url,
        &[("authorization", &format!("Bearer {approver}"))],
        Some("{}"),
    );
    assert_eq!(status, 403, "an approver token may not call tools");
    let (status, _) = http(
        "GET",
        &server.url("/healthz"),
        &[("origin", "http://evil.example")],
        None,
    );
    assert_eq!(status, 403, "a browser page on another site is refused");
    let rebinding = format!("http://{}/healthz", server.addr);
    let (status, _) = http(
        "GET",
        &rebinding.replace("127.0.0.1", "localhost"),
        &[],
        None,
    );
    assert_eq!(status, 200);
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "DNS rebinding: {answer}"
    );
}

#[test]
fn mcp_client_over_stdio_gets_the_same_tools_and_nothing_else_on_stdout() {
    let (env, _) = served_env("[server]\nstdio_principal = \"desktop-agent\"");
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
        "basic",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    check_basic(&json_of(&run));
    let runs = env.warden(&["runs", "list", "--tool", "text_stats", "--json"]);
    let row: Value = serde_json::from_str(runs.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(row["principal"], "desktop-agent");
}

#[test]
fn held_call_reports_progress_and_runs_when_approved_through_the_api() {
    let (env, [agent, approver, _]) = served_env("");
    let server = env.serve();
    let api = server.url("/api/approvals");
    let approve = std::thread::spawn(move || {
        let auth = format!("Bearer {approver}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no pending approval appeared");
            let (_, body) = http(
                "GET",
                &format!("{api}?state=pending"),
                &[("authorization", &auth)],
                None,
            );
            let pending: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if let Some(id) = pending[0]["id"].as_str() {
                std::thread::sleep(Duration::from_millis(1200));
                let sha = pending[0]["input_sha256"].as_str().unwrap();
                let post = |body: &str| {
                    http(
                        "POST",
                        &format!("{api}/{id}/approve"),
                        &[
                            ("authorization", &auth),
                            ("content-type", "application/json"),
                        ],
                        Some(body),
                    )
                };
                let (status, body) = post(r#"{"reason":"no hash"}"#);
                assert_eq!(status, 400, "the hash of what was seen is required: {body}");
                let other = format!(r#"{{"input_sha256":"sha256:{}"}}"#, "0".repeat(64));
                let (status, body) = post(&other);
                assert_eq!(status, 409, "a vote on another input is refused: {body}");
                let (status, body) = post(&format!(
                    r#"{{"reason":"checked the note","input_sha256":"{sha}"}}"#
                ));
                assert_eq!(status, 200, "{body}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let run = mcp_client(&[
        "--http",
        &server.url("/mcp"),
        "--token",
        &agent,
        "call",
        "notes_write",
        r#"{"name":"approved","text":"written after sign-off"}"#,
    ]);
    approve.join().unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    let out = json_of(&run);
    assert_eq!(out["is_error"], false, "{out}");
    assert_eq!(out["structured"]["name"], "approved");
    assert!(
        !out["progress"].as_array().unwrap().is_empty(),
        "progress while waiting: {out}"
    );
    assert!(env.path().join("notes/approved").exists());
    let records = warden_core::store::audit::read_all(&env.path().join("data/audit")).unwrap();
    assert!(
        records.iter().any(|r| r["kind"] == "approval-vote"
            && r["principal"] == "alice"
            && r["via"] == "api")
    );
}

#[test]
fn reload_swaps_the_tools_notifies_clients_and_a_bad_config_keeps_the_old_one() {
    let (env, [agent, _, ops]) = served_env("");
    let server = env.serve();
    let url = server.url("/mcp");
    // Subscribed before anything changes: the client says so on its first line.
    let mut listener = mcp_client_spawn(&["--http", &url, "--token", &agent, "listen"]);
    let mut lines = std::io::BufReader::new(listener.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("listening"), "{first}");
    let auth = format!("Bearer {ops}");
    let good = std::fs::read_to_string(env.config()).unwrap();

    // A bad config is refused whole; the old one keeps serving.
    std::fs::write(env.config(), format!("{good}\nnot_a_key = 1\n")).unwrap();
    let (status, body) = http(
        "POST",
        &server.url("/api/reload"),
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not_a_key"), "{body}");

    // Without the notes plugin (and its policy rules), only text_stats is left.
    let start = good.find("[[plugin]]\nid = \"notes\"").unwrap();
    let end = good.find("[[policy]]").unwrap();
    let smaller = format!("{}{}", &good[..start], &good[end..]).replace(
        "tools = { notes_read = \"deny\", notes_write = \"hard\" }",
        "",
    );
    std::fs::write(env.config(), smaller).unwrap();
    let (status, body) = http(
        "POST",
        &server.url("/api/reload"),
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let changed = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = listener.wait();
    let out: Value = serde_json::from_str(&changed).unwrap_or_else(|e| panic!("{e}: {changed:?}"));
    assert_eq!(out["tools"], serde_json::json!(["text_stats"]), "{out}");
    let records = warden_core::store::audit::read_all(&env.path().join("data/audit")).unwrap();
    assert!(records.iter().any(|r| r["kind"] == "config-reload-failed"));
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "config-load")
            .count(),
        2,
        "start and the good reload"
    );
}

#[test]
fn sigterm_lets_the_call_in_flight_finish_and_flushes_the_audit_log() {
    let (env, [agent, _, ops]) = served_env("");
    env.append_config("[[plugin]]\nid = \"hostile\"\ncomponent = \"{hostile}\"\n[plugin.limits]\ntimeout_ms = 1500\n");
    let mut server = env.serve();
    let url = server.url("/mcp");
    let call = std::thread::spawn(move || {
        mcp_client(&["--http", &url, "--token", &agent, "call", "spin", "{}"])
    });
    let metrics = server.url("/metrics");
    let auth = format!("Bearer {ops}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http("GET", &metrics, &[("authorization", &auth)], None)
        .1
        .contains("warden_calls_in_flight 1")
    {
        assert!(Instant::now() < deadline, "the call never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = server.stop();
    let run = call.join().unwrap();
    assert!(stopped.success(), "{stopped:?}: {}", server.log());
    assert!(
        json_of(&run)["text"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{run:?}"
    );
    let verify = env.warden(&["audit", "verify"]);
    assert_eq!(verify.code, OK, "{verify:?}");
    let runs = env.warden(&["runs", "list", "--tool", "spin", "--json"]);
    assert_eq!(runs.stdout.lines().count(), 1, "{runs:?}");
}

/// `warden serve --stdio` on `env`'s config: the child, its stdin, its stdout by line.
fn stdio_server(
    env: &Env,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::process::{Command, Stdio};
    let mut server = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["-c", env.config().to_str().unwrap(), "serve", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let to = server.stdin.take().unwrap();
    let from = std::io::BufReader::new(server.stdout.take().unwrap());
    (server, to, from)
}

#[test]
fn serve_runs_without_transparent_huge_pages_from_its_first_allocation() {
    use std::io::Write;
    let (env, _) = served_env("[server]\nstdio_principal = \"desktop-agent\"");
    let (mut server, mut to, mut from) = stdio_server(&env);
    writeln!(
        to,
        r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
    )
    .unwrap();
    let mut line = String::new();
    from.read_line(&mut line).unwrap();
    assert!(line.contains(r#""id":1"#), "{line}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id())).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", server.id())).unwrap();
    drop(to);
    server.wait().unwrap();
    // The flag is set before the allocator's constructor, so no huge page was taken
    // even before `main` (set from `main`, 6 MiB of them stayed resident).
    assert!(status.contains("THP_enabled:\t0"), "{status}");
    let huge = smaps
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .map(|v| v.trim().to_string());
    assert_eq!(huge.as_deref(), Some("0 kB"), "{smaps}");
}

#[test]
fn sigterm_on_stdio_answers_the_call_in_flight_and_refuses_new_ones() {
    use std::io::Write;
    use std::process::Command;
    let (env, _) = served_env("[server]\nstdio_principal = \"desktop-agent\"");
    env.append_config("[[plugin]]\nid = \"hostile\"\ncomponent = \"{hostile}\"\n[plugin.limits]\ntimeout_ms = 3000\n");
    let (mut server, mut to, mut from) = stdio_server(&env);
    let mut send = |line: &str| writeln!(to, "{line}").unwrap();
    let mut answers = Vec::new();
    let mut answer = || -> Value {
        let mut line = String::new();
        from.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    send(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert_eq!(answer()["id"], 1);
    send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    send(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"spin","arguments":{}}}"#,
    );
    // The spin runs until its 3 s timeout: signal well inside it, and more than 2 s
    // before it ends (rmcp's own wait for answers once its service is cancelled).
    std::thread::sleep(Duration::from_millis(400));
    let kill = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    std::thread::sleep(Duration::from_millis(200));
    send(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"text_stats","arguments":{"text":"late"}}}"#,
    );
    while answers.len() < 2 {
        let a = answer();
        if a.get("id").is_some() {
            answers.push(a);
        }
    }
    let text = |a: &Value| {
        a["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let spin = answers
        .iter()
        .find(|a| a["id"] == 2)
        .expect("the call in flight was answered");
    assert!(text(spin).contains("timed out"), "{spin}");
    let late = answers
        .iter()
        .find(|a| a["id"] == 3)
        .expect("the late call was answered");
    assert_eq!(late["result"]["isError"], true, "{late}");
    assert!(text(late).contains("shutting down"), "{late}");
    assert!(server.wait().unwrap().success());
    let verify = env.warden(&["audit", "verify"]);
    assert_eq!(verify.code, OK, "{verify:?}");
    let late_runs = env.warden(&["runs", "list", "--tool", "text_stats", "--json"]);
    assert_eq!(
        late_runs.stdout.trim(),
        "",
        "the late call never ran: {late_runs:?}"
    );
}

#[test]
fn eight_clients_at_once_every_call_accounted_for() {
    let (env, [agent, _, ops]) = served_env("");
    let mut server = env.serve();
    let url = server.url("/mcp");
    let (clients, calls) = (8, 500);
    let runs: Vec<Run> = (0..clients)
        .map(|_| {
            let (url, agent) = (url.clone(), agent.clone());
            std::thread::spawn(move || {
                mcp_client(&[
                    "--http",
                    &url,
                    "--token",
                    &agent,
                    "load",
                    &calls.to_string(),
                    "text_stats",
                    r#"{"text":"load"}"#,
                ])
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for run in &runs {
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(json_of(run)["ok"], calls, "{run:?}");
    }
    let total = clients * calls;
    let (status, metrics) = http(
        "GET",
        &server.url("/metrics"),
        &[("authorization", &format!("Bearer {ops}"))],
        None,
    );
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!(
            "warden_calls_total{{tool=\"text_stats\",outcome=\"ok\"}} {total}"
        )),
        "{metrics}"
    );
    assert!(server.stop().success(), "{}", server.log());
    let db = rusqlite::Connection::open(env.path().join("data/runs.db")).unwrap();
    let rows: i64 = db
        .query_row(
            "SELECT count(*) FROM runs WHERE tool = 'text_stats' AND status = 'ok'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, total as i64, "every call has its run row");
    let records = warden_core::store::audit::read_all(&env.path().join("data/audit")).unwrap();
    let ends = records
        .iter()
        .filter(|r| r["kind"] == "run-end" && r["status"] == "ok")
        .count();
    assert_eq!(ends, total, "every call has its audit records");
}

#[test]
fn a_server_with_auditing_off_says_so_at_start_and_when_probed() {
    let (env, [_, _, operator]) = served_env("");
    env.append_config("[audit]\nenabled = false\n");
    let server = env.serve();
    assert!(
        server.log().contains("the audit log is OFF"),
        "{}",
        server.log()
    );
    let (status, body) = http("GET", &server.url("/readyz"), &[], None);
    assert_eq!(status, 200);
    assert!(body.contains("AUDIT LOG IS OFF"), "{body}");
    let (_, metrics) = http(
        "GET",
        &server.url("/metrics"),
        &[("authorization", &format!("Bearer {operator}"))],
        None,
    );
    assert!(metrics.contains("warden_audit_enabled 0"), "{metrics}");
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

#[test]
fn a_loopback_server_accepts_its_own_origin_and_refuses_every_other() {
    let (env, [agent, _, _]) = served_env("");
    let server = env.serve();
    let url = server.url("/mcp");
    let auth = format!("Bearer {agent}");
    let post = |origin: &str| {
        http(
            "POST",
            &url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("origin", origin),
            ],
            Some(INITIALIZE),
        )
    };
    let own = format!("http://{}", server.addr);
    let (status, body) = post(&own);
    assert_eq!(status, 200, "its own origin: {body}");
    for other in [
        "http://evil.example.com",
        "null",
        &own.replace("127.0.0.1", "127.0.0.2"),
    ] {
        let (status, body) = post(other);
        assert_eq!(status, 403, "{other}: {body}");
    }
}

#[test]
fn oversized_and_malformed_bodies_get_a_status_and_a_json_rpc_error() {
    let (env, [agent, _, _]) = served_env("");
    let server = env.serve();
    let url = server.url("/mcp");
    let auth = format!("Bearer {agent}");
    let post = |body: &str| {
        http(
            "POST",
            &url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ],
            Some(body),
        )
    };
    for mib in [8, 32] {
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":"{}"}}}}"#,
            "x".repeat(mib << 20)
        );
        let (status, body) = post(&big);
        assert_eq!(status, 413, "{mib} MiB: {}", &body[..body.len().min(200)]);
        assert!(body.contains("\"jsonrpc\""), "{mib} MiB: {body}");
    }
    let (status, body) = post("{\"jsonrpc\":\"2.0\",\"id\":1,");
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], -32700, "{body}");
}

#[test]
fn failed_authentications_are_counted_per_source_and_throttled() {
    let (env, [_, _, operator]) = served_env("");
    let mut server = env.serve();
    let runs = server.url("/api/runs");
    let mut statuses = Vec::new();
    for _ in 0..100 {
        let (status, _) = http("GET", &runs, &[("authorization", "Bearer wdn_guess")], None);
        statuses.push(status);
    }
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((unauthorized, throttled), (30, 70), "{statuses:?}");
    // Throttled before its token is looked at, whatever it is.
    let (status, _) = http(
        "GET",
        &runs,
        &[("authorization", &format!("Bearer {operator}"))],
        None,
    );
    assert_eq!(status, 429);
    assert!(server.stop().success());
    let denied: Vec<Value> = warden_core::store::audit::read_all(&env.path().join("data/audit"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "auth-denied")
        .collect();
    assert!(
        denied.len() <= 3,
        "one record per source per window, not per request: {denied:?}"
    );
    let failures: u64 = denied
        .iter()
        .map(|r| r["failures"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(failures, 30, "every failure counted: {denied:?}");
}

#[test]
fn metrics_stay_bounded_whatever_tool_names_agents_send() {
    let (env, [agent, _, operator]) = served_env("");
    let server = env.serve();
    let run = mcp_client(&[
        "--http",
        &server.url("/mcp"),
        "--token",
        &agent,
        "unknown",
        "30",
    ]);
    assert_eq!(json_of(&run)["errors"], 30, "{run:?}");
    let (status, metrics) = http(
        "GET",
        &server.url("/metrics"),
        &[("authorization", &format!("Bearer {operator}"))],
        None,
    );
    assert_eq!(status, 200);
    assert!(!metrics.contains("no_such_tool"), "{metrics}");
    assert!(
        metrics.contains("warden_calls_total{tool=\"unknown\",outcome=\"unknown-tool\"} 30"),
        "{metrics}"
    );
    let series: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#')).collect();
    let mut names: Vec<&str> = series
        .iter()
        .map(|l| l.rsplit_once(' ').map_or(*l, |(name, _)| name))
        .collect();
    let total = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), total, "no series twice: {metrics}");
    assert!(metrics.contains("warden_audit_enabled 1"), "{metrics}");
}

#[test]
fn a_client_that_asks_for_log_messages_gets_its_calls_log_lines() {
    let env = Env::new("");
    env.write_config(&format!(
        "{}\n[[plugin]]\nid = \"hostile\"\ncomponent = \"{{hostile}}\"\n",
        crate::approvals::test_tokens()
    ));
    let server = env.serve();
    let url = server.url("/mcp");
    let run = mcp_client(&[
        "--http",
        &url,
        "--token",
        "token-agent",
        "logged",
        "info",
        "log_flood",
        r#"{"lines":3}"#,
    ]);
    let out = json_of(&run);
    let messages = out["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{run:?}"));
    assert_eq!(messages.len(), 3, "{out}");
    assert_eq!(messages[0]["logger"], "plugin:hostile", "{out}");
    assert_eq!(messages[0]["data"]["message"], "line 0", "{out}");
    assert!(
        messages[0]["data"]["run_id"]
            .as_str()
            .unwrap()
            .starts_with("run-"),
        "{out}"
    );
    let quiet = mcp_client(&[
        "--http",
        &url,
        "--token",
        "token-agent",
        "logged",
        "error",
        "log_flood",
        r#"{"lines":3}"#,
    ]);
    assert_eq!(
        json_of(&quiet)["messages"],
        serde_json::json!([]),
        "{quiet:?}"
    );
}
