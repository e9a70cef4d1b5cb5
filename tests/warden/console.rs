//! The operator console (`/console`), driven in a real browser (headless Chromium over
//! WebDriver) where a person would use it, and over raw HTTP where a forger would.
//! Each main view leaves a screenshot under `target/console-screenshots/`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;

use super::OK;
use crate::approvals::{
    ONCALL, approval, audit_kinds, free_port, held_write, note_exists, queue_env, store, wait_until,
};
use crate::support::browser::{Browser, browser};
use crate::support::{Env, Listener, Served, exchange, metric};

const HARD_WRITES: &str = "tools = { notes_write = \"hard\" }";

/// Markup a tool might return, meant to run in an operator's browser.
const HOSTILE: &str =
    "<script>window.pwned = 1</script>\"><img src=x onerror=\"window.pwned = 2\">";

fn hard_env() -> Env {
    queue_env(HARD_WRITES, ONCALL)
}

/// Type `token` into the sign-in page and submit it, as a person would.
fn try_sign_in(b: &Browser, served: &Served, token: &str) {
    b.goto(&served.url("/console/login"));
    let field = b.find("#token");
    b.type_into(&field, token);
    b.click(&b.find("form.signin button[type=submit]"));
}

/// Sign in as `token` and wait for the console to open.
fn sign_in(b: &Browser, served: &Served, token: &str) {
    try_sign_in(b, served, token);
    b.wait_text("Signed in as");
}

/// Sign in over raw HTTP: the session cookie (`warden_session=…`), if one was set.
pub(super) fn session_cookie(served: &Served, token: &str) -> Option<String> {
    let (_, head, _) = exchange(
        "POST",
        &served.url("/console/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(&format!("token={token}")),
    );
    head.lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .map(str::to_string)
}

/// GET `path` with `cookie`: (status, headers, body).
pub(super) fn get(served: &Served, path: &str, cookie: &str) -> (u16, String, String) {
    exchange("GET", &served.url(path), &[("cookie", cookie)], None)
}

pub(super) fn field(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).map(|i| i + marker.len()).unwrap_or(0);
    page[start..start + page[start..].find('"').unwrap_or(0)].to_string()
}

#[test]
fn only_approvers_and_operators_sign_in_and_signing_out_ends_the_session() {
    let env = hard_env();
    let served = env.serve();
    let b = browser();
    b.goto(&served.url("/console/runs"));
    assert!(b.url().contains("/console/login"), "{}", b.url());
    b.screenshot("sign-in");

    try_sign_in(&b, &served, "token-agent-only-made-up");
    b.wait_text("That token is not valid.");
    // `agent` holds the agent and approver roles in these tokens; one with only the
    // agent role is refused (below, over HTTP, with its own config).
    sign_in(&b, &served, "token-alice");
    assert!(b.url().ends_with("/console/approvals"), "{}", b.url());
    assert_eq!(
        b.count("header a[href='/console/runs']"),
        0,
        "no operator views for an approver"
    );
    b.goto(&served.url("/console/fleet"));
    b.wait_text("operator role");

    let (status, _, _) = get(&served, "/console/approvals", "warden_session=forged");
    assert_eq!(status, 303, "a made-up session is sent to sign in");

    // Signing out revokes the session on the server, not just the cookie in the browser.
    let held = session_cookie(&served, "token-bob").expect("bob signs in");
    let (status, _, page) = get(&served, "/console/approvals", &held);
    assert_eq!(status, 200, "{page}");
    let csrf = field(&page, "csrf");
    let (status, head, _) = exchange(
        "POST",
        &served.url("/console/logout"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", &held),
        ],
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(status, 303, "{head}");
    let (status, head, _) = get(&served, "/console/approvals", &held);
    assert_eq!(status, 303, "the old cookie no longer signs anyone in");
    assert!(head.contains("/console/login"), "{head}");

    b.click(&b.find("form.signout button"));
    b.wait_text("You are signed out.");
    b.goto(&served.url("/console/approvals"));
    assert!(b.url().contains("/console/login"), "{}", b.url());
    drop(served);

    let records = warden_core::store::audit::read_all(&env.path().join("data/audit")).unwrap();
    let sessions: Vec<String> = records
        .iter()
        .filter(|r| r["kind"] == "console-session")
        .map(|r| {
            format!(
                "{} {}",
                r["principal"].as_str().unwrap(),
                r["event"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        sessions,
        [
            "alice sign-in",
            "bob sign-in",
            "bob sign-out",
            "alice sign-out"
        ]
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "auth-denied" && r["path"] == "/console/login"),
        "a failed sign-in is audited"
    );
}

#[test]
fn an_agent_token_never_signs_in_and_failed_sign_ins_are_throttled() {
    let env = Env::new("");
    let hash = crate::support::sha256_hex("token-robot");
    env.write_config(&format!(
        "[[token]]\nname = \"robot\"\nprincipal = \"robot\"\nroles = [\"agent\"]\nsha256 = \"{hash}\"\n\n\
         [[plugin]]\nid = \"text-stats\"\ncomponent = \"{{text-stats}}\"\n"
    ));
    let served = env.serve();
    let (status, head, page) = exchange(
        "POST",
        &served.url("/console/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some("token=token-robot"),
    );
    assert_eq!(status, 403, "{page}");
    assert!(!head.contains("set-cookie"), "{head}");
    assert!(page.contains("agent"), "{page}");
    let mut last = 0;
    for _ in 0..40 {
        let (status, _, _) = exchange(
            "POST",
            &served.url("/console/login"),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some("token=guess"),
        );
        last = status;
        if status == 429 {
            break;
        }
        assert_eq!(status, 401);
    }
    assert_eq!(last, 429, "a source guessing tokens is throttled");
    drop(served);
    let records = warden_core::store::audit::read_all(&env.path().join("data/audit")).unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "auth-denied" && r["path"] == "/console/login"),
        "failed sign-ins are audited"
    );
}

#[test]
fn a_console_session_ends_after_its_idle_time() {
    let env = hard_env();
    let mut config = std::fs::read_to_string(env.config()).unwrap();
    config += "\n[server]\nsession_idle_secs = 1\nsession_max_secs = 60\n";
    std::fs::write(env.config(), config).unwrap();
    let served = env.serve();
    let cookie = session_cookie(&served, "token-alice").expect("a session");
    let (status, _, _) = get(&served, "/console/approvals", &cookie);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, head, _) = get(&served, "/console/approvals", &cookie);
    assert_eq!(status, 303, "idle past session_idle_secs");
    assert!(head.contains("ended=1"), "{head}");
}

#[test]
fn an_approver_decides_from_the_inbox_by_keyboard_and_the_call_runs_once() {
    let env = hard_env();
    let (run_id, id) = held_write(&env, "from-console", &[]);
    let served = env.serve();
    let b = browser();
    sign_in(&b, &served, "token-alice");
    b.find(&format!("#req-{id}"));
    b.screenshot("approvals-inbox");
    let shown = b.text(&b.find(&format!("#req-{id} code.sha")));
    assert_eq!(shown, approval(&env, &id)["input_sha256"].as_str().unwrap());

    // Keyboard only: Tab from the top of the page to this request's Approve, then Enter.
    b.run("document.activeElement.blur(); window.scrollTo(0, 0); return 0;");
    let mut reached = false;
    for _ in 0..60 {
        b.press("\u{E004}");
        let focused = b.run(
            "const e = document.activeElement; return e ? (e.value || '') + '|' + (e.closest('article') ? e.closest('article').id : '') : '';",
        );
        if focused.as_str() == Some(&format!("approve|req-{id}")) {
            reached = true;
            break;
        }
    }
    assert!(reached, "Approve is reachable with Tab");
    let visible = b.run(
        "const s = getComputedStyle(document.activeElement); return s.outlineStyle !== 'none' && s.outlineWidth !== '0px';",
    );
    assert_eq!(visible, Value::Bool(true), "the focus is visible");
    b.press("\u{E007}");
    b.wait_text("is approved");
    wait_until("the approved call to run", || {
        note_exists(&env, "from-console")
    });
    wait_until("the request to end", || {
        approval(&env, &id)["state"] == "executed"
    });
    let a = approval(&env, &id);
    assert_eq!(a["votes"][0]["principal"], "alice");
    assert_eq!(a["votes"][0]["via"], "console");

    // The run page, as an operator, says what happened and who decided.
    b.click(&b.find("form.signout button"));
    sign_in(&b, &served, "token-ops");
    b.goto(&served.url(&format!("/console/runs/{run_id}")));
    b.wait_text("alice");
    let page = b.source();
    assert!(page.contains("approve via console"), "{page}");
    assert!(page.contains("tiers"), "each policy decision: {page}");
    b.screenshot("run");
    drop(served);
    let kinds = audit_kinds(&env, &run_id);
    assert_eq!(
        kinds.iter().filter(|k| *k == "run-resume").count(),
        1,
        "ran exactly once: {kinds:?}"
    );
}

#[test]
fn new_requests_appear_without_a_reload_and_a_rejection_needs_a_reason() {
    let env = hard_env();
    let served = env.serve();
    let b = browser();
    sign_in(&b, &served, "token-alice");
    b.wait_text("Nothing is waiting");
    b.run("window.stillHere = true; return 0;");

    // An agent's call over MCP is held while the inbox is open.
    let agent = crate::support::mcp_client_spawn(&[
        "--http",
        &served.url("/mcp"),
        "--token",
        "token-agent",
        "call",
        "notes_write",
        r#"{"name":"live","text":"held while the inbox was open"}"#,
    ]);
    b.wait_for("article.request")
        .expect("the new request appears");
    assert_eq!(
        b.run("return window.stillHere === true;"),
        Value::Bool(true),
        "the list changed without a reload"
    );
    let id = b
        .run("return document.querySelector('article.request').id.slice(4);")
        .as_str()
        .unwrap()
        .to_string();

    b.click(&b.find(&format!("#req-{id} button.reject")));
    b.wait_text("a rejection needs a reason");
    assert_eq!(approval(&env, &id)["state"], "pending");
    b.goto(&served.url("/console/approvals"));
    b.type_into(&b.find(&format!("#reason-{id}")), "not on a Friday");
    b.click(&b.find(&format!("#req-{id} button.reject")));
    b.wait_text("is rejected");
    let a = approval(&env, &id);
    assert_eq!(a["state"], "rejected");
    assert_eq!(a["votes"][0]["reason"], "not on a Friday");
    let out = agent.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("held for approval") && text.contains(&id),
        "the agent was told its call waits for this request: {text}"
    );
    assert!(!note_exists(&env, "live"));
}

#[test]
fn markup_in_tool_input_and_output_is_shown_as_text() {
    let env = hard_env();
    std::fs::write(env.path().join("notes/evil"), HOSTILE).unwrap();
    let run = env.warden(&[
        "call",
        "notes_read",
        "--input",
        r#"{"name":"evil"}"#,
        "--report",
    ]);
    assert_eq!(run.code, OK, "{run:?}");
    let run_id = serde_json::from_str::<Value>(&run.stdout).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let input = serde_json::json!({ "name": "held", "text": HOSTILE }).to_string();
    let held = env.warden(&["call", "notes_write", "--input", &input, "--as", "agent"]);
    assert_eq!(held.code, super::HELD, "{held:?}");

    let served = env.serve();
    let b = browser();
    sign_in(&b, &served, "token-ops");
    for path in [
        format!("/console/runs/{run_id}"),
        "/console/approvals".to_string(),
    ] {
        b.goto(&served.url(&path));
        b.wait_text("window.pwned");
        assert_eq!(
            b.run("return typeof window.pwned;"),
            Value::from("undefined"),
            "nothing a tool wrote ran on {path}"
        );
        assert_eq!(
            b.count("main img"),
            0,
            "no element made from tool text on {path}"
        );
        assert_eq!(b.count("main script"), 0);
    }
    b.screenshot("run-with-markup");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metric(&served, "warden_console_csp_reports_total"),
        0.0,
        "no Content-Security-Policy violation was reported"
    );
}

/// A page on another site that posts a decision to the console when opened.
fn forger(target: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let page = format!(
        "<!doctype html><form method=post action=\"{target}\">\
         <input name=decision value=approve><input name=sha value=x></form>\
         <script>document.forms[0].submit()</script>"
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    port
}

#[test]
fn a_cross_site_form_post_decides_nothing() {
    let env = hard_env();
    let (_, id) = held_write(&env, "forged", &[]);
    let served = env.serve();
    let b = browser();
    sign_in(&b, &served, "token-alice");
    b.find(&format!("#req-{id}"));
    let target = served.url(&format!("/console/approvals/{id}"));
    // `localhost` is another site than `127.0.0.1`.
    let port = forger(&target);
    b.goto(&format!("http://localhost:{port}/"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!b.source().contains("is approved"), "{}", b.source());
    assert_eq!(approval(&env, &id)["state"], "pending");

    // With the session's cookie but not its CSRF token (or another session's), a post
    // is refused by the console itself, whatever the browser does.
    let alice = session_cookie(&served, "token-alice").unwrap();
    let bob = session_cookie(&served, "token-bob").unwrap();
    let (_, _, page) = get(&served, "/console/approvals", &bob);
    let bobs_csrf = field(&page, "csrf");
    let sha = field(&page, "sha");
    for csrf in ["", bobs_csrf.as_str()] {
        let (status, _, page) = exchange(
            "POST",
            &target,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", &alice),
            ],
            Some(&format!("csrf={csrf}&sha={sha}&decision=approve")),
        );
        assert_eq!(status, 403, "{page}");
        assert!(page.contains("CSRF"), "{page}");
    }
    assert_eq!(approval(&env, &id)["state"], "pending");
    assert!(!note_exists(&env, "forged"));
}

#[test]
fn a_one_click_link_from_a_notice_decides_in_a_real_browser() {
    let hook = Listener::http();
    let port = free_port();
    let env = queue_env(
        HARD_WRITES,
        &format!(
            "{ONCALL}public_url = \"http://127.0.0.1:{port}\"\nwebhook = {{ url = \"{}\" }}\n",
            hook.url("/hook")
        ),
    );
    let (_, id) = held_write(&env, "linked", &[]);
    let received = hook.received();
    let notice: Value = serde_json::from_str(
        received
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default(),
    )
    .unwrap();
    let link = notice["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["principal"] == "bob")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let served = env.serve_at(&format!("127.0.0.1:{port}"));
    let b = browser();
    b.goto(&link);
    b.find("button.approve");
    b.screenshot("one-click-link");
    assert_eq!(
        approval(&env, &id)["state"],
        "pending",
        "opening decides nothing"
    );
    b.click(&b.find("button.approve"));
    b.wait_text("Approved by bob");
    wait_until("the approved call to run", || note_exists(&env, "linked"));
    let a = approval(&env, &id);
    assert_eq!(a["votes"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a["votes"][0]["via"], "link");
    drop(served);
}

#[test]
fn runs_are_paged_by_cursor_through_a_hundred_thousand() {
    let env = hard_env();
    // One real run makes the store; a hundred thousand more are written straight in,
    // three to a millisecond so the cursor must break ties.
    let run = env.warden(&["call", "notes_list", "--input", "{}"]);
    assert_eq!(run.code, OK, "{run:?}");
    let db = store(&env);
    db.execute_batch(
        "INSERT INTO runs (id, started_ms, principal, tool, plugin, plugin_digest, status, input,
             decisions, log, denied_requests, secret_reveals, policy_us, instantiate_us,
             execute_us, total_us, peak_memory, host_calls)
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999)
         SELECT printf('run-bulk-%06d', i), 1700000000000 + (i / 3) * 1000,
                CASE i % 2 WHEN 0 THEN 'alice' ELSE 'bob' END,
                CASE i % 5 WHEN 0 THEN 'notes_write' ELSE 'notes_read' END, 'notes', 'sha256:0',
                CASE i % 7 WHEN 0 THEN 'denied' ELSE 'ok' END, '{}', '[]', '[]', '[]', '[]',
                10, 20, 30, 60 + i % 1000, 65536, 0
         FROM n;",
    )
    .unwrap();
    drop(db);
    let served = env.serve();
    let b = browser();
    sign_in(&b, &served, "token-ops");
    b.goto(&served.url("/console/runs"));
    b.find("table.runs");
    b.screenshot("runs");
    let ids = |b: &Browser| -> Vec<String> {
        b.run("return [...document.querySelectorAll('table.runs tbody tr td:nth-child(2)')].map(td => td.textContent);")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let mut seen: Vec<String> = ids(&b);
    assert_eq!(seen.len(), 50);
    for _ in 0..3 {
        b.click(&b.find("a[rel=next]"));
        b.find("table.runs");
        let page = ids(&b);
        assert_eq!(page.len(), 50);
        seen.extend(page);
    }
    let bulk: Vec<&String> = seen
        .iter()
        .filter(|id| id.starts_with("run-bulk"))
        .collect();
    let mut sorted = bulk.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(bulk, sorted, "newest first, each once, across pages");
    assert_eq!(bulk[0], "run-bulk-099999");

    // A filter holds across pages; the deepest page answers like the first.
    b.goto(&served.url("/console/runs?tool=notes_write&principal=alice&status=denied"));
    b.find("a[rel=next]");
    b.click(&b.find("a[rel=next]"));
    // The next page is a navigation: wait for it rather than read the page mid-load.
    b.wait_text("run-bulk-");
    let (status, _, body) = get(
        &served,
        "/console/runs?before=1700000000000:run-bulk-000002",
        &session_cookie(&served, "token-ops").unwrap(),
    );
    assert_eq!(status, 200);
    assert!(
        body.contains("run-bulk-000001") && body.contains("run-bulk-000000"),
        "{body}"
    );
    assert!(!body.contains("rel=\"next\""), "the last page has no next");
}

#[test]
fn every_operator_view_renders_for_an_operator() {
    let env = hard_env();
    held_write(&env, "for-views", &[]);
    let run = env.warden(&["call", "notes_list", "--input", "{}"]);
    assert_eq!(run.code, OK, "{run:?}");
    let served = env.serve();
    let b = browser();
    sign_in(&b, &served, "token-ops");
    for (path, expect, shot) in [
        ("/console/audit", "Verify now", "audit"),
        ("/console/fleet", "notes_write", "fleet"),
        ("/console/activity", "Calls per hour", "activity"),
    ] {
        b.goto(&served.url(path));
        b.wait_text(expect);
        b.screenshot(shot);
    }
    // A phone-width screen (or a desktop at 200% zoom) reads the inbox without
    // scrolling sideways.
    b.resize(400, 800);
    b.goto(&served.url("/console/approvals"));
    b.find("article.request");
    b.screenshot("approvals-phone");
    let wide = b.run(
        "return [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
            .map(e => e.tagName + '.' + e.className).slice(0, 5).join(' ');",
    );
    assert_eq!(wide, Value::from(""), "nothing is wider than the screen");
    b.resize(1280, 1000);

    b.goto(&served.url("/console/audit"));
    b.click(&b.find("form[action='/console/audit/verify'] button"));
    b.wait_text("Intact");
    // A reload that adds a token and drops a policy shows what it changed.
    let config = std::fs::read_to_string(env.config()).unwrap();
    let without_policy = &config[..config.find("[[policy]]").unwrap()];
    let hash = crate::support::sha256_hex("token-dave");
    std::fs::write(
        env.config(),
        format!(
            "{without_policy}\n[[token]]\nname = \"dave\"\nprincipal = \"dave\"\nroles = [\"approver\"]\nsha256 = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let (status, body) = crate::support::http(
        "POST",
        &served.url("/api/reload"),
        &[("authorization", "Bearer token-ops")],
        None,
    );
    assert_eq!(status, 200, "{body}");
    b.goto(&served.url("/console/fleet"));
    b.wait_text("token dave (dave) added");
    let page = b.source();
    assert!(page.contains("policy tiers removed"), "{page}");
    assert!(page.contains("alice"), "every token's principal: {page}");
    for hash_of in ["token-alice", "token-ops"] {
        let hash = crate::support::sha256_hex(hash_of);
        assert!(!page.contains(&hash), "a token's hash is never shown");
    }
    let cookie = session_cookie(&served, "token-ops").unwrap();
    let (status, head, body) = get(&served, "/console/audit/export?kind=run-start", &cookie);
    assert_eq!(status, 200);
    assert!(head.contains("application/x-ndjson"), "{head}");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty() && lines.iter().all(|r| r["kind"] == "run-start"));
}
