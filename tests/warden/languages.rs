//! Tools and policies written in Python and JavaScript (componentize-py and
//! componentize-js, pinned, installed under `target/`), and Rust tools written with the
//! `#[tool]` attribute: their schemas come from their code, they run through the same
//! governed path as every tool, and a hostile one is contained like the Rust fixture.

use super::*;
use crate::approvals::test_tokens;
use crate::support::mcp_client;

/// report-py, outline-js and text-stats (typed Rust), granted HTTP to `granted`; an
/// approver token; `extra` appended.
fn languages_env(granted: &Listener, extra: &str) -> Env {
    let env = Env::new("");
    env.write_config(&format!(
        r#"
{tokens}
[approvals]
approvers = ["alice"]

[[plugin]]
id = "report-py"
component = "{{report-py}}"
[plugin.grants]
http = ["http://127.0.0.1:{port}"]

[[plugin]]
id = "outline-js"
component = "{{outline-js}}"
[plugin.grants]
http = ["http://127.0.0.1:{port}"]

[[plugin]]
id = "text-stats"
component = "{{text-stats}}"
{extra}
"#,
        tokens = test_tokens(),
        port = granted.port,
    ));
    env
}

fn tools_by_name(env: &Env) -> Value {
    let run = env.warden(&["tools", "--json"]);
    assert_eq!(run.code, OK, "{run:?}");
    let list: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    list.into_iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[test]
fn python_js_and_typed_rust_tools_list_the_schemas_their_code_declares() {
    let granted = Listener::http();
    let env = languages_env(&granted, "");
    let tools = tools_by_name(&env);

    // Python: parameters, their `Annotated` bounds and the docstring's Args.
    let csv = &tools["csv_to_json"];
    let props = &csv["inputSchema"]["properties"];
    assert_eq!(props["text"]["type"], "string", "{csv}");
    assert_eq!(props["text"]["maxLength"], 1048576);
    assert_eq!(props["text"]["description"], "The CSV document.");
    assert_eq!(props["delimiter"]["default"], ",");
    assert_eq!(csv["inputSchema"]["required"], serde_json::json!(["text"]));
    assert_eq!(csv["inputSchema"]["additionalProperties"], false);
    assert!(
        csv["description"]
            .as_str()
            .unwrap()
            .starts_with("Parse a CSV document (first line: the headers) into records,"),
        "docstring paragraphs are joined: {csv}"
    );
    assert_eq!(csv["annotations"]["readOnlyHint"], true);
    assert_eq!(csv["annotations"]["idempotentHint"], true);
    // The dataclass it returns is the output schema.
    assert_eq!(
        csv["outputSchema"]["required"],
        serde_json::json!(["columns", "rows", "row_count"])
    );
    assert_eq!(tools["fetch_json"]["annotations"]["openWorldHint"], true);

    // JavaScript: the `s` builders.
    let md = &tools["md_outline"];
    assert_eq!(
        md["inputSchema"]["properties"]["max_level"]["maximum"], 6,
        "{md}"
    );
    assert_eq!(
        md["inputSchema"]["required"],
        serde_json::json!(["markdown"])
    );
    assert_eq!(
        md["outputSchema"]["properties"]["headings"]["items"]["required"],
        serde_json::json!(["level", "text", "line"])
    );

    // Rust with #[tool]: schemars over the argument and result types, doc comments
    // as descriptions, attribute flags as annotations.
    let stats = &tools["text_stats"];
    let top = &stats["inputSchema"]["properties"]["top"];
    assert_eq!(top["maximum"], 100, "{stats}");
    assert_eq!(top["default"], 5);
    assert_eq!(
        top["description"],
        "How many of the most frequent words to list."
    );
    assert_eq!(stats["title"], "Text statistics");
    assert_eq!(
        stats["description"],
        "Count characters, words and lines of a text and list its most frequent words."
    );
    assert_eq!(stats["annotations"]["readOnlyHint"], true);
    assert_eq!(stats["annotations"]["destructiveHint"], false);
    assert!(
        stats["outputSchema"]["required"]
            .as_array()
            .unwrap()
            .contains(&Value::from("top_words")),
        "{stats}"
    );
}

#[test]
fn python_and_js_tools_answer_over_the_cli_and_mcp_with_typed_results() {
    let granted = Listener::http();
    let env = languages_env(&granted, "");
    let csv = "item,qty,price\nwidget,3,2.50\ngadget,,10\n";
    let (run, report) = env.call(
        "csv_to_json",
        &serde_json::json!({ "text": csv }).to_string(),
    );
    assert_eq!(run.code, OK, "{run:?}");
    let out = &report["output"];
    assert_eq!(out["row_count"], 2, "{out}");
    assert_eq!(out["rows"][0]["price"], 2.5, "numbers come back as numbers");
    assert_eq!(out["columns"][1]["kind"], "number");
    assert_eq!(out["columns"][1]["empty"], 1);
    assert_eq!(out["columns"][0]["kind"], "text");
    // The tool's own error, with its code, not a trap.
    let (run, report) = env.call(
        "csv_to_json",
        &serde_json::json!({ "text": "a,b\n1,2,3\n" }).to_string(),
    );
    assert_eq!(run.code, TOOL_ERROR, "{run:?}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("line 2: 3 fields"),
        "{run:?}"
    );

    let md =
        "# Title\n\nSee [docs](https://example.com/d).\n\n```\n# not a heading\n```\n## Part\n";
    let (run, report) = env.call(
        "md_outline",
        &serde_json::json!({ "markdown": md }).to_string(),
    );
    assert_eq!(run.code, OK, "{run:?}");
    let out = &report["output"];
    assert_eq!(out["title"], "Title", "{out}");
    assert_eq!(out["headings"][1]["text"], "Part");
    assert_eq!(out["headings"][1]["line"], 8);
    assert_eq!(out["links"][0]["url"], "https://example.com/d");
    assert_eq!(out["code_blocks"], 1);
    let (run, report) = env.call(
        "md_outline",
        &serde_json::json!({ "markdown": "```\nopen" }).to_string(),
    );
    assert_eq!(run.code, TOOL_ERROR, "{run:?}");
    assert!(
        report["error"].as_str().unwrap().contains("never closed"),
        "{run:?}"
    );

    // Over MCP (stdio), with the official Python SDK as the client.
    let config = env.config();
    let warden = env!("CARGO_BIN_EXE_warden");
    let mcp = |args: &[&str]| {
        let mut all = vec![
            "--stdio",
            warden,
            "-c",
            config.to_str().unwrap(),
            "serve",
            "--stdio",
            "--",
        ];
        all.extend_from_slice(args);
        let run = mcp_client(&all);
        assert_eq!(run.code, 0, "{run:?}");
        serde_json::from_str::<Value>(run.stdout.lines().last().unwrap()).unwrap()
    };
    let listed = mcp(&["tools"]);
    assert_eq!(
        listed["md_outline"]["output_schema"]["properties"]["code_blocks"]["type"], "integer",
        "{listed}"
    );
    assert_eq!(
        listed["csv_to_json"]["input_schema"]["properties"]["max_rows"]["maximum"],
        100000
    );
    let called = mcp(&[
        "call",
        "csv_to_json",
        &serde_json::json!({ "text": csv }).to_string(),
    ]);
    assert_eq!(called["is_error"], false, "{called}");
    assert_eq!(called["structured"]["rows"][1]["item"], "gadget");
    let called = mcp(&[
        "call",
        "md_outline",
        &serde_json::json!({ "markdown": md }).to_string(),
    ]);
    assert_eq!(called["structured"]["headings"][0]["level"], 1, "{called}");
}

#[test]
fn python_and_js_tools_are_held_and_run_once_approved() {
    let granted = Listener::http();
    let env = languages_env(
        &granted,
        r#"
[[policy]]
id = "tiers"
component = "{tiered-approval}"
[policy.config]
tools = { csv_to_json = "hard", md_outline = "hard", fetch_text = "deny" }
"#,
    );
    for (tool, input, output) in [
        ("csv_to_json", r#"{"text":"a\n1\n"}"#, "\"row_count\": 1"),
        (
            "md_outline",
            r##"{"markdown":"# Held"}"##,
            "\"title\": \"Held\"",
        ),
    ] {
        let run = env.warden(&["call", tool, "--input", input, "--as", "agent"]);
        assert_eq!(run.code, HELD, "{tool}: {run:?}");
        let held: Value = serde_json::from_str(&run.stdout).unwrap();
        let id = held["approval_id"].as_str().unwrap();
        let yes = env.warden(&["approvals", "approve", id, "--token", "token-alice"]);
        assert_eq!(yes.code, OK, "{tool}: {yes:?}");
        assert!(yes.stdout.contains(output), "{tool}: {yes:?}");
        let again = env.warden(&["approvals", "approve", id, "--token", "token-bob"]);
        assert_eq!(again.code, USAGE, "{tool} runs once: {again:?}");
    }
    let (run, report) = env.call(
        "fetch_text",
        &serde_json::json!({ "url": granted.url("/x") }).to_string(),
    );
    assert_eq!(run.code, DENIED, "{run:?}");
    assert_eq!(status(&report), "denied");
    assert_eq!(granted.count(), 0);
}

#[test]
fn python_and_js_tools_reach_only_granted_hosts_and_never_hold_their_secret() {
    let (granted, other) = (Listener::http(), Listener::http());
    let env = languages_env(&granted, "");
    let init = env.warden(&["secrets", "init"]);
    assert_eq!(init.code, OK, "{init:?}");
    let set = env.warden_stdin(&["secrets", "set", "api_token"], &format!("{SECRET}\n"));
    assert_eq!(set.code, OK, "{set:?}");
    // The placeholder may be substituted in headers, toward the granted host only.
    let text = std::fs::read_to_string(env.config()).unwrap().replace(
        &format!("http = [\"http://127.0.0.1:{}\"]", granted.port),
        &format!(
            "http = [\"http://127.0.0.1:{}\", \"http://localhost:{}\"]\nsecrets = [{{ name = \"api_token\", placeholder = true, hosts = [\"127.0.0.1\"] }}]",
            granted.port, other.port
        ),
    );
    std::fs::write(env.config(), text).unwrap();

    let mut runs = Vec::new();
    for (tool, out_body) in [("fetch_json", "body"), ("fetch_text", "body")] {
        let input = serde_json::json!({ "url": granted.url("/echo"), "token_secret": "api_token" });
        let (run, report) = env.call(tool, &input.to_string());
        assert_eq!(run.code, OK, "{tool}: {run:?}");
        // The server echoed the request; what comes back to the caller is redacted.
        let body = report["output"][out_body].to_string();
        assert!(body.contains("[REDACTED]"), "{tool}: {body}");
        runs.push(run);

        // Another host, granted for HTTP but not for the secret: refused at the egress.
        let input = serde_json::json!({ "url": format!("http://localhost:{}/echo", other.port), "token_secret": "api_token" });
        let (run, report) = env.call(tool, &input.to_string());
        assert_eq!(run.code, TOOL_ERROR, "{tool}: {run:?}");
        assert!(
            report["denied_requests"][0]
                .as_str()
                .unwrap_or_default()
                .contains("placeholder for secret api_token"),
            "{tool}: {run:?}"
        );
        runs.push(run);

        // A host nobody granted: refused before any connection.
        let stranger = Listener::http();
        let input = serde_json::json!({ "url": stranger.url("/x") });
        let (run, report) = env.call(tool, &input.to_string());
        assert_eq!(run.code, TOOL_ERROR, "{tool}: {run:?}");
        assert!(
            !report["denied_requests"].as_array().unwrap().is_empty(),
            "{tool}: {run:?}"
        );
        assert_eq!(stranger.count(), 0, "{tool}");
        runs.push(run);
    }
    let seen = granted.received();
    assert_eq!(
        seen.matches(&format!("authorization: Bearer {SECRET}"))
            .count(),
        2,
        "{seen}"
    );
    assert!(!seen.contains("warden-secret-"), "{seen}");
    assert_eq!(other.count(), 0);
    let refs: Vec<&support::Run> = runs.iter().collect();
    assert_no_secret(&env, &refs);
}

/// The hostile Python and JavaScript fixtures under the limits the Rust one gets.
fn hostile_lang_env(granted: &Listener) -> Env {
    let env = Env::new("");
    std::fs::write(env.path().join("outside.txt"), "TOP-SECRET-OUTSIDE").unwrap();
    let limits = "memory_mb = 48\ntimeout_ms = 1500\nmax_output_kb = 64\nmax_log_kb = 16";
    env.write_config(&format!(
        r#"
[[plugin]]
id = "hostile-py"
component = "{{hostile-py}}"
[plugin.grants]
http = ["http://127.0.0.1:{port}"]
[plugin.limits]
{limits}

[[plugin]]
id = "hostile-js"
component = "{{hostile-js}}"
[plugin.grants]
http = ["http://127.0.0.1:{port}"]
[plugin.limits]
{limits}
"#,
        port = granted.port
    ));
    env
}

#[test]
fn hostile_python_and_js_tools_are_contained_like_the_rust_fixture() {
    let granted = Listener::http();
    let env = hostile_lang_env(&granted);
    for lang in ["py", "js"] {
        let (run, report) = env.call(&format!("{lang}_spin"), "{}");
        assert_failed(&run, &report, "timed-out");

        let (run, report) = env.call(&format!("{lang}_memory_bomb"), "{}");
        assert_failed(&run, &report, "memory-limit");
        assert!(report["peak_memory_bytes"].as_u64().unwrap() <= 48 << 20);

        let (run, report) = env.call(
            &format!("{lang}_fetch"),
            &serde_json::json!({ "url": "http://127.0.0.2:9/steal" }).to_string(),
        );
        assert_eq!(run.code, TOOL_ERROR, "{lang}: {run:?}");
        assert!(
            report["denied_requests"][0]
                .as_str()
                .unwrap_or_default()
                .contains("127.0.0.2"),
            "{lang}: {run:?}"
        );
        let (run, report) = env.call(
            &format!("{lang}_fetch"),
            &serde_json::json!({ "url": granted.url("/fine") }).to_string(),
        );
        assert_eq!(
            run.code, OK,
            "{lang}: the granted host is reachable: {run:?}"
        );
        assert_eq!(report["output"]["status"], 200);

        let (run, report) = env.call(&format!("{lang}_stdout_flood"), r#"{"mb": 8}"#);
        assert_eq!(run.code, OK, "{lang}: {run:?}");
        let kept: usize = report["log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["message"].as_str().unwrap_or_default().len())
            .sum();
        assert!(kept <= 2 * (16 << 10) + 1024, "{lang}: kept {kept} bytes");
        let plain = env.warden(&[
            "call",
            &format!("{lang}_stdout_flood"),
            "--input",
            r#"{"mb": 1}"#,
        ]);
        assert_eq!(plain.code, OK);
        assert!(
            plain.stdout.len() < 200,
            "{lang}: the host's stdout is the tool's output alone: {} bytes",
            plain.stdout.len()
        );
    }
    // Python has files: nothing is preopened, so nothing outside is reachable.
    for path in ["/etc/passwd", "../outside.txt", "outside.txt"] {
        let (run, report) = env.call(
            "py_read_file",
            &serde_json::json!({ "path": path }).to_string(),
        );
        assert_eq!(run.code, TOOL_ERROR, "{path}: {run:?}");
        assert!(
            report["error"].as_str().unwrap().contains("exception"),
            "{path}: {run:?}"
        );
        assert!(!run.stdout.contains("TOP-SECRET") && !run.stdout.contains("root:"));
    }
    // Contained, not broken: the next call of each works.
    let (run, _) = env.call(
        "py_fetch",
        &serde_json::json!({ "url": granted.url("/ok") }).to_string(),
    );
    assert_eq!(run.code, OK, "{run:?}");
}

#[test]
fn a_python_policy_passes_its_cases_and_governs_calls() {
    let cases = support::repo_root().join("policies/spend-limit-py/cases.toml");
    let env = Env::new("");
    let policy = support::expand("{spend-limit-py}");
    let run = env.warden_with_env(
        &["policy", "test", &policy, cases.to_str().unwrap()],
        &[(
            "WARDEN_CACHE_DIR",
            support::shared_cache().to_str().unwrap(),
        )],
    );
    assert_eq!(run.code, OK, "{run:?}");
    assert!(run.stdout.contains("7 passed, 0 failed"), "{run:?}");

    // In a config: text_stats' `top` read as the amount.
    env.write_config(
        r#"
[approvals]
approvers = ["alice"]

[[plugin]]
id = "text-stats"
component = "{text-stats}"

[[policy]]
id = "spend"
component = "{spend-limit-py}"
[policy.config]
field = "top"
soft_above = 10
hard_above = 50
deny_above = 90
"#,
    );
    let (run, _) = env.call("text_stats", r#"{"text":"a b","top":3}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let (run, report) = env.call("text_stats", r#"{"text":"a b","top":20}"#);
    assert_eq!(run.code, HELD, "{run:?}");
    assert_eq!(report["decisions"][0]["tier"], "soft", "{report}");
    let (run, report) = env.call("text_stats", r#"{"text":"a b","top":95}"#);
    assert_eq!(run.code, DENIED, "{run:?}");
    assert!(
        report["decisions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("above the limit"),
        "{report}"
    );
    let (run, report) = env.call("text_stats", r#"{"text":"no top"}"#);
    assert_eq!(
        run.code, DENIED,
        "a policy that cannot read the amount refuses: {run:?}"
    );
    assert!(report.to_string().contains("refusing to guess"), "{report}");
}
