//! Recording: every host call of a run is audited and in history; a log that cannot be written stops calls.

use super::*;

pub(crate) fn audit_env() -> Env {
    let env = Env::new(
        "[[plugin]]\nid = \"t\"\ncomponent = \"{text-stats}\"\n[[plugin]]\nid = \"hostile\"\ncomponent = \"{hostile}\"\n[plugin.grants]\nfiles = [{ host = \"granted\", guest = \"/data\", mode = \"rw\" }]\n[[policy]]\nid = \"tiers\"\ncomponent = \"{tiered-approval}\"\ntools = [\"text_stats\"]\n",
    );
    std::fs::create_dir_all(env.path().join("granted")).unwrap();
    env
}

pub(crate) fn audit_records(env: &Env) -> Vec<Value> {
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
                started_by: None,
            })
            .await
        {
            Err(warden_core::CallError::NotRecorded(why)) => {
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
