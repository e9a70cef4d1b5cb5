//! The approval queue, the one-click links and the policy test runner (part of the
//! one `warden` test binary).

use std::fs::File;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{DENIED, HELD, OK, USAGE};
use crate::support::{Env, Listener, Run, wasm};

pub(crate) const ONCALL: &str =
    "approvers = [\"group:oncall\"]\ngroups = { oncall = [\"alice\", \"bob\"] }\n";

/// `[[token]]` entries for the test's principals: `token-NAME` speaks for NAME as an
/// approver; `token-ops` is an operator's.
pub fn test_tokens() -> String {
    use sha2::Digest;
    let mut out = String::new();
    for (name, roles) in [
        ("alice", r#""approver""#),
        ("bob", r#""approver""#),
        ("carol", r#""approver""#),
        // The requester may hold the approver role too: it still never decides its own.
        ("agent", r#""agent", "approver""#),
        ("ops", r#""operator""#),
    ] {
        let hash = hex::encode(sha2::Sha256::digest(format!("token-{name}").as_bytes()));
        out += &format!(
            "[[token]]\nname = \"{name}\"\nprincipal = \"{name}\"\nroles = [{roles}]\nsha256 = \"{hash}\"\n"
        );
    }
    out
}

/// The notes plugin behind the tiered policy with `policy` as its config, and
/// `[approvals]` set to `approvals`.
pub(crate) fn queue_env(policy: &str, approvals: &str) -> Env {
    let env = Env::new("");
    std::fs::create_dir_all(env.path().join("notes")).unwrap();
    env.write_config(&format!(
        r#"
{tokens}
[approvals]
{approvals}

[[plugin]]
id = "notes"
component = "{{notes}}"
[plugin.grants]
files = [{{ host = "notes", guest = "/notes", mode = "rw" }}]

[[policy]]
id = "tiers"
component = "{{tiered-approval}}"
[policy.config]
{policy}
"#,
        tokens = test_tokens(),
    ));
    env
}

/// A `notes_write` of note `name` made by `agent` that must be held; returns the
/// (run id, approval id).
pub(crate) fn held_write(env: &Env, name: &str, extra: &[&str]) -> (String, String) {
    let input = format!(r#"{{"name":"{name}","text":"written by an approved call"}}"#);
    let mut args = vec!["call", "notes_write", "--input", &input, "--as", "agent"];
    args.extend_from_slice(extra);
    let run = env.warden(&args);
    assert_eq!(run.code, HELD, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["status"], "held", "{run:?}");
    (
        v["run_id"].as_str().unwrap().to_string(),
        v["approval_id"].as_str().unwrap().to_string(),
    )
}

pub(crate) fn approval(env: &Env, id: &str) -> Value {
    let run = env.warden(&["approvals", "show", id, "--json"]);
    assert_eq!(run.code, OK, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

fn run_row(env: &Env, run_id: &str) -> Value {
    let run = env.warden(&["runs", "show", run_id, "--json"]);
    assert_eq!(run.code, OK, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

pub(crate) fn note_exists(env: &Env, name: &str) -> bool {
    env.path().join("notes").join(name).exists()
}

/// The kinds of the audit records of `run`, in order.
pub(crate) fn audit_kinds(env: &Env, run_id: &str) -> Vec<String> {
    warden_core::store::audit::read_all(&env.path().join("data/audit"))
        .unwrap()
        .into_iter()
        .filter(|r| r["run"] == run_id)
        .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// Hold the audit log as another warden process would (a server, a waiting caller).
fn hold_audit_log(env: &Env) -> File {
    let lock = File::create(env.path().join("data/audit/LOCK")).unwrap();
    lock.lock().unwrap();
    lock
}

pub(crate) fn store(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.path().join("data/runs.db")).unwrap()
}

fn hard_env() -> Env {
    queue_env("tools = { notes_write = \"hard\" }", ONCALL)
}

#[test]
fn held_call_runs_once_when_approved_and_never_by_its_requester_or_a_stranger() {
    let env = hard_env();
    let (run_id, id) = held_write(&env, "a", &[]);
    assert!(!note_exists(&env, "a"), "a held call must not run");
    assert_eq!(run_row(&env, &run_id)["status"], "held");

    let own = env.warden(&["approvals", "approve", &id, "--token", "token-agent"]);
    assert_eq!(own.code, USAGE, "{own:?}");
    assert!(own.stderr.contains("their own request"), "{own:?}");
    let stranger = env.warden(&["approvals", "approve", &id, "--token", "token-carol"]);
    assert_eq!(stranger.code, USAGE, "{stranger:?}");
    assert!(
        stranger.stderr.contains("not among the approvers"),
        "{stranger:?}"
    );
    assert!(!note_exists(&env, "a"));

    let yes = env.warden(&[
        "approvals",
        "approve",
        &id,
        "--token",
        "token-alice",
        "--reason",
        "looks fine",
    ]);
    assert_eq!(yes.code, OK, "{yes:?}");
    assert!(
        yes.stdout.contains("\"bytes\""),
        "the tool's output is printed: {yes:?}"
    );
    assert!(note_exists(&env, "a"));

    let again = env.warden(&["approvals", "approve", &id, "--token", "token-bob"]);
    assert_eq!(again.code, USAGE, "{again:?}");
    assert!(
        again.stderr.contains("already decided: executed"),
        "{again:?}"
    );

    let a = approval(&env, &id);
    assert_eq!(a["state"], "executed");
    assert_eq!(a["votes"][0]["principal"], "alice");
    assert_eq!(a["votes"][0]["reason"], "looks fine");
    let row = run_row(&env, &run_id);
    assert_eq!(
        (row["status"].as_str(), row["approval"].as_str()),
        (Some("ok"), Some(id.as_str()))
    );
    assert_eq!(
        row["decisions"][0]["policy"], "tiers",
        "the run keeps the decisions that held it"
    );

    let kinds = audit_kinds(&env, &run_id);
    for kind in [
        "run-start",
        "policy-decision",
        "approval-requested",
        "approval-vote",
        "run-resume",
    ] {
        assert_eq!(count(&kinds, kind), 1, "{kind} in {kinds:?}");
    }
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("run-end"),
        "{kinds:?}"
    );
    let verify = env.warden(&["audit", "verify"]);
    assert_eq!(verify.code, OK, "{verify:?}");
}

#[test]
fn soft_window_passes_with_no_rejection_and_the_call_runs_once() {
    let env = queue_env(
        "tools = { notes_write = \"soft\" }\ntimeout_secs = 1",
        ONCALL,
    );
    let input = r#"{"name":"soft","text":"x"}"#;
    let run = env.warden(&[
        "call",
        "notes_write",
        "--input",
        input,
        "--as",
        "agent",
        "--wait",
        "10",
    ]);
    assert_eq!(
        run.code, OK,
        "the caller waits, the window passes, the call runs: {run:?}"
    );
    assert!(note_exists(&env, "soft"));
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["name"], "soft");

    let id = env.warden(&["approvals", "list", "--json"]);
    let a: Value = serde_json::from_str(id.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(a["state"], "executed");
    assert_eq!(
        (
            a["votes"][0]["principal"].as_str(),
            a["votes"][0]["vote"].as_str()
        ),
        (Some("warden"), Some("window"))
    );

    let again = env.warden(&["approvals", "process"]);
    assert!(again.stderr.contains("ran 0"), "{again:?}");
    let run_id = a["run_id"].as_str().unwrap();
    assert_eq!(count(&audit_kinds(&env, run_id), "run-resume"), 1);
}

#[test]
fn hard_timeout_denies_and_the_call_never_runs() {
    let env = queue_env(
        "tools = { notes_write = \"hard\" }\ntimeout_secs = 1",
        ONCALL,
    );
    let input = r#"{"name":"late","text":"x"}"#;
    let run = env.warden(&[
        "call",
        "notes_write",
        "--input",
        input,
        "--as",
        "agent",
        "--wait",
        "10",
    ]);
    assert_eq!(run.code, DENIED, "{run:?}");
    assert!(run.stderr.contains("timed out"), "{run:?}");
    assert!(!note_exists(&env, "late"));
    let list = env.warden(&["approvals", "list", "--state", "expired", "--json"]);
    let a: Value = serde_json::from_str(list.stdout.lines().next().unwrap()).unwrap();
    let id = a["id"].as_str().unwrap();
    let late = env.warden(&["approvals", "approve", id, "--token", "token-alice"]);
    assert_eq!(late.code, USAGE, "{late:?}");
    assert!(late.stderr.contains("already decided: expired"), "{late:?}");
    assert!(!note_exists(&env, "late"));
    let row = run_row(&env, a["run_id"].as_str().unwrap());
    assert_eq!(row["status"], "denied");
}

#[test]
fn an_idle_server_settles_a_request_when_its_time_runs_out_not_on_a_poll() {
    // The server sleeps until the earliest expiry (its idle look is every 30 s): the
    // request ends at its time with nothing else happening.
    let env = queue_env(
        "tools = { notes_write = \"hard\" }\ntimeout_secs = 3",
        ONCALL,
    );
    let (_, id) = held_write(&env, "timed", &[]);
    let served = env.serve();
    let started = Instant::now();
    wait_until("the request to expire", || {
        approval(&env, &id)["state"] == "expired"
    });
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "expired at its time, not at the next look"
    );
    drop(served);
    assert!(!note_exists(&env, "timed"));
}

#[test]
fn rejected_call_never_runs_and_its_run_says_who_rejected_it() {
    let env = hard_env();
    let (run_id, id) = held_write(&env, "no", &[]);
    let no_reason = env.warden(&["approvals", "reject", &id, "--token", "token-bob"]);
    assert_eq!(
        no_reason.code, USAGE,
        "a rejection needs a reason: {no_reason:?}"
    );
    let run = env.warden(&[
        "approvals",
        "reject",
        &id,
        "--token",
        "token-bob",
        "--reason",
        "not today",
    ]);
    assert_eq!(run.code, DENIED, "{run:?}");
    let after = env.warden(&["approvals", "approve", &id, "--token", "token-alice"]);
    assert!(
        after.stderr.contains("already decided: rejected"),
        "{after:?}"
    );
    assert!(!note_exists(&env, "no"));
    let row = run_row(&env, &run_id);
    assert_eq!(row["status"], "denied");
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("rejected by bob: not today"),
        "{row}"
    );
    let kinds = audit_kinds(&env, &run_id);
    assert_eq!(count(&kinds, "approval-vote"), 1, "{kinds:?}");
    assert_eq!(count(&kinds, "run-resume"), 0, "{kinds:?}");
}

#[test]
fn hard_request_needs_its_quorum_of_distinct_approvers() {
    let env = queue_env(
        "tools = { notes_write = \"hard\" }\nhard_approvals = 2",
        ONCALL,
    );
    let (_, id) = held_write(&env, "two", &[]);
    let first = env.warden(&["approvals", "approve", &id, "--token", "token-alice"]);
    assert_eq!(
        first.code, HELD,
        "1 of 2 approvals: still pending: {first:?}"
    );
    let twice = env.warden(&["approvals", "approve", &id, "--token", "token-alice"]);
    assert_eq!(twice.code, USAGE, "{twice:?}");
    assert!(
        twice.stderr.contains("alice has already approved"),
        "{twice:?}"
    );
    assert!(!note_exists(&env, "two"));
    let second = env.warden(&["approvals", "approve", &id, "--token", "token-bob"]);
    assert_eq!(second.code, OK, "{second:?}");
    assert!(note_exists(&env, "two"));
    assert_eq!(approval(&env, &id)["votes"].as_array().unwrap().len(), 2);
}

#[test]
fn concurrent_approvals_execute_exactly_once() {
    let env = hard_env();
    let (run_id, id) = held_write(&env, "race", &[]);
    // Two approvers and a queue pass, all at once, each in its own process.
    let spawn = |args: &[&str]| -> Child {
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("-c")
            .arg(env.config())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [
        spawn(&["approvals", "approve", &id, "--token", "token-alice"]),
        spawn(&["approvals", "approve", &id, "--token", "token-bob"]),
        spawn(&["approvals", "process"]),
    ];
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| Run::from(c.wait_with_output().unwrap()))
        .collect();
    let decided = runs[..2].iter().filter(|r| r.code == OK).count();
    assert_eq!(
        decided, 1,
        "one approval wins, the other is told it is decided: {runs:?}"
    );
    assert!(
        runs[..2]
            .iter()
            .any(|r| r.stderr.contains("already decided")),
        "{runs:?}"
    );
    assert!(note_exists(&env, "race"));
    let kinds = audit_kinds(&env, &run_id);
    assert_eq!(count(&kinds, "run-resume"), 1, "{kinds:?}");
    assert_eq!(approval(&env, &id)["state"], "executed");
}

/// Eight processes claim one approved request at the same instant, each through its
/// own connection to the store: exactly one wins.
#[test]
fn claims_race_across_processes_and_exactly_one_wins() {
    let env = hard_env();
    let (_, id) = held_write(&env, "claim", &[]);
    let sha = approval(&env, &id)["input_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let config = warden_core::config::Config::load(&env.config()).unwrap();
    {
        let queue =
            warden_core::governance::approvals::ApprovalQueue::open(&config.runs_db, None).unwrap();
        let ballot = warden_core::governance::approvals::Ballot {
            principal: "alice",
            choice: warden_core::governance::approvals::Choice::Approve,
            reason: None,
            via: "api",
            input_sha256: &sha,
            on_behalf_of: None,
            now_ms: warden_core::now_ms() as i64,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(queue.decide(&config.approvals, &id, &ballot))
            .unwrap();
    }
    let at = warden_core::now_ms() + 1500;
    let racers: Vec<Child> = (0..8)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "approvals::claim_racer",
                    "--ignored",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("WARDEN_RACE_DB", &config.runs_db)
                .env("WARDEN_RACE_ID", &id)
                .env("WARDEN_RACE_AT", at.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = racers
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned())
        .collect();
    let won = outputs.iter().filter(|o| o.contains("racer: won")).count();
    let lost = outputs.iter().filter(|o| o.contains("racer: lost")).count();
    assert_eq!((won, lost), (1, 7), "{outputs:?}");
    assert_eq!(approval(&env, &id)["state"], "executing");
}

/// One racer of the test above (run only as its child process).
#[test]
#[ignore = "a child process of claims_race_across_processes_and_exactly_one_wins"]
fn claim_racer() {
    let (Ok(db), Ok(id), Ok(at)) = (
        std::env::var("WARDEN_RACE_DB"),
        std::env::var("WARDEN_RACE_ID"),
        std::env::var("WARDEN_RACE_AT"),
    ) else {
        return;
    };
    let queue =
        warden_core::governance::approvals::ApprovalQueue::open(std::path::Path::new(&db), None)
            .unwrap();
    let at: u64 = at.parse().unwrap();
    std::thread::sleep(Duration::from_millis(
        at.saturating_sub(warden_core::now_ms()),
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let won = rt.block_on(queue.claim(&id, vec![], 0)).unwrap().is_some();
    println!("racer: {}", if won { "won" } else { "lost" });
}

#[test]
fn restart_keeps_pending_and_approved_requests_and_each_ends_once() {
    let env = hard_env();
    let (run_a, a) = held_write(&env, "approved-offline", &[]);
    let (run_b, b) = held_write(&env, "interrupted", &[]);
    let (_, c) = held_write(&env, "still-pending", &[]);

    // Approved while another process holds the log: recorded, left for that process.
    let lock = hold_audit_log(&env);
    let run = env.warden(&["approvals", "approve", &a, "--token", "token-alice"]);
    assert_eq!(run.code, OK, "{run:?}");
    assert!(
        run.stderr
            .contains("another warden process holds the audit log"),
        "{run:?}"
    );
    drop(lock);
    assert!(!note_exists(&env, "approved-offline"));
    assert_eq!(approval(&env, &a)["state"], "approved");

    // A process that died while running B.
    store(&env)
        .execute(
            "UPDATE approvals SET state = 'executing', claimed_by = 2147483000 WHERE id = ?1",
            [&b],
        )
        .unwrap();

    let pass = env.warden(&["approvals", "process"]);
    assert_eq!(pass.code, OK, "{pass:?}");
    assert!(
        pass.stderr.contains("ran 1") && pass.stderr.contains("ended 1 interrupted"),
        "{pass:?}"
    );
    assert!(note_exists(&env, "approved-offline"));
    assert!(
        !note_exists(&env, "interrupted"),
        "an interrupted call is never run again"
    );
    let b_now = approval(&env, &b);
    assert_eq!(b_now["state"], "failed");
    assert!(
        b_now["result"].as_str().unwrap().contains("interrupted"),
        "{b_now}"
    );
    assert_eq!(
        run_row(&env, &run_b)["status"],
        "interrupted",
        "an approved call cut off while it ran says so"
    );
    assert_eq!(approval(&env, &c)["state"], "pending");

    let again = env.warden(&["approvals", "process"]);
    assert!(
        again.stderr.contains("ran 0") && again.stderr.contains("ended 0"),
        "{again:?}"
    );
    assert_eq!(count(&audit_kinds(&env, &run_a), "run-resume"), 1);
    // The vote cast while the log was held reached the audit log later.
    assert_eq!(count(&audit_kinds(&env, &run_a), "approval-vote"), 1);
}

#[test]
fn a_call_whose_input_or_plugin_changed_after_approval_is_refused() {
    let env = hard_env();
    let (run_a, a) = held_write(&env, "original", &[]);
    let (_, b) = held_write(&env, "other", &[]);
    let lock = hold_audit_log(&env);
    for id in [&a, &b] {
        let run = env.warden(&["approvals", "approve", id, "--token", "token-alice"]);
        assert_eq!(run.code, OK, "{run:?}");
    }
    drop(lock);
    let db = store(&env);
    db.execute(
        "UPDATE approvals SET input = '{\"name\":\"tampered\",\"text\":\"x\"}' WHERE id = ?1",
        [&a],
    )
    .unwrap();
    db.execute(
        "UPDATE approvals SET plugin_digest = 'sha256:0000' WHERE id = ?1",
        [&b],
    )
    .unwrap();
    let pass = env.warden(&["approvals", "process"]);
    assert_eq!(pass.code, OK, "{pass:?}");
    for name in ["original", "tampered", "other"] {
        assert!(
            !note_exists(&env, name),
            "{name} must not have been written"
        );
    }
    let a_now = approval(&env, &a);
    assert_eq!(a_now["state"], "failed");
    assert!(
        a_now["result"]
            .as_str()
            .unwrap()
            .contains("no longer matches"),
        "{a_now}"
    );
    let b_now = approval(&env, &b);
    assert!(
        b_now["result"].as_str().unwrap().contains("was replaced"),
        "{b_now}"
    );
    let row = run_row(&env, &run_a);
    assert_eq!(row["status"], "denied");
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("refused after approval"),
        "{row}"
    );
    assert_eq!(count(&audit_kinds(&env, &run_a), "approval-ended"), 1);
}

/// A free loopback port (bound, then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http(method: &str, url: &str, form: Option<&str>) -> (u16, String) {
    let form_type = [("content-type", "application/x-www-form-urlencoded")];
    crate::support::http(method, url, &form_type, form)
}

pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_click_link_page_never_decides_and_its_signed_form_does() {
    let hook = Listener::http();
    let port = free_port();
    let env = queue_env(
        "tools = { notes_write = \"hard\" }",
        &format!(
            "{ONCALL}public_url = \"http://127.0.0.1:{port}\"\nwebhook = {{ url = \"{}\" }}\n",
            hook.url("/hook")
        ),
    );
    let (_, id) = held_write(&env, "linked", &[]);
    let received = hook.received();
    let body = received
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let notice: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {received}"));
    assert_eq!(notice["event"], "approval.requested");
    assert_eq!(notice["approval"]["id"], id.as_str());
    let links = notice["links"].as_array().unwrap();
    assert_eq!(
        links.len(),
        2,
        "one link per approver, never the requester: {notice}"
    );
    let link = links.iter().find(|l| l["principal"] == "alice").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();

    let mut server = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "-c",
            env.config().to_str().unwrap(),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the server", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    // A scanner (or a human) opening the link changes nothing.
    for _ in 0..3 {
        let (status, page) = http("GET", &link, None);
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains("Approve") && page.contains("notes_write"),
            "{page}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(approval(&env, &id)["state"], "pending");
    assert!(!note_exists(&env, "linked"));

    let token = link.split_once("?t=").unwrap().1.to_string();
    let forged = format!("{}x", &token[..token.len() - 1]);
    let (status, _) = http("POST", &link, Some(&format!("t={forged}&decision=approve")));
    assert_eq!(status, 403, "a token that does not verify decides nothing");
    // Submitted as a browser submits the page's form: the page's referrer policy lets it
    // send its real origin (with `no-referrer` it sent `Origin: null`), and the form
    // carries the input hash the page showed.
    let (_, page) = http("GET", &link, None);
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = page.find(&marker).unwrap() + marker.len();
        page[start..start + page[start..].find('"').unwrap()].to_string()
    };
    let sha = field("sha");
    assert!(sha.starts_with("sha256:"), "{page}");
    let origin = format!("http://127.0.0.1:{port}");
    let browser = |form: &str| {
        crate::support::http(
            "POST",
            &link,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &origin),
                ("referer", &link),
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "navigate"),
            ],
            Some(form),
        )
    };
    let (status, _) = crate::support::http(
        "POST",
        &link,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "null"),
        ],
        Some(&format!("t={token}&sha={sha}&decision=approve")),
    );
    assert_eq!(status, 403, "an opaque origin is still refused");
    let (status, page) = browser(&format!(
        "t={token}&sha=sha256:{}&decision=approve",
        "0".repeat(64)
    ));
    assert_eq!(status, 409, "a vote on another input is refused: {page}");
    let (status, page) = browser(&format!("t={token}&sha={sha}&decision=approve&reason=ok"));
    assert_eq!(status, 200, "{page}");
    wait_until("the server to run the approved call", || {
        note_exists(&env, "linked")
    });
    let (status, _) = browser(&format!("t={token}&sha={sha}&decision=approve"));
    assert_eq!(status, 409, "already decided");

    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let stopped = server.wait().unwrap();
    assert!(
        stopped.success(),
        "SIGTERM is a clean shutdown: {stopped:?}"
    );
    let a = approval(&env, &id);
    assert_eq!(
        (a["state"].as_str(), a["votes"][0]["via"].as_str()),
        (Some("executed"), Some("link"))
    );
}

#[test]
fn webhook_down_leaves_the_queue_unaffected_and_retries_are_logged() {
    let down = free_port();
    let env = queue_env(
        "tools = { notes_write = \"hard\" }",
        &format!("{ONCALL}webhook = {{ url = \"http://127.0.0.1:{down}/hook\", attempts = 3 }}\n"),
    );
    let (_, id) = held_write(&env, "quiet", &[]);
    let notice = &approval(&env, &id)["notice"];
    assert_eq!(
        (notice["attempts"].as_u64(), notice["delivered"].as_bool()),
        (Some(1), Some(false)),
        "{notice}"
    );
    assert!(
        notice["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{notice}"
    );

    std::thread::sleep(Duration::from_millis(1100));
    let pass = env.warden(&["approvals", "process"]);
    assert_eq!(pass.code, OK, "{pass:?}");
    assert_eq!(
        approval(&env, &id)["notice"]["attempts"],
        2,
        "retried after its backoff"
    );

    let records = warden_core::store::audit::read_all(&env.path().join("data/audit")).unwrap();
    let attempts: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "approval-notice")
        .collect();
    assert_eq!(attempts.len(), 2, "every attempt is in the audit log");
    assert_eq!(attempts[0]["outcome"], "retrying");

    let run = env.warden(&["approvals", "approve", &id, "--token", "token-bob"]);
    assert_eq!(run.code, OK, "the queue works without its webhook: {run:?}");
    assert!(note_exists(&env, "quiet"));
}

#[test]
fn a_disabled_queue_denies_held_calls() {
    let env = queue_env("tools = { notes_write = \"soft\" }", "enabled = false");
    let run = env.warden(&[
        "call",
        "notes_write",
        "--input",
        r#"{"name":"x","text":"y"}"#,
    ]);
    assert_eq!(run.code, DENIED, "{run:?}");
    assert!(run.stderr.contains("approval queue is disabled"), "{run:?}");
    assert!(!note_exists(&env, "x"));
}

#[test]
fn approvals_config_errors_name_the_key() {
    let env = queue_env("", "approvers = [\"group:nobody\"]");
    let run = env.warden(&["check"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(
        run.stderr.contains("approvals.approvers[0]") && run.stderr.contains("not defined"),
        "{run:?}"
    );
    let env = queue_env("", "webhook = { url = \"ftp://x\" }");
    let run = env.warden(&["check"]);
    assert!(run.stderr.contains("approvals.webhook.url"), "{run:?}");
}

#[test]
fn policy_test_runner_passes_the_shipped_cases_and_explains_a_failure() {
    let env = Env::new("");
    for (policy, cases) in [
        ("tiered-approval", "policies/tiered-approval/cases.toml"),
        ("business-hours", "policies/business-hours/cases.toml"),
    ] {
        let cases = crate::support::repo_root().join(cases);
        let wasm = wasm(policy);
        let run = env.warden(&[
            "policy",
            "test",
            wasm.to_str().unwrap(),
            cases.to_str().unwrap(),
        ]);
        assert_eq!(run.code, OK, "{run:?}");
        assert!(run.stdout.contains(" 0 failed"), "{run:?}");
    }

    let cases = env.path().join("cases.toml");
    std::fs::write(
        &cases,
        "[config]\ndefault = \"auto\"\n\n[[case]]\nname = \"wrongly expects a deny\"\ntool = \"t\"\nexpect = \"deny\"\n\n[[case]]\ntool = \"t\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let wasm = wasm("tiered-approval");
    let run = env.warden(&[
        "policy",
        "test",
        wasm.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("FAIL wrongly expects a deny"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("expected: deny") && run.stdout.contains("actual:   allow"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("tool=t"),
        "the action is shown: {run:?}"
    );
    assert!(run.stdout.contains("1 passed, 1 failed"), "{run:?}");

    std::fs::write(
        &cases,
        "[[case]]\ntool = \"t\"\nexpect = \"allow\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let run = env.warden(&[
        "policy",
        "test",
        wasm.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(
        run.stderr.contains("cases.toml:4") && run.stderr.contains("colour"),
        "{run:?}"
    );
}

#[test]
fn a_second_process_gives_up_on_a_held_audit_log_and_names_the_holder() {
    let env = hard_env();
    let (_, _) = held_write(&env, "first", &[]);
    std::fs::write(env.path().join("data/serve.pid"), "4242\n").unwrap();
    let lock = hold_audit_log(&env);
    let run = env.warden(&["call", "notes_list"]);
    drop(lock);
    assert_eq!(run.code, 5, "nothing can be recorded: {run:?}");
    assert!(
        run.stderr
            .contains("held by another warden process (`warden serve`, pid 4242)"),
        "{run:?}"
    );
}

#[test]
fn a_secret_in_a_held_input_never_reaches_approvals_output() {
    let (a, b) = (Listener::http(), Listener::http());
    let env = super::secret_env(&a, &b, super::HEADER_GRANT);
    env.append_config(
        "[approvals]\napprovers = [\"alice\"]\n\n[[policy]]\nid = \"tiers\"\ncomponent = \"{tiered-approval}\"\n[policy.config]\ndefault = \"soft\"\n",
    );
    let input = format!(r#"{{"note":"{}"}}"#, super::SECRET);
    let call = env.warden(&["call", "env", "--input", &input, "--as", "agent"]);
    assert_eq!(call.code, HELD, "{call:?}");
    let id = serde_json::from_str::<Value>(&call.stdout).unwrap()["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    let outputs = [
        env.warden(&["approvals", "show", &id]),
        env.warden(&["approvals", "show", &id, "--json"]),
        env.warden(&["approvals", "list", "--json"]),
    ];
    for run in &outputs {
        assert_eq!(run.code, OK, "{run:?}");
    }
    for run in outputs.iter().chain([&call]) {
        assert!(
            !run.stdout.contains(super::SECRET) && !run.stderr.contains(super::SECRET),
            "{run:?}"
        );
    }
    assert!(outputs[1].stdout.contains("[REDACTED"), "{:?}", outputs[1]);
}

#[test]
fn deciding_proves_who_decides_and_a_break_glass_vote_says_who_cast_it() {
    let env = hard_env();
    let (_, id) = held_write(&env, "proved", &[]);
    let decide = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec!["approvals", "approve", id.as_str()];
        args.extend_from_slice(extra);
        env.warden_with_env(&args, envs)
    };
    let none = decide(&[], &[]);
    assert_eq!(none.code, USAGE, "{none:?}");
    assert!(none.stderr.contains("--token"), "{none:?}");
    let wrong = decide(&["--token", "token-mallory"], &[]);
    assert_eq!(wrong.code, USAGE, "{wrong:?}");
    assert!(wrong.stderr.contains("matches no [[token]]"), "{wrong:?}");
    // Naming someone else is not possible: the principal is the token's.
    let not_for = decide(
        &["--token", "token-alice", "--for", "bob", "--reason", "x"],
        &[],
    );
    assert_eq!(not_for.code, USAGE, "{not_for:?}");
    assert!(not_for.stderr.contains("operator role"), "{not_for:?}");
    assert_eq!(approval(&env, &id)["votes"], serde_json::json!([]));

    // An operator may break glass for an approver; the vote says so.
    let glass = decide(
        &["--for", "bob", "--reason", "bob is on a plane"],
        &[("WARDEN_TOKEN", "token-ops")],
    );
    assert_eq!(glass.code, OK, "{glass:?}");
    let vote = &approval(&env, &id)["votes"][0];
    assert_eq!(vote["principal"], "bob", "{vote}");
    assert!(
        vote["via"].as_str().unwrap().contains("break-glass by ops"),
        "{vote}"
    );
    assert!(note_exists(&env, "proved"));
}

#[test]
fn a_decision_goes_through_a_running_server_with_the_token() {
    let env = hard_env();
    let (_, id) = held_write(&env, "served", &[]);
    let mut server = env.serve();
    let run = env.warden(&["approvals", "approve", &id, "--token", "token-alice"]);
    assert_eq!(run.code, OK, "{run:?}");
    assert!(run.stderr.contains("through the server"), "{run:?}");
    wait_until("the server to run it", || note_exists(&env, "served"));
    assert!(server.stop().success());
    let vote = &approval(&env, &id)["votes"][0];
    assert_eq!(
        (vote["principal"].as_str(), vote["via"].as_str()),
        (Some("alice"), Some("api"))
    );
}

#[test]
fn approvers_named_by_one_policy_never_satisfy_another_policys_hold() {
    let env = Env::new("");
    std::fs::create_dir_all(env.path().join("notes")).unwrap();
    env.write_config(&format!(
        r#"
{tokens}
[[plugin]]
id = "notes"
component = "{{notes}}"
[plugin.grants]
files = [{{ host = "notes", guest = "/notes", mode = "rw" }}]

[[policy]]
id = "finance"
component = "{{tiered-approval}}"
[policy.config]
approvers = ["alice"]
tools = {{ notes_write = "hard" }}

[[policy]]
id = "security"
component = "{{tiered-approval}}"
[policy.config]
approvers = ["bob"]
tools = {{ notes_write = "hard" }}
"#,
        tokens = test_tokens(),
    ));
    let (_, id) = held_write(&env, "both", &[]);
    let a = approval(&env, &id);
    assert_eq!(a["holds"].as_array().unwrap().len(), 2, "{a}");
    let alice = env.warden(&["approvals", "approve", &id, "--token", "token-alice"]);
    assert_eq!(
        alice.code, HELD,
        "finance has its approval, security not yet: {alice:?}"
    );
    assert!(!note_exists(&env, "both"));
    let carol = env.warden(&["approvals", "approve", &id, "--token", "token-carol"]);
    assert_eq!(carol.code, USAGE, "carol is named by neither: {carol:?}");
    let bob = env.warden(&["approvals", "approve", &id, "--token", "token-bob"]);
    assert_eq!(bob.code, OK, "{bob:?}");
    assert!(note_exists(&env, "both"));
}

#[test]
fn an_unknown_tier_or_a_changed_input_fails_closed() {
    let env = hard_env();
    let (_, weird) = held_write(&env, "weird", &[]);
    store(&env)
        .execute(
            "UPDATE approvals SET tier = 'gentle' WHERE id = ?1",
            [&weird],
        )
        .unwrap();
    let a = approval(&env, &weird);
    assert_eq!(a["state"], "failed", "{a}");
    assert!(a["result"].as_str().unwrap().contains("gentle"), "{a}");
    let run = env.warden(&["approvals", "approve", &weird, "--token", "token-alice"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(!note_exists(&env, "weird"));

    // An input changed in the store after the request: the approver is shown the new
    // one, and a vote on it is refused (the request is bound to the old one).
    let (_, changed) = held_write(&env, "changed", &[]);
    store(&env)
        .execute(
            "UPDATE approvals SET input = '{\"name\":\"evil\",\"text\":\"x\"}' WHERE id = ?1",
            [&changed],
        )
        .unwrap();
    let run = env.warden(&["approvals", "approve", &changed, "--token", "token-alice"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(run.stderr.contains("is not the request's"), "{run:?}");
    assert!(!note_exists(&env, "evil") && !note_exists(&env, "changed"));
}

#[test]
fn a_claim_is_ended_by_its_owners_lock_not_by_a_pid() {
    let env = hard_env();
    let (run_live, live) = held_write(&env, "live", &[]);
    let (run_gone, gone) = held_write(&env, "gone", &[]);
    // A live owner: a process (this test) holding its lock file.
    let owners = env.path().join("data/owners");
    std::fs::create_dir_all(&owners).unwrap();
    let lock = File::create(owners.join("00112233445566778899aabbccddeeff.lock")).unwrap();
    lock.lock().unwrap();
    let db = store(&env);
    db.execute(
        "UPDATE approvals SET state = 'executing', owner = '00112233445566778899aabbccddeeff' WHERE id = ?1",
        [&live],
    )
    .unwrap();
    // A pid that is always alive (init), as a restarted container's own pid 1 would be.
    db.execute(
        "UPDATE approvals SET state = 'executing', owner = '1', claimed_by = 1 WHERE id = ?1",
        [&gone],
    )
    .unwrap();
    let pass = env.warden(&["approvals", "process"]);
    assert!(pass.stderr.contains("ended 1 interrupted"), "{pass:?}");
    assert_eq!(approval(&env, &live)["state"], "executing");
    assert_eq!(approval(&env, &gone)["state"], "failed");
    assert_eq!(run_row(&env, &run_gone)["status"], "interrupted");
    drop(lock);
    let pass = env.warden(&["approvals", "process"]);
    assert!(pass.stderr.contains("ended 1 interrupted"), "{pass:?}");
    assert_eq!(approval(&env, &live)["state"], "failed");
    assert_eq!(run_row(&env, &run_live)["status"], "interrupted");
    assert!(!note_exists(&env, "live") && !note_exists(&env, "gone"));
}

#[test]
fn an_approval_while_another_process_holds_the_log_says_when_it_runs_and_it_does() {
    let env = hard_env();
    let (_, id) = held_write(&env, "later", &[]);
    let lock = hold_audit_log(&env);
    let run = env.warden(&["approvals", "approve", &id, "--token", "token-alice"]);
    drop(lock);
    assert_eq!(run.code, OK, "{run:?}");
    assert!(
        run.stderr
            .contains("the call runs when it next drives the queue"),
        "{run:?}"
    );
    assert!(!note_exists(&env, "later"));
    // The next process to hold the log runs it: here, an unrelated call.
    let other = env.warden(&["call", "notes_list"]);
    assert_eq!(other.code, OK, "{other:?}");
    assert!(note_exists(&env, "later"));
}

#[test]
fn held_inputs_are_sealed_at_rest_and_removed_when_the_request_ends() {
    let env = hard_env();
    let init = env.warden(&["secrets", "init"]);
    assert_eq!(init.code, OK, "{init:?}");
    let (_, id) = held_write(&env, "sealed", &[]);
    let (_, rejected) = held_write(&env, "rejected", &[]);
    let stored: (String, bool) = store(&env)
        .query_row(
            "SELECT input, sealed FROM approvals WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(stored.1, "sealed");
    assert!(
        !stored.0.contains("written by an approved call"),
        "{}",
        stored.0
    );
    // Those with the key see it.
    let a = approval(&env, &id);
    assert!(
        a["input"]
            .as_str()
            .unwrap()
            .contains("written by an approved call"),
        "{a}"
    );

    let run = env.warden(&["approvals", "approve", &id, "--token", "token-alice"]);
    assert_eq!(run.code, OK, "{run:?}");
    let run = env.warden(&[
        "approvals",
        "reject",
        &rejected,
        "--token",
        "token-bob",
        "--reason",
        "no",
    ]);
    assert_eq!(run.code, DENIED, "{run:?}");
    for done in [&id, &rejected] {
        let input: String = store(&env)
            .query_row("SELECT input FROM approvals WHERE id = ?1", [done], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(input.starts_with("[removed"), "{input}");
    }
}

#[test]
fn reload_never_signals_a_process_named_by_a_stale_pid_file() {
    let env = hard_env();
    let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::create_dir_all(env.path().join("data")).unwrap();
    std::fs::write(
        env.path().join("data/serve.pid"),
        format!("{}\nhttp://127.0.0.1:1\n", bystander.id()),
    )
    .unwrap();
    let run = env.warden(&["reload"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(run.stderr.contains("no running server"), "{run:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}
