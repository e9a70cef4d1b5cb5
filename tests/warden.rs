//! Integration tests: the real `warden` binary and real compiled components.

#[path = "warden/approvals.rs"]
mod approvals;
#[path = "warden/audit.rs"]
mod audit;
#[path = "warden/mcp.rs"]
mod mcp;
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Env, Listener, wasm};
use warden::call::{CallRequest, Outcome};
use warden::config::Config;
use warden::plugin::Failure;
use warden::runtime::Runtime;

const OK: i32 = 0;
const TOOL_ERROR: i32 = 1;
const USAGE: i32 = 2;
const DENIED: i32 = 3;
const HELD: i32 = 4;
const NOT_RECORDED: i32 = 5;

/// A config with the hostile fixture, granted `/data` (rw), `/ro` (ro), HTTP to
/// `granted_port` and one env var, plus `text-stats` for control calls.
fn hostile_env(granted_port: u16, limits: &str) -> Env {
    let env = Env::new("");
    std::fs::create_dir_all(env.path().join("granted")).unwrap();
    std::fs::create_dir_all(env.path().join("readonly")).unwrap();
    std::fs::write(env.path().join("readonly/inside.txt"), "inside").unwrap();
    std::fs::write(env.path().join("outside.txt"), "TOP-SECRET-OUTSIDE").unwrap();
    env.write_config(&format!(
        r#"
[[plugin]]
id = "hostile"
component = "{{hostile}}"
[plugin.grants]
files = [{{ host = "granted", guest = "/data", mode = "rw" }}, {{ host = "readonly", guest = "/ro", mode = "ro" }}]
http = ["http://127.0.0.1:{granted_port}"]
env = {{ GRANTED = "yes" }}
[plugin.limits]
{limits}

[[plugin]]
id = "text-stats"
component = "{{text-stats}}"
"#
    ));
    env
}

const HOSTILE_LIMITS: &str =
    "memory_mb = 32\ntimeout_ms = 500\nmax_output_kb = 64\nmax_log_kb = 16";

fn status(report: &Value) -> &str {
    report["status"].as_str().unwrap_or("<none>")
}

// ---- the governed call ----

#[test]
fn governed_call_runs_a_pure_tool_and_prints_its_output() {
    let env = Env::new("[[plugin]]\nid = \"text-stats\"\ncomponent = \"{text-stats}\"\n");
    let run = env.warden(&["call", "text_stats", "--input", r#"{"text":"a b a"}"#]);
    assert_eq!(run.code, OK, "{run:?}");
    let output: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(output["words"], 3);
    assert_eq!(output["top_words"][0]["word"], "a");
}

#[test]
fn tiered_policy_allows_holds_and_denies_by_annotation_and_tool() {
    let env = Env::new("");
    std::fs::create_dir_all(env.path().join("notes")).unwrap();
    env.write_config(
        r#"
[[plugin]]
id = "notes"
component = "{notes}"
[plugin.grants]
files = [{ host = "notes", guest = "/notes", mode = "rw" }]

[[policy]]
id = "tiers"
component = "{tiered-approval}"
[policy.config]
approvers = ["group:oncall"]
annotations = { destructive = "hard" }
tools = { notes_read = "soft", notes_list = "auto" }
"#,
    );
    let (run, report) = env.call("notes_list", "{}");
    assert_eq!((run.code, status(&report)), (OK, "ok"), "{run:?}");
    assert_eq!(report["decisions"][0]["decision"], "allow");

    let (run, report) = env.call("notes_read", r#"{"name":"a"}"#);
    assert_eq!((run.code, status(&report)), (HELD, "held"), "{run:?}");
    assert_eq!(report["tier"], "soft");
    assert_eq!(report["approvers"][0], "group:oncall");

    let (run, report) = env.call("notes_write", r#"{"name":"a","text":"x"}"#);
    assert_eq!(
        (run.code, report["tier"].as_str()),
        (HELD, Some("hard")),
        "{run:?}"
    );
    assert!(
        !env.path().join("notes/a").exists(),
        "a held call must not run"
    );
}

#[test]
fn business_hours_policy_denies_writes_outside_hours_and_allows_reads() {
    let env = Env::new("");
    std::fs::create_dir_all(env.path().join("notes")).unwrap();
    let config = |days: &str| {
        format!(
            r#"
[[plugin]]
id = "notes"
component = "{{notes}}"
[plugin.grants]
files = [{{ host = "notes", guest = "/notes", mode = "rw" }}]

[[policy]]
id = "hours"
component = "{{business-hours}}"
tools = ["notes_*"]
[policy.config]
days = {days}
start = "00:00"
end = "24:00"
"#
        )
    };
    // Never inside business hours: writes are denied, reads still run.
    env.write_config(&config("[]"));
    let (run, report) = env.call("notes_write", r#"{"name":"a","text":"x"}"#);
    assert_eq!((run.code, status(&report)), (DENIED, "denied"), "{run:?}");
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .contains("outside business hours"),
        "{run:?}"
    );
    assert!(!env.path().join("notes/a").exists());
    let (run, _) = env.call("notes_list", "{}");
    assert_eq!(run.code, OK, "{run:?}");

    // Always inside business hours: the write runs.
    env.write_config(&config(
        r#"["sun", "mon", "tue", "wed", "thu", "fri", "sat"]"#,
    ));
    let (run, _) = env.call("notes_write", r#"{"name":"a","text":"x"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(
        std::fs::read_to_string(env.path().join("notes/a")).unwrap(),
        "x"
    );
}

#[test]
fn misbehaving_policies_deny_the_call() {
    for (mode, expect) in [
        ("trap", "trapped"),
        ("loop", "timed out"),
        ("nonsense", "malformed decision"),
        ("alloc", "memory limit"),
    ] {
        let env = Env::new(&format!(
            r#"
[[plugin]]
id = "text-stats"
component = "{{text-stats}}"

[[policy]]
id = "bad"
component = "{{hostile-policy}}"
[policy.config]
mode = "{mode}"
[policy.limits]
timeout_ms = 100
memory_mb = 16
"#
        ));
        let (run, report) = env.call("text_stats", r#"{"text":"x"}"#);
        assert_eq!(
            (run.code, status(&report)),
            (DENIED, "denied"),
            "mode {mode}: {run:?}"
        );
        let failure = report["decisions"][0]["failure"]
            .as_str()
            .unwrap_or_default();
        assert!(failure.contains(expect), "mode {mode}: failure {failure:?}");
        assert!(report.get("output").is_none(), "the tool must not run");
    }
}

#[test]
fn a_well_behaved_policy_fixture_allows() {
    let env = Env::new(
        "[[plugin]]\nid = \"t\"\ncomponent = \"{text-stats}\"\n[[policy]]\nid = \"p\"\ncomponent = \"{hostile-policy}\"\nconfig = { mode = \"allow\" }\n",
    );
    let (run, report) = env.call("text_stats", r#"{"text":"x"}"#);
    assert_eq!((run.code, status(&report)), (OK, "ok"), "{run:?}");
}

// ---- limits ----

/// The tool ran and failed with `kind` (exit code 1).
fn assert_failed(run: &support::Run, report: &Value, kind: &str) {
    assert_eq!(
        (run.code, report["kind"].as_str()),
        (TOOL_ERROR, Some(kind)),
        "{run:?}"
    );
}

#[test]
fn infinite_loop_is_stopped_at_its_timeout_and_the_next_call_succeeds() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    let (run, report) = env.call("spin", "{}");
    assert_failed(&run, &report, "timed-out");
    // Never before its timeout; well after it only on a machine too loaded to say more
    // (how soon after is measured in BENCHMARKS.md, not asserted here).
    let total_ms = report["timings"]["total_us"].as_u64().unwrap() / 1000;
    assert!(
        (500..5000).contains(&total_ms),
        "stopped after {total_ms} ms, timeout 500 ms"
    );
    let (run, _) = env.call("text_stats", r#"{"text":"still fine"}"#);
    assert_eq!(run.code, OK, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keeps_serving_while_several_plugins_spin() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    let rt = std::sync::Arc::new(
        Runtime::load(Config::load(&env.config()).unwrap())
            .await
            .unwrap(),
    );
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move {
                rt.call(CallRequest {
                    principal: "t",
                    tool: "spin",
                    input: "{}",
                })
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let report = rt
        .call(CallRequest {
            principal: "t",
            tool: "text_stats",
            input: r#"{"text":"x"}"#,
        })
        .await
        .unwrap();
    assert!(
        matches!(report.outcome, Outcome::Ok { .. }),
        "{:?}",
        report.outcome
    );
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "a pure call waited {:?} behind spinners",
        started.elapsed()
    );
    for spinner in spinners {
        let report = spinner.await.unwrap().unwrap();
        assert!(
            matches!(
                report.outcome,
                Outcome::Failed {
                    kind: Failure::Limit(_),
                    ..
                }
            ),
            "{:?}",
            report.outcome
        );
    }
}

/// Calls in flight together hold at most the server's guest memory bound: with room for
/// two 32 MiB calls, four at once run two and refuse two (after waiting for room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_hold_at_most_the_servers_memory_bound() {
    let env = hostile_env(1, "memory_mb = 32\ntimeout_ms = 1500");
    env.append_config("[server]\nmax_guest_memory_mb = 64\ncapacity_wait_ms = 200\n");
    let rt = std::sync::Arc::new(
        Runtime::load(Config::load(&env.config()).unwrap())
            .await
            .unwrap(),
    );
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move {
                rt.call(CallRequest {
                    principal: "t",
                    tool: "spin",
                    input: "{}",
                })
                .await
                .unwrap()
                .outcome
                .status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        ["over-capacity", "over-capacity", "timed-out", "timed-out"],
        "two ran, two were refused"
    );
    // A call that alone needs more than the whole bound is refused at once.
    let env = hostile_env(1, "memory_mb = 128\ntimeout_ms = 500");
    env.append_config("[server]\nmax_guest_memory_mb = 64\n");
    let rt = Runtime::load(Config::load(&env.config()).unwrap())
        .await
        .unwrap();
    let report = rt
        .call(CallRequest {
            principal: "t",
            tool: "counter",
            input: "{}",
        })
        .await
        .unwrap();
    match report.outcome {
        Outcome::Failed { error, .. } => assert!(error.contains("needs 128 MiB"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn memory_bomb_is_refused_at_its_limit() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    let (run, report) = env.call("alloc", r#"{"mb": 256}"#);
    assert_failed(&run, &report, "memory-limit");
    assert!(report["peak_memory_bytes"].as_u64().unwrap() <= 32 << 20);
    // Within the limit is fine.
    let (run, report) = env.call("alloc", r#"{"mb": 8}"#);
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(report["output"]["allocated_mb"], 8);
}

#[test]
fn fuel_budget_stops_a_busy_guest() {
    let env = hostile_env(1, "fuel = 1000000\ntimeout_ms = 5000");
    let (run, report) = env.call("spin", "{}");
    assert_failed(&run, &report, "fuel-exhausted");
}

#[test]
fn oversized_output_is_refused() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    let (run, report) = env.call("big_output", r#"{"bytes": 200000}"#);
    assert_failed(&run, &report, "bad-output");
    let (run, _) = env.call("big_output", r#"{"bytes": 1000}"#);
    assert_eq!(run.code, OK, "{run:?}");
}

#[test]
fn output_that_breaks_its_declared_schema_is_refused() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    let (run, report) = env.call("liar", "{}");
    assert_failed(&run, &report, "bad-output");
    assert!(
        report["error"].as_str().unwrap().contains("output schema"),
        "{run:?}"
    );
}

#[test]
fn stdout_flood_is_bounded_and_never_reaches_the_host_stdout() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    let (run, report) = env.call("flood", r#"{"bytes": 8000000}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let log = report["log"].as_array().unwrap();
    let kept: usize = log
        .iter()
        .map(|l| l["message"].as_str().unwrap().len())
        .sum();
    assert!(kept <= 2 * (16 << 10) + 1024, "kept {kept} bytes of log");
    assert!(
        log.iter().any(|l| l["source"] == "stderr"),
        "stderr is captured too"
    );
    assert!(
        log.iter()
            .any(|l| l["message"].as_str().unwrap().contains("were dropped"))
    );
    // Without --report the host's stdout is the tool's output alone.
    let run = env.warden(&["call", "flood", "--input", r#"{"bytes": 100000}"#]);
    assert_eq!(run.code, OK);
    assert!(
        !run.stdout.contains("xxxx") && !run.stderr.contains("xxxx"),
        "{run:?}"
    );
}

#[test]
fn a_trapping_tool_gets_a_clean_error_with_a_backtrace() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    let (run, report) = env.call("panic", "{}");
    assert_failed(&run, &report, "trapped");
    let log = serde_json::to_string(&report["log"]).unwrap();
    assert!(
        log.contains("panicked on purpose"),
        "panic message is captured from stderr: {log}"
    );
}

// ---- files ----

#[test]
fn files_are_reachable_only_inside_granted_directories() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    // Allowed: read-write and read-only grants.
    let (run, _) = env.call("write_file", r#"{"path":"/data/new.txt","text":"hi"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(
        std::fs::read_to_string(env.path().join("granted/new.txt")).unwrap(),
        "hi"
    );
    let (run, report) = env.call("read_file", r#"{"path":"/ro/inside.txt"}"#);
    assert_eq!(
        (run.code, report["output"]["text"].as_str()),
        (OK, Some("inside")),
        "{run:?}"
    );

    // Denied: writing a read-only grant.
    let (run, _) = env.call(
        "write_file",
        r#"{"path":"/ro/inside.txt","text":"changed"}"#,
    );
    assert_eq!(run.code, TOOL_ERROR, "{run:?}");
    assert_eq!(
        std::fs::read_to_string(env.path().join("readonly/inside.txt")).unwrap(),
        "inside"
    );

    // Denied: `..`, absolute paths outside, and a symlink pointing outside.
    std::os::unix::fs::symlink(
        env.path().join("outside.txt"),
        env.path().join("granted/link"),
    )
    .unwrap();
    std::os::unix::fs::symlink(env.path(), env.path().join("granted/dirlink")).unwrap();
    let outside = env.path().join("outside.txt").display().to_string();
    for path in [
        "/data/../outside.txt",
        "/data/../../etc/passwd",
        "/etc/passwd",
        &outside,
        "/data/link",
        "/data/dirlink/outside.txt",
    ] {
        let (run, report) = env.call(
            "read_file",
            &serde_json::json!({ "path": path }).to_string(),
        );
        assert_eq!(run.code, TOOL_ERROR, "{path}: {run:?}");
        assert!(
            !run.stdout.contains("TOP-SECRET") && !run.stdout.contains("root:"),
            "{path} leaked: {run:?}"
        );
        assert_eq!(report["kind"], "tool-error", "{path}");
    }
    let (run, _) = env.call(
        "write_file",
        r#"{"path":"/data/../escaped.txt","text":"x"}"#,
    );
    assert_eq!(run.code, TOOL_ERROR, "{run:?}");
    assert!(!env.path().join("escaped.txt").exists());
    let (run, report) = env.call("list_dir", r#"{"path":"/"}"#);
    assert!(
        run.code == TOOL_ERROR
            || report["output"]["entries"]
                .as_array()
                .is_some_and(|e| e.is_empty()),
        "{run:?}"
    );
}

// ---- network ----

fn assert_http_denied(run: &support::Run, report: &Value) {
    assert_eq!(run.code, TOOL_ERROR, "{run:?}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("HttpRequestDenied"), "{run:?}");
}

#[test]
fn http_reaches_granted_hosts_only() {
    let granted = Listener::http();
    let other = Listener::http();
    let env = hostile_env(granted.port, HOSTILE_LIMITS);

    let (run, report) = env.call(
        "http_get",
        &format!(r#"{{"url":"{}"}}"#, granted.url("/hello")),
    );
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(report["output"]["body"], "hello from /hello");

    let (run, report) = env.call(
        "http_get",
        &format!(r#"{{"url":"{}"}}"#, other.url("/steal")),
    );
    assert_http_denied(&run, &report);
    assert_eq!(
        report["denied_requests"][0],
        format!("GET {}: not in the http grant", other.url("/steal"))
    );
    assert_eq!(
        other.count(),
        0,
        "no TCP connection may reach a host outside the grant"
    );
}

/// `wstd`, the usual Rust `wasi:http` client, hands a request over before it writes and
/// finishes the (empty) body of a GET: every granted GET must still succeed, and a
/// refused one must read as `HTTP-request-denied`, not as a network fault.
#[test]
fn a_thousand_granted_gets_through_wstd_all_succeed_and_a_refused_one_says_denied() {
    let listener = Listener::http();
    let env = Env::new(&format!(
        "[[plugin]]\nid = \"wstd\"\ncomponent = \"{{wstd-fetch}}\"\n[plugin.grants]\nhttp = [\"http://127.0.0.1:{}\"]\n[plugin.limits]\ntimeout_ms = 60000\n",
        listener.port
    ));
    for _ in 0..4 {
        let (run, report) = env.call(
            "wstd_get",
            &format!(r#"{{"url":"{}","times":250}}"#, listener.url("/hello")),
        );
        assert_eq!(run.code, OK, "{run:?}");
        assert_eq!(report["output"]["ok"], 250, "{}", report["output"]);
    }
    let (run, report) = env.call("wstd_get", r#"{"url":"http://10.0.0.1/","times":1}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let errors = report["output"]["errors"].to_string();
    assert!(errors.contains("HttpRequestDenied"), "{errors}");
}

#[test]
fn redirect_to_a_host_outside_the_grant_is_not_followed() {
    let granted = Listener::http();
    let other = Listener::http();
    let env = hostile_env(granted.port, HOSTILE_LIMITS);
    let url = granted.url(&format!("/redirect?to={}", other.url("/exfil")));
    let (run, report) = env.call(
        "http_get",
        &serde_json::json!({ "url": url, "follow": true }).to_string(),
    );
    assert_http_denied(&run, &report);
    assert_eq!(other.count(), 0);
    assert_eq!(granted.count(), 1);

    // Not following: the plugin just sees the 302.
    let (run, report) = env.call("http_get", &serde_json::json!({ "url": url }).to_string());
    assert_eq!(
        (run.code, report["output"]["status"].as_u64()),
        (OK, Some(302)),
        "{run:?}"
    );
}

#[test]
fn raw_sockets_and_dns_are_denied() {
    let listener = Listener::raw();
    let env = hostile_env(listener.port, HOSTILE_LIMITS);
    let (run, _) = env.call(
        "tcp_connect",
        &format!(r#"{{"addr":"127.0.0.1:{}"}}"#, listener.port),
    );
    assert_eq!(run.code, TOOL_ERROR, "{run:?}");
    assert_eq!(listener.count(), 0, "a raw TCP connection got through");
    for host in ["localhost", "example.com"] {
        let (run, report) = env.call("dns_lookup", &format!(r#"{{"host":"{host}"}}"#));
        assert_eq!(run.code, TOOL_ERROR, "{host}: {run:?}");
        assert!(report.get("output").is_none());
    }
}

// ---- environment ----

#[test]
fn host_environment_is_invisible_and_only_granted_env_is_set() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    let run = env.warden_with_env(
        &["call", "env", "--report"],
        &[
            ("WARDEN_TEST_HOST_SECRET", "hunter2-host-env"),
            ("HOME", "/root"),
        ],
    );
    assert_eq!(run.code, OK, "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let output = &report["output"];
    assert_eq!(output["vars"], serde_json::json!([["GRANTED", "yes"]]));
    assert_eq!(output["args"], serde_json::json!([]));
    assert!(
        !run.stdout.contains("hunter2-host-env") && !run.stdout.contains("/root"),
        "{run:?}"
    );
}

// ---- bad config, components and input ----

fn expect_config_error(body: &str, needles: &[&str]) {
    let env = Env::new(body);
    let run = env.warden(&["check"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks {needle:?}: {run:?}"
        );
    }
    assert!(
        run.stderr.contains("warden.toml:"),
        "error names the file: {run:?}"
    );
}

#[test]
fn malformed_config_gets_a_located_error() {
    // Line numbers count the three header lines Env writes.
    expect_config_error(
        "[[plugin]]\nid = \"a\"\ncomponent = \"{text-stats}\"\nbogus = 1\n",
        &["warden.toml:7:1", "bogus"],
    );
    expect_config_error("[[plugin]\nid = 1\n", &["warden.toml:4:"]);
    expect_config_error(
        "[[plugin]]\nid = \"a\"\ncomponent = 7\n",
        &["warden.toml:6:", "component"],
    );
    expect_config_error(
        "[[plugin]]\nid = \"a\"\ncomponent = \"missing.wasm\"\n",
        &["plugin[0].component", "not found"],
    );
    expect_config_error(
        "[[plugin]]\nid = \"a\"\ncomponent = \"{text-stats}\"\n[[plugin]]\nid = \"a\"\ncomponent = \"{notes}\"\n",
        &["warden.toml:8:", "duplicate id"],
    );
    expect_config_error(
        "[[plugin]]\nid = \"a\"\ncomponent = \"{text-stats}\"\n[plugin.grants]\nhttp = [\"ftp://x\"]\n",
        &["plugin[0].grants.http[0]", "scheme"],
    );
    expect_config_error(
        "[[plugin]]\nid = \"a\"\ncomponent = \"{text-stats}\"\n[plugin.limits]\nmemory_mb = 999999\n",
        &["plugin[0].limits.memory_mb", "between 1 and 4096"],
    );
    expect_config_error(
        "[[plugin]]\nid = \"a\"\ncomponent = \"{text-stats}\"\n[plugin.grants]\nfiles = [{ host = \"nope\", guest = \"/x\", mode = \"rw\" }]\n",
        &["plugin[0].grants.files[0].host"],
    );
    expect_config_error(
        "[[plugin]]\nid = \"a\"\ncomponent = \"{text-stats}\"\n[[policy]]\nid = \"p\"\ncomponent = \"{tiered-approval}\"\ntools = [\"text_stat\"]\n",
        &["policy[0].tools", "matches no loaded tool"],
    );
}

#[test]
fn two_plugins_exporting_the_same_tool_are_refused() {
    expect_config_error(
        "[[plugin]]\nid = \"one\"\ncomponent = \"{text-stats}\"\n[[plugin]]\nid = \"two\"\ncomponent = \"{text-stats}\"\n",
        &["warden.toml:8:", "plugin[1]", "`text_stats`", "\"one\""],
    );
}

#[test]
fn bad_components_are_refused_with_what_is_wrong() {
    let env = Env::new("");
    std::fs::write(env.path().join("text.wasm"), "not wasm at all").unwrap();
    std::fs::write(env.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        ("text.wasm", "not a WebAssembly file"),
        ("core.wasm", "core WebAssembly module, not a component"),
        (
            "{tiered-approval}",
            "it is a policy component; missing export `describe`",
        ),
    ];
    for (component, needle) in cases {
        env.write_config(&format!(
            "[[plugin]]\nid = \"a\"\ncomponent = \"{component}\"\n"
        ));
        let run = env.warden(&["check"]);
        assert_eq!(run.code, USAGE, "{run:?}");
        assert!(
            run.stderr.contains(needle) && run.stderr.contains("warden.toml:5:"),
            "{needle}: {run:?}"
        );
    }
    env.write_config("[[plugin]]\nid = \"a\"\ncomponent = \"{text-stats}\"\n[[policy]]\nid = \"p\"\ncomponent = \"{http-fetch}\"\n");
    let run = env.warden(&["check"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(
        run.stderr
            .contains("it is a tool component; missing export `evaluate`"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("imports `wasi:http/outgoing-handler@"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("which warden does not provide to a policy"),
        "{run:?}"
    );
}

#[test]
fn sha256_pin_mismatch_refuses_to_load() {
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(wasm("text-stats")).unwrap(),
        ))
    };
    let env = Env::new(&format!(
        "[[plugin]]\nid = \"a\"\ncomponent = \"{{text-stats}}\"\nsha256 = \"{digest}\"\n"
    ));
    assert_eq!(env.warden(&["check"]).code, OK);
    env.write_config(&format!(
        "[[plugin]]\nid = \"a\"\ncomponent = \"{{text-stats}}\"\nsha256 = \"{}\"\n",
        "0".repeat(64)
    ));
    let run = env.warden(&["check"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(run.stderr.contains("refusing to load"), "{run:?}");
}

#[test]
fn input_is_validated_against_the_tool_schema_before_anything_runs() {
    let env = Env::new("[[plugin]]\nid = \"a\"\ncomponent = \"{text-stats}\"\n");
    let run = env.warden(&["call", "text_stats", "--input", r#"{"text": 5}"#]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(
        run.stderr.contains("/text") && run.stderr.contains("not of type"),
        "{run:?}"
    );
    let run = env.warden(&[
        "call",
        "text_stats",
        "--input",
        r#"{"text": "x", "extra": 1}"#,
    ]);
    assert_eq!(run.code, USAGE, "{run:?}");
    let run = env.warden(&["call", "text_stats", "--input", "{not json"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(run.stderr.contains("not valid JSON"), "{run:?}");
    let run = env.warden(&["call", "text_stat", "--input", "{}"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(run.stderr.contains("did you mean `text_stats`"), "{run:?}");

    // An error quotes the value it is about: never the whole of a huge one.
    let huge = format!(r#"{{"text": {{"a": "{}"}}}}"#, "x".repeat(5 << 20));
    std::fs::write(env.path().join("huge.json"), &huge).unwrap();
    let run = env.warden(&["call", "text_stats", "--input", "@huge.json"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(
        run.stderr.contains("not of type"),
        "{}",
        &run.stderr[..run.stderr.len().min(500)]
    );
    assert!(
        run.stderr.len() < 4096,
        "{} bytes of error",
        run.stderr.len()
    );
}

// ---- the CLI ----

#[test]
fn check_prints_tools_policies_and_effective_grants() {
    let env = hostile_env(8080, HOSTILE_LIMITS);
    let run = env.warden(&["check"]);
    assert_eq!(run.code, OK, "{run:?}");
    for needle in [
        "hostile",
        "http://127.0.0.1:8080",
        "/data ->",
        "(rw)",
        "(ro)",
        "GRANTED",
        "memory 32 MiB",
        "timeout 500 ms",
        "text_stats",
        "memory 64 MiB, timeout 5000 ms",
    ] {
        assert!(
            run.stdout.contains(needle),
            "check output lacks {needle:?}: {run:?}"
        );
    }
}

#[test]
fn tools_lists_schemas_and_annotations() {
    let env = Env::new("[[plugin]]\nid = \"n\"\ncomponent = \"{text-stats}\"\n");
    let run = env.warden(&["tools", "--json"]);
    assert_eq!(run.code, OK, "{run:?}");
    let tools: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(tools[0]["name"], "text_stats");
    assert_eq!(tools[0]["annotations"]["readOnlyHint"], true);
    assert_eq!(tools[0]["inputSchema"]["required"][0], "text");
    assert_eq!(tools[0]["title"], "Text statistics");
    assert_eq!(tools[0]["outputSchema"]["type"], "object");
}

#[test]
fn inspect_describes_tools_policies_and_rejects_non_components() {
    let env = Env::new("");
    let run = env.warden(&["inspect", &wasm("notes").display().to_string(), "--json"]);
    assert_eq!(run.code, OK, "{run:?}");
    let info: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(info["world"], "warden:plugin/tool@0.1.0");
    let names: Vec<&str> = info["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["notes_list", "notes_read", "notes_write"]);
    assert!(
        info["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "warden:plugin/log@0.1.0")
    );

    let run = env.warden(&["inspect", &wasm("tiered-approval").display().to_string()]);
    assert_eq!(run.code, OK, "{run:?}");
    assert!(
        run.stdout.contains("warden:plugin/policy@0.1.0") && run.stdout.contains("evaluate"),
        "{run:?}"
    );

    std::fs::write(env.path().join("x.wasm"), "hello").unwrap();
    let run = env.warden(&["inspect", "x.wasm"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(
        run.stderr.starts_with("warden: inspect: ")
            && run.stderr.contains("not a WebAssembly file"),
        "{run:?}"
    );
}

#[test]
fn help_documents_commands_and_exit_codes() {
    let env = Env::new("");
    let run = env.warden(&["--help"]);
    assert_eq!(run.code, OK, "{run:?}");
    for needle in [
        "check",
        "tools",
        "inspect",
        "call",
        "Exit codes",
        "held for approval",
    ] {
        assert!(run.stdout.contains(needle), "{needle}: {run:?}");
    }
    let run = env.warden(&["call"]);
    assert_eq!(run.code, USAGE, "{run:?}");
}

#[test]
fn every_listing_stops_quietly_at_a_closed_pipe() {
    let env = audit_env();
    let (run, report) = env.call("text_stats", r#"{"text":"x"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let id = report["run_id"].as_str().unwrap().to_string();
    assert_eq!(env.warden(&["secrets", "init"]).code, OK);
    for args in [
        vec!["runs", "list"],
        vec!["runs", "list", "--json"],
        vec!["runs", "show", &id],
        vec!["audit", "tail"],
        vec!["audit", "search", "--json"],
        vec!["audit", "verify"],
        vec!["approvals", "list"],
        vec!["secrets", "list"],
        vec!["tools", "--json"],
        vec!["check"],
    ] {
        let run = env.warden_into_closed_pipe(&args);
        assert_eq!(run.code, OK, "{args:?}: {run:?}");
        assert!(!run.stderr.contains("panicked"), "{args:?}: {run:?}");
    }
}

#[test]
fn compiled_components_are_cached_and_a_corrupt_entry_is_recompiled() {
    let env = Env::new(
        "[[plugin]]\nid = \"a\"\ncomponent = \"{text-stats}\"\ncache_dir = \"own-cache\"\n",
    );
    // `cache_dir` is a top-level key; the one above belongs to the plugin and is refused.
    assert_eq!(env.warden(&["check"]).code, USAGE);
    let cache = env.path().join("own-cache");
    let body = format!(
        "[[plugin]]\nid = \"a\"\ncomponent = {:?}\n",
        wasm("text-stats").display().to_string()
    );
    std::fs::write(
        env.config(),
        format!("cache_dir = \"own-cache\"\nkey_dir = \"keys\"\n{body}"),
    )
    .unwrap();
    assert_eq!(env.warden(&["check"]).code, OK);
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].extension().is_some_and(|e| e == "cwasm"));
    std::fs::write(&entries[0], b"garbage").unwrap();
    let run = env.warden(&["call", "text_stats", "--input", r#"{"text":"x"}"#]);
    assert_eq!(run.code, OK, "{run:?}");
    assert!(
        std::fs::metadata(&entries[0]).unwrap().len() > 1000,
        "the entry was rewritten"
    );

    // Native code from a file others could have written is never loaded: here another
    // component's compiled code under this one's name, writable by anyone.
    use std::os::unix::fs::PermissionsExt;
    let good = std::fs::read(&entries[0]).unwrap();
    let other = env.path().join("other-cache");
    std::fs::write(
        env.config(),
        format!(
            "cache_dir = \"other-cache\"\nkey_dir = \"keys\"\n[[plugin]]\nid = \"a\"\ncomponent = {:?}\n",
            wasm("notes").display().to_string()
        ),
    )
    .unwrap();
    assert_eq!(env.warden(&["check"]).code, OK);
    let planted = std::fs::read_dir(&other)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&planted, &entries[0]).unwrap();
    std::fs::set_permissions(&entries[0], std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::write(
        env.config(),
        format!("cache_dir = \"own-cache\"\nkey_dir = \"keys\"\n{body}"),
    )
    .unwrap();
    let run = env.warden(&["call", "text_stats", "--input", r#"{"text":"x"}"#]);
    assert_eq!(run.code, OK, "the planted code was not run: {run:?}");
    assert!(run.stderr.contains("recompiling a cache entry"), "{run:?}");
    assert_eq!(
        std::fs::read(&entries[0]).unwrap(),
        good,
        "replaced by its own code"
    );
    // A cache directory others may write is not used at all.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = env.warden(&["call", "text_stats", "--input", r#"{"text":"x"}"#]);
    assert_eq!(run.code, OK, "{run:?}");
    assert!(
        run.stderr.contains("not using the compile cache"),
        "{run:?}"
    );
}

// ---- isolation ----

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
    let action = |input: &str| warden::bindings::Action {
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
    let reason = |d: warden::policy::PolicyDecision| match d.verdict {
        warden::policy::Verdict::Deny { reason } => reason,
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

// ---- secrets ----

const SECRET: &str = "sk-live-7f3a9c1e5b2d8f4a6c0e";
const OTHER_SECRET: &str = "db-pass-Qm9vYmFyQmF6";
const HEADER_GRANT: &str = r#"{ name = "api_token", header = "authorization", format = "Bearer {}", hosts = ["127.0.0.1"] }"#;

/// A hostile plugin granted HTTP to `granted` (by IP) and `other` (by name), with a
/// vault holding `api_token` and `db_password`, and the given secret grants.
fn secret_env(granted: &Listener, other: &Listener, secret_grants: &str) -> Env {
    let env = Env::new("");
    let init = env.warden(&["secrets", "init"]);
    assert_eq!(init.code, OK, "{init:?}");
    for (name, value) in [("api_token", SECRET), ("db_password", OTHER_SECRET)] {
        let run = env.warden_stdin(&["secrets", "set", name], &format!("{value}\n"));
        assert_eq!(run.code, OK, "{run:?}");
    }
    env.write_config(&format!(
        r#"
[[plugin]]
id = "hostile"
component = "{{hostile}}"
[plugin.grants]
http = ["http://127.0.0.1:{}", "http://localhost:{}"]
secrets = [{secret_grants}]
"#,
        granted.port, other.port
    ));
    env
}

/// Nothing warden wrote (data dir, stdout, stderr) holds a secret in any common encoding.
fn assert_no_secret(env: &Env, runs: &[&support::Run]) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let needles = [
        SECRET.to_string(),
        OTHER_SECRET.to_string(),
        b64.encode(SECRET),
        b64.encode(OTHER_SECRET),
    ];
    let mut files = vec![env.path().to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_none_or(|e| e != "wasm" && e != "cwasm") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            for needle in &needles {
                assert!(
                    !text.contains(needle.as_str()),
                    "{} contains a secret",
                    path.display()
                );
            }
        }
    }
    for run in runs {
        for needle in &needles {
            assert!(
                !run.stdout.contains(needle.as_str()) && !run.stderr.contains(needle.as_str()),
                "output leaks: {run:?}"
            );
        }
    }
}

#[test]
fn vault_keeps_values_encrypted_and_refuses_wrong_keys_and_loose_key_files() {
    let (a, b) = (Listener::http(), Listener::http());
    let env = secret_env(&a, &b, HEADER_GRANT);
    // The key lives outside the data dir: a copy of the data dir holds no key.
    let key_file = env.path().join("keys/master.key");
    assert!(!env.path().join("data/master.key").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let check = env.warden(&["check"]);
    assert!(
        check
            .stdout
            .contains("secrets: api_token (header authorization to 127.0.0.1)"),
        "{check:?}"
    );
    let list = env.warden(&["secrets", "list", "--json"]);
    assert_eq!(list.code, OK, "{list:?}");
    let rows: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(rows[0]["name"], "api_token");
    assert_eq!(rows[0]["granted_to"], serde_json::json!(["hostile"]));
    let rotate = env.warden_stdin(&["secrets", "rotate", "db_password"], OTHER_SECRET);
    assert_eq!(rotate.code, OK, "{rotate:?}");
    assert_no_secret(&env, &[&check, &list, &rotate]);

    let wrong = env.warden_with_env(
        &["secrets", "list"],
        &[("WARDEN_MASTER_KEY", &"ab".repeat(32))],
    );
    assert_eq!(wrong.code, USAGE, "{wrong:?}");
    assert!(wrong.stderr.contains("wrong master key"), "{wrong:?}");

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = env.warden(&["check"]);
    assert_eq!(loose.code, USAGE, "{loose:?}");
    assert!(
        loose.stderr.contains("readable by others") && loose.stderr.contains("chmod 600"),
        "{loose:?}"
    );
}

#[test]
fn a_master_key_left_in_the_data_dir_still_opens_the_vault_with_a_warning() {
    let (a, b) = (Listener::http(), Listener::http());
    let env = secret_env(&a, &b, HEADER_GRANT);
    // As an older warden left it: the key beside the vault.
    std::fs::rename(
        env.path().join("keys/master.key"),
        env.path().join("data/master.key"),
    )
    .unwrap();
    let check = env.warden(&["check"]);
    assert_eq!(check.code, OK, "{check:?}");
    assert!(
        check
            .stderr
            .contains("is in the data dir, beside the vault"),
        "{check:?}"
    );
    // Without a key dir (no HOME, none configured) there is nowhere to make one.
    let bare = Env::new("");
    std::fs::write(bare.config(), "data_dir = \"data\"\n").unwrap();
    let init = bare.warden(&["secrets", "init"]);
    assert_eq!(init.code, USAGE, "{init:?}");
    assert!(
        init.stderr.contains("no place for the master key"),
        "{init:?}"
    );
}

#[test]
fn tampered_or_swapped_ciphertexts_fail_the_load() {
    let (a, b) = (Listener::http(), Listener::http());
    let grants = r#"{ name = "api_token", header = "x-a", hosts = ["127.0.0.1"] }, { name = "db_password", header = "x-b", hosts = ["127.0.0.1"] }"#;
    let env = secret_env(&a, &b, grants);
    assert_eq!(env.warden(&["check"]).code, OK);
    let vault_path = env.path().join("data/vault.json");
    let original = std::fs::read_to_string(&vault_path).unwrap();

    let mut doc: Value = serde_json::from_str(&original).unwrap();
    let (x, y) = (
        doc["secrets"]["api_token"][0].clone(),
        doc["secrets"]["db_password"][0].clone(),
    );
    for field in ["nonce", "ciphertext"] {
        doc["secrets"]["api_token"][0][field] = y[field].clone();
        doc["secrets"]["db_password"][0][field] = x[field].clone();
    }
    std::fs::write(&vault_path, serde_json::to_string(&doc).unwrap()).unwrap();
    let swapped = env.warden(&["check"]);
    assert_eq!(swapped.code, USAGE, "{swapped:?}");
    assert!(swapped.stderr.contains("tampered"), "{swapped:?}");

    let mut doc: Value = serde_json::from_str(&original).unwrap();
    let ct = doc["secrets"]["api_token"][0]["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    // Change the first base64 digit: still valid base64, different ciphertext.
    let first = if ct.starts_with('A') { "B" } else { "A" };
    let flipped = format!("{first}{}", &ct[1..]);
    doc["secrets"]["api_token"][0]["ciphertext"] = Value::String(flipped);
    std::fs::write(&vault_path, serde_json::to_string(&doc).unwrap()).unwrap();
    let edited = env.warden(&["check"]);
    assert_eq!(edited.code, USAGE, "{edited:?}");
    assert!(
        edited
            .stderr
            .contains("secret \"api_token\" version 1 failed authentication"),
        "{edited:?}"
    );
}

#[test]
fn injected_header_reaches_the_granted_host_but_never_the_plugin() {
    let (granted, other) = (Listener::http(), Listener::http());
    let env = secret_env(&granted, &other, HEADER_GRANT);
    let (run, report) = env.call(
        "secret_http",
        &format!(r#"{{"url":"{}"}}"#, granted.url("/echo")),
    );
    assert_eq!(run.code, OK, "{run:?}");
    assert!(
        granted
            .received()
            .contains(&format!("authorization: Bearer {SECRET}")),
        "{}",
        granted.received()
    );
    // The server echoed the header back; the plugin's output reaches the caller redacted
    // (the header's whole formatted value is one of the forms scrubbed).
    let body = report["output"]["body"].as_str().unwrap();
    assert!(body.contains("authorization: [REDACTED]"), "{body}");
    assert_no_secret(&env, &[&run]);
}

#[test]
fn redirect_to_another_host_does_not_carry_the_injected_header() {
    let (granted, other) = (Listener::http(), Listener::http());
    let env = secret_env(
        &granted,
        &other,
        r#"{ name = "api_token", header = "authorization", hosts = ["127.0.0.1"] }"#,
    );
    let url = granted.url(&format!(
        "/redirect?to={}",
        format_args!("http://localhost:{}/echo", other.port)
    ));
    let (run, report) = env.call(
        "http_get",
        &serde_json::json!({ "url": url, "follow": true }).to_string(),
    );
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(
        report["output"]["status"], 200,
        "the redirect was followed to the other granted host"
    );
    assert!(granted.received().contains(SECRET));
    assert!(
        !other.received().contains(SECRET) && other.received().contains("GET /echo"),
        "{}",
        other.received()
    );
    assert_no_secret(&env, &[&run]);
}

#[test]
fn placeholders_are_substituted_only_where_the_grant_says() {
    let (granted, other) = (Listener::http(), Listener::http());
    let grant = r#"{ name = "api_token", placeholder = true, substitute = ["query", "body"], hosts = ["127.0.0.1"] }"#;
    let env = secret_env(&granted, &other, grant);
    let mut runs = Vec::new();
    for put in ["header", "query", "body"] {
        let input =
            serde_json::json!({ "url": granted.url("/echo"), "secret": "api_token", "put": put });
        let (run, _) = env.call("secret_http", &input.to_string());
        assert_eq!(run.code, OK, "{put}: {run:?}");
        runs.push(run);
    }
    let seen = granted.received();
    assert!(
        seen.contains(&format!("x-api-key: {SECRET}")),
        "header: {seen}"
    );
    assert!(seen.contains(&format!("?key={SECRET}")), "query: {seen}");
    assert!(
        seen.contains(&format!("{{\"key\":\"{SECRET}\"}}")),
        "body: {seen}"
    );
    assert!(
        !seen.contains("warden-secret-"),
        "every placeholder was replaced: {seen}"
    );

    // To a host the secret's grant does not name: refused before any connection.
    let input = serde_json::json!({ "url": format!("http://localhost:{}/echo", other.port), "secret": "api_token", "put": "header" });
    let (run, report) = env.call("secret_http", &input.to_string());
    assert_http_denied(&run, &report);
    assert!(
        report["denied_requests"][0]
            .as_str()
            .unwrap()
            .contains("placeholder for secret api_token"),
        "{run:?}"
    );
    assert_eq!(other.count(), 0);
    runs.push(run);
    let refs: Vec<&support::Run> = runs.iter().collect();
    assert_no_secret(&env, &refs);
}

/// A tool holding a revealed secret encodes it every way a leak would (base64 of a
/// header, of bodies at each byte offset, escaped twice, URL-encoded): none of it
/// leaves the call, in its output, the CLI's, the run history or the audit log.
#[test]
fn a_secret_encoded_every_way_a_tool_would_never_leaves_the_call() {
    use base64::Engine as _;
    let tricky = r#"q"u\ote/and+pl=us-0123456789"#;
    let env = Env::new("");
    assert_eq!(env.warden(&["secrets", "init"]).code, OK);
    let set = env.warden_stdin(&["secrets", "set", "tricky"], &format!("{tricky}\n"));
    assert_eq!(set.code, OK, "{set:?}");
    env.write_config(
        "[[plugin]]\nid = \"hostile\"\ncomponent = \"{hostile}\"\n[plugin.grants]\nsecrets = [{ name = \"tricky\", reveal = true }]\n",
    );
    let (run, report) = env.call("encode", r#"{"name":"tricky"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let plain = env.warden(&["call", "encode", "--input", r#"{"name":"tricky"}"#]);
    assert_eq!(plain.code, OK, "{plain:?}");
    assert!(
        report["output"]["header_b64"]
            .as_str()
            .unwrap()
            .contains("[REDACTED]"),
        "{report}"
    );
    // What would betray the value: its base64 at every offset (each alphabet), and the
    // JSON escaping of it applied twice.
    let mut needles: Vec<String> = Vec::new();
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        for offset in 0..3 {
            let mut padded = vec![b'x'; offset];
            padded.extend_from_slice(tricky.as_bytes());
            let encoded = engine.encode(&padded);
            let last = 4 * (padded.len() / 3);
            needles.push(encoded[4..last].to_string());
        }
    }
    let once = serde_json::to_string(tricky).unwrap();
    needles.push(
        serde_json::to_string(&once)
            .unwrap()
            .trim_matches('"')
            .to_string(),
    );
    needles.push("ote/and+pl".to_string());
    let mut texts = vec![run.stdout.clone(), run.stderr.clone(), plain.stdout.clone()];
    let mut files = vec![env.path().join("data")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_none_or(|e| e != "wasm" && e != "cwasm") {
            texts.push(String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned());
        }
    }
    for text in &texts {
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{needle} leaked: {}",
                &text[..text.len().min(2000)]
            );
        }
    }
}

#[test]
fn reveal_needs_its_grant_is_recorded_and_is_redacted() {
    let (a, b) = (Listener::http(), Listener::http());
    let grants = r#"{ name = "db_password", reveal = true }, { name = "api_token", header = "x-token", hosts = ["127.0.0.1"] }"#;
    let env = secret_env(&a, &b, grants);
    let (run, report) = env.call("reveal", r#"{"name":"db_password"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(report["output"]["value"], "[REDACTED]");
    assert_eq!(report["secret_reveals"], serde_json::json!(["db_password"]));

    let (run, report) = env.call("reveal", r#"{"name":"api_token"}"#);
    assert_failed(&run, &report, "tool-error");
    assert!(
        report["error"].as_str().unwrap().contains("wrong-use"),
        "{run:?}"
    );
    // Not granted and not in the vault look the same.
    for name in ["not_granted_anywhere", "db_password_v2"] {
        let (run, report) = env.call("reveal", &format!(r#"{{"name":"{name}"}}"#));
        assert!(
            report["error"].as_str().unwrap().contains("not-found"),
            "{run:?}"
        );
    }
    let (env_run, _) = env.call("env", "{}");
    // An input that quotes a secret is refused by the schema without echoing it.
    let quoted = env.warden(&[
        "call",
        "log_flood",
        "--input",
        &format!(r#"{{"lines":"{OTHER_SECRET}"}}"#),
    ]);
    assert_eq!(quoted.code, OK, "hostile tools take any object: {quoted:?}");
    let bad = env.warden(&[
        "call",
        "reveal",
        "--input",
        &format!(r#"["{OTHER_SECRET}"]"#),
    ]);
    assert_eq!(bad.code, USAGE, "{bad:?}");
    assert!(bad.stderr.contains("[REDACTED]"), "{bad:?}");
    assert_no_secret(&env, &[&run, &env_run, &quoted, &bad]);
}

#[test]
fn secret_grants_are_checked_at_load() {
    let (a, b) = (Listener::http(), Listener::http());
    let cases = [
        (
            r#"{ name = "missing", header = "x", hosts = ["127.0.0.1"] }"#,
            "secret \"missing\" is not in the vault",
        ),
        (
            r#"{ name = "api_token", header = "x", hosts = ["api.example.com"] }"#,
            "no `http` grant of this plugin covers it",
        ),
        (
            r#"{ name = "api_token", header = "x", reveal = true }"#,
            "exactly one use",
        ),
        (
            r#"{ name = "api_token", placeholder = true }"#,
            "`hosts` must name where",
        ),
        (
            r#"{ name = "api_token", reveal = true, hosts = ["127.0.0.1"] }"#,
            "takes no `hosts`",
        ),
    ];
    for (grant, needle) in cases {
        let env = secret_env(&a, &b, grant);
        let run = env.warden(&["check"]);
        assert_eq!(run.code, USAGE, "{grant}: {run:?}");
        assert!(
            run.stderr.contains(needle) && run.stderr.contains("grants.secrets[0]"),
            "{grant}: {run:?}"
        );
    }
    // A files grant that would let the plugin read the vault is refused.
    let env = secret_env(&a, &b, r#"{ name = "api_token", reveal = true }"#);
    env.append_config("[[plugin]]\nid = \"peek\"\ncomponent = \"{text-stats}\"\n[plugin.grants]\nfiles = [{ host = \".\", guest = \"/all\", mode = \"ro\" }]\n");
    let run = env.warden(&["check"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(run.stderr.contains("would expose"), "{run:?}");
}

// ---- audit log and run history ----

fn audit_env() -> Env {
    let env = Env::new(
        "[[plugin]]\nid = \"t\"\ncomponent = \"{text-stats}\"\n[[plugin]]\nid = \"hostile\"\ncomponent = \"{hostile}\"\n[plugin.grants]\nfiles = [{ host = \"granted\", guest = \"/data\", mode = \"rw\" }]\n[[policy]]\nid = \"tiers\"\ncomponent = \"{tiered-approval}\"\ntools = [\"text_stats\"]\n",
    );
    std::fs::create_dir_all(env.path().join("granted")).unwrap();
    env
}

fn audit_records(env: &Env) -> Vec<Value> {
    let run = env.warden(&["audit", "search", "--json"]);
    assert_eq!(run.code, OK, "{run:?}");
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_host_call_of_a_run_is_audited_and_the_run_is_in_history() {
    let env = audit_env();
    let (run, report) = env.call("log_flood", r#"{"lines": 5}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let id = report["run_id"].as_str().unwrap();
    let (write, write_report) = env.call("write_file", r#"{"path":"/data/a.txt","text":"x"}"#);
    assert_eq!(write.code, OK, "{write:?}");

    let records = audit_records(&env);
    let of_run: Vec<&Value> = records.iter().filter(|r| r["run"] == id).collect();
    let kinds: Vec<&str> = of_run.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"run-start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run-end"), "{kinds:?}");
    let logs = of_run
        .iter()
        .filter(|r| r["kind"] == "host-call" && r["function"] == "log")
        .count();
    assert_eq!(logs, 5, "one record per log call: {of_run:?}");
    let host_calls = of_run.iter().filter(|r| r["kind"] == "host-call").count() as u64;
    assert_eq!(report["host_calls"].as_u64(), Some(host_calls));
    assert!(of_run.iter().all(|r| r["kind"] != "host-call"
        || r["component"] == "plugin:hostile" && r["digest"] == report["plugin_digest"]));

    let write_id = write_report["run_id"].as_str().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["run"] == write_id && r["function"] == "[method]descriptor.open-at"),
        "filesystem calls are recorded"
    );

    let show = env.warden(&["runs", "show", id, "--json"]);
    assert_eq!(show.code, OK, "{show:?}");
    let row: Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(
        (row["status"].as_str(), row["host_calls"].as_u64()),
        (Some("ok"), Some(host_calls))
    );
    let list = env.warden(&["runs", "list", "--tool", "write_file", "--json"]);
    assert_eq!(list.stdout.lines().count(), 1, "{list:?}");
    let verify = env.warden(&["audit", "verify"]);
    assert_eq!(verify.code, OK, "{verify:?}");
}

#[test]
fn a_failed_run_can_be_debugged_from_history() {
    let env = audit_env();
    let (run, report) = env.call("panic", "{}");
    assert_eq!(run.code, TOOL_ERROR);
    let show = env.warden(&["runs", "show", report["run_id"].as_str().unwrap()]);
    assert_eq!(show.code, OK, "{show:?}");
    for needle in [
        "trapped",
        "why",
        "guest backtrace",
        "panicked on purpose",
        "timings",
    ] {
        assert!(show.stdout.contains(needle), "{needle}: {show:?}");
    }
    let (denied, report) = env.call("text_stats", r#"{"text":"x"}"#);
    assert_eq!(denied.code, OK);
    let decisions = env.warden(&[
        "audit",
        "search",
        "--run",
        report["run_id"].as_str().unwrap(),
        "--kind",
        "policy-decision",
        "--json",
    ]);
    let record: Value = serde_json::from_str(decisions.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        (record["policy"].as_str(), record["decision"].as_str()),
        (Some("tiers"), Some("allow"))
    );
}

/// Run a few calls, then tamper with a copy of the log in each way and verify.
#[test]
fn audit_verify_catches_every_kind_of_tamper() {
    let env = audit_env();
    for i in 0..3 {
        let (run, _) = env.call("text_stats", &format!(r#"{{"text":"call {i}"}}"#));
        assert_eq!(run.code, OK);
    }
    assert_eq!(env.warden(&["audit", "verify"]).code, OK);
    let segment = env.path().join("data/audit/segment-00000001.jsonl");
    let original = std::fs::read_to_string(&segment).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 10, "{}", lines.len());
    let join = |ls: &[&str]| ls.join("\n") + "\n";

    let mut edited = lines.clone();
    let changed = edited[4]
        .replacen("text_stats", "text_stat5", 1)
        .replacen("allow", "a11ow", 1)
        .replacen("ok", "0k", 1);
    edited[4] = &changed;
    let mut deleted = lines.clone();
    deleted.remove(5);
    let mut swapped = lines.clone();
    swapped.swap(5, 6);
    let forged = format!(
        r#"{{"seq":{},"prev":"{}","kind":"run-end","hash":"{}"}}"#,
        lines.len() + 1,
        "0".repeat(64),
        "f".repeat(64)
    );
    let mut appended = lines.clone();
    appended.push(&forged);
    let truncated = &original[..original.len() - 10];
    let mut tail_deleted = lines.clone();
    tail_deleted.pop();
    let cases: [(&str, String, &str); 6] = [
        ("edit", join(&edited), "BROKEN at record 5"),
        ("delete", join(&deleted), "BROKEN at record 6"),
        ("swap", join(&swapped), "BROKEN at record 6"),
        (
            "append forged",
            join(&appended),
            &format!("BROKEN at record {}", lines.len() + 1),
        ),
        (
            "truncate",
            truncated.to_string(),
            &format!("BROKEN at record {}", lines.len()),
        ),
        (
            "delete the tail",
            join(&tail_deleted),
            &format!("BROKEN at record {}", lines.len()),
        ),
    ];
    for (what, text, needle) in cases {
        std::fs::write(&segment, text).unwrap();
        let run = env.warden(&["audit", "verify"]);
        assert_eq!(run.code, 1, "{what}: {run:?}");
        assert!(
            run.stdout.contains(needle),
            "{what}: expected {needle:?}: {run:?}"
        );
    }
    std::fs::write(&segment, &original).unwrap();
    assert_eq!(env.warden(&["audit", "verify"]).code, OK);
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_the_call() {
    // Loading: the config-load record cannot be written, so nothing runs.
    let env = audit_env();
    std::fs::create_dir_all(env.path().join("data/audit")).unwrap();
    std::os::unix::fs::symlink(
        "/dev/full",
        env.path().join("data/audit/segment-00000001.jsonl"),
    )
    .unwrap();
    let run = env.warden(&[
        "call",
        "write_file",
        "--input",
        r#"{"path":"/data/x.txt","text":"x"}"#,
    ]);
    assert_eq!(run.code, NOT_RECORDED, "{run:?}");
    assert!(
        run.stderr.contains("data/audit/segment-00000001.jsonl")
            && run.stderr.contains("No space left"),
        "the path and the OS error: {run:?}"
    );
    assert!(
        !env.path().join("granted/x.txt").exists(),
        "the tool ran unaudited"
    );
}

#[tokio::test]
async fn a_full_audit_log_mid_run_withholds_the_result_and_every_later_call() {
    let env = audit_env();
    env.append_config("[audit]\nmax_segment_kb = 1\n");
    let rt = Runtime::load(Config::load(&env.config()).unwrap())
        .await
        .unwrap();
    // The log rotates into this "segment" once the first passes 1 KiB: the disk is full.
    std::os::unix::fs::symlink(
        "/dev/full",
        env.path().join("data/audit/segment-00000002.jsonl"),
    )
    .unwrap();
    let mut failures = 0;
    for _ in 0..4 {
        match rt
            .call(CallRequest {
                principal: "t",
                tool: "text_stats",
                input: r#"{"text":"x"}"#,
            })
            .await
        {
            Err(warden::CallError::NotRecorded(why)) => {
                failures += 1;
                assert!(
                    why.contains("No space left") || why.contains("not writable"),
                    "{why}"
                );
            }
            Ok(_) => assert_eq!(failures, 0, "a call succeeded after the audit log failed"),
            Err(other) => panic!("{other}"),
        }
    }
    assert!(failures >= 3, "{failures}");
}

#[test]
fn kill_9_during_a_load_of_calls_leaves_a_verifiable_log() {
    let env = audit_env();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("-c")
        .arg(env.config())
        .args([
            "bench",
            "--only",
            "call",
            "--iterations",
            "1000000",
            "--tool",
            "text_stats",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();

    let verify = env.warden(&["audit", "verify"]);
    assert_eq!(verify.code, OK, "{verify:?}");
    let records = audit_records(&env);
    let runs = env.warden(&["runs", "list", "--limit", "1000000", "--json"]);
    let rows: Vec<Value> = runs
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() > 10, "the load ran: {} runs", rows.len());
    let ended: std::collections::HashSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "run-end")
        .filter_map(|r| r["run"].as_str())
        .collect();
    for row in &rows {
        assert!(
            ended.contains(row["id"].as_str().unwrap()),
            "run {} is in history without its records",
            row["id"]
        );
    }
}

#[test]
fn run_history_from_a_newer_warden_is_refused_not_guessed_at() {
    let env = audit_env();
    let (run, _) = env.call("text_stats", r#"{"text":"x"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let db = rusqlite::Connection::open(env.path().join("data/runs.db")).unwrap();
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    let list = env.warden(&["runs", "list"]);
    assert_eq!(list.code, NOT_RECORDED, "{list:?}");
    assert!(list.stderr.contains("newer warden"), "{list:?}");
}

#[test]
fn file_grants_cannot_reach_wardens_own_state() {
    // Even before the data dir exists, a grant over it (or the compile cache) is refused.
    for (grant, needle) in [
        (".", "data dir"),
        ("data", "data dir"),
        ("cache", "compile cache"),
    ] {
        let env = Env::new("");
        std::fs::create_dir_all(env.path().join(grant)).unwrap();
        std::fs::write(
            env.config(),
            format!(
                "cache_dir = \"cache\"\n[[plugin]]\nid = \"h\"\ncomponent = {:?}\n[plugin.grants]\nfiles = [{{ host = {grant:?}, guest = \"/x\", mode = \"rw\" }}]\n",
                wasm("hostile").display().to_string()
            ),
        )
        .unwrap();
        if grant == "." {
            let _ = std::fs::remove_dir_all(env.path().join("data"));
        }
        let run = env.warden(&["check"]);
        assert_eq!(run.code, USAGE, "{grant}: {run:?}");
        assert!(
            run.stderr.contains("would expose warden's") && run.stderr.contains(needle),
            "{grant}: {run:?}"
        );
    }
}
