//! Network and environment: HTTP to granted hosts only, no sockets or DNS, only granted env.

use super::*;

pub(crate) fn assert_http_denied(run: &support::Run, report: &Value) {
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
