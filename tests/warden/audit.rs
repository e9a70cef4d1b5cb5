//! The audit log as an attacker who can write the data dir, and an operator after a
//! crash or a full disk, find it (part of the one `warden` test binary).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::Digest;

use super::{NOT_RECORDED, OK, audit_env, audit_records};
use crate::support::{Env, Run, Tmpfs, mcp_client_spawn};

fn segment(env: &Env, n: u64) -> PathBuf {
    env.path().join(format!("data/audit/segment-{n:08}.jsonl"))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn calls(env: &Env, n: usize) {
    for i in 0..n {
        let run = env.warden(&[
            "call",
            "text_stats",
            "--input",
            &format!(r#"{{"text":"call {i}"}}"#),
        ]);
        assert_eq!(run.code, OK, "{run:?}");
    }
}

fn verify(env: &Env, extra: &[&str]) -> Run {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    env.warden(&args)
}

fn public_key(env: &Env) -> String {
    let run = env.warden(&["audit", "key"]);
    assert_eq!(run.code, OK, "{run:?}");
    run.stdout.trim().to_string()
}

/// What an attacker without the key can do: re-number and re-hash every line so the
/// chain is consistent again.
fn rechain(records: &[Map<String, Value>]) -> Vec<String> {
    let mut prev = "0".repeat(64);
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut m = Map::new();
        m.insert("seq".into(), (i as u64 + 1).into());
        m.insert("prev".into(), prev.clone().into());
        for (k, v) in r {
            if !matches!(k.as_str(), "seq" | "prev" | "hash") {
                m.insert(k.clone(), v.clone());
            }
        }
        let body = serde_json::to_string(&m).unwrap();
        let hash = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        out.push(format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]));
        prev = hash;
    }
    out
}

fn parsed(lines: &[String]) -> Vec<Map<String, Value>> {
    lines
        .iter()
        .map(|l| match serde_json::from_str(l).unwrap() {
            Value::Object(m) => m,
            _ => panic!("{l}"),
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_deleted_tail_is_refused_by_the_next_call_until_an_audited_repair() {
    let env = audit_env();
    calls(&env, 3);
    let all = lines(&segment(&env, 1));
    write_lines(&segment(&env, 1), &all[..all.len() - 4]);

    // The next ordinary call must not hide the deletion by appending after it.
    let run = env.warden(&["call", "text_stats", "--input", r#"{"text":"x"}"#]);
    assert_eq!(run.code, NOT_RECORDED, "{run:?}");
    let missing = format!("records {}..={} are missing", all.len() - 3, all.len());
    assert!(
        run.stderr.contains(&missing)
            && run
                .stderr
                .contains("warden audit repair --accept-missing-records"),
        "names what is missing and the way out: {run:?}"
    );
    assert_eq!(
        lines(&segment(&env, 1)).len(),
        all.len() - 4,
        "nothing appended"
    );
    let v = verify(&env, &[]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stdout.contains("deleted from the end"), "{v:?}");

    // A repair without saying so accepts nothing.
    let refused = env.warden(&["audit", "repair"]);
    assert_eq!(refused.code, NOT_RECORDED, "{refused:?}");
    let repaired = env.warden(&["audit", "repair", "--accept-missing-records"]);
    assert_eq!(repaired.code, OK, "{repaired:?}");
    let repair = audit_records(&env)
        .into_iter()
        .find(|r| r["kind"] == "audit-repair")
        .expect("the repair is in the log");
    assert!(
        repair["accepted"].as_str().unwrap().contains(&format!(
            "records {}..={}",
            all.len() - 3,
            all.len()
        )),
        "{repair}"
    );
    assert_eq!(verify(&env, &[]).code, OK);
    calls(&env, 1);
}

#[test]
fn a_deleted_head_fails_verify_unless_told_and_stops_calls_until_repaired() {
    let env = audit_env();
    calls(&env, 2);
    std::fs::remove_file(env.path().join("data/audit/HEAD")).unwrap();
    let v = verify(&env, &[]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stdout.contains("HEAD is missing"), "{v:?}");
    assert_eq!(verify(&env, &["--no-head"]).code, OK);

    let run = env.warden(&["call", "text_stats", "--input", r#"{"text":"x"}"#]);
    assert_eq!(run.code, NOT_RECORDED, "{run:?}");
    assert!(run.stderr.contains("--accept-missing-head"), "{run:?}");
    let repaired = env.warden(&["audit", "repair", "--accept-missing-head"]);
    assert_eq!(repaired.code, OK, "{repaired:?}");
    assert_eq!(verify(&env, &[]).code, OK);
    calls(&env, 1);
}

#[test]
fn a_forged_record_with_its_own_hash_is_named_beside_the_genuine_one() {
    let env = audit_env();
    calls(&env, 2);
    let all = lines(&segment(&env, 1));
    // A record claiming to be record 5, linked to record 4 and hashed correctly.
    let genuine = parsed(&all[3..5]);
    let mut forged = Map::new();
    forged.insert("seq".into(), 5.into());
    forged.insert("prev".into(), genuine[0]["hash"].clone());
    forged.insert("kind".into(), "run-end".into());
    forged.insert("status".into(), "ok".into());
    let body = serde_json::to_string(&forged).unwrap();
    let hash = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    let line = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
    let mut tampered = all.clone();
    tampered.insert(4, line);
    write_lines(&segment(&env, 1), &tampered);
    let v = verify(&env, &[]);
    assert_eq!(v.code, 1, "{v:?}");
    for needle in [
        "record 5 appears twice",
        "segment-00000001.jsonl:5",
        "segment-00000001.jsonl:6",
        "so segment-00000001.jsonl:5 was inserted",
    ] {
        assert!(v.stdout.contains(needle), "{needle}: {v:?}");
    }
}

#[test]
fn segments_deleted_first_middle_or_last_are_named() {
    let env = audit_env();
    env.append_config("[audit]\nmax_segment_kb = 2\n");
    calls(&env, 6);
    let segments: Vec<u64> = (1..100)
        .take_while(|n| segment(&env, *n).exists())
        .collect();
    assert!(segments.len() >= 4, "{segments:?}");
    let dir = env.path().join("data/audit");
    for (which, n, needle) in [
        ("first", 1, "missing (deleted)"),
        ("middle", 2, "segment file missing"),
        ("last", *segments.last().unwrap(), "deleted from the end"),
    ] {
        let saved = std::fs::read(segment(&env, n)).unwrap();
        std::fs::remove_file(segment(&env, n)).unwrap();
        let v = verify(&env, &[]);
        assert_eq!(v.code, 1, "{which}: {v:?}");
        assert!(v.stdout.contains(needle), "{which}: {v:?}");
        std::fs::write(dir.join(format!("segment-{n:08}.jsonl")), saved).unwrap();
    }
    assert_eq!(verify(&env, &[]).code, OK);
}

#[test]
fn a_rewritten_chain_is_caught_by_its_checkpoints_and_a_truncation_by_the_witness() {
    let env = audit_env();
    env.append_config("[audit]\ncheckpoint_every = 4\n[audit.witness]\ndir = \"witness\"\n");
    calls(&env, 6);
    let key = public_key(&env);
    let dir = env.path().join("data/audit");
    let all = lines(&segment(&env, 1));
    let records = parsed(&all);
    assert!(
        records.iter().filter(|r| r["kind"] == "checkpoint").count() >= 6,
        "checkpoints every 4 records"
    );
    assert_eq!(verify(&env, &[]).code, OK);

    // 1. Change one early record and re-hash everything after it: the checkpoints no
    //    longer match the chain they signed.
    let copy = env.path().join("copy");
    copy_dir(&dir, &copy);
    let mut edited = records.clone();
    let i = edited
        .iter()
        .position(|r| r["kind"] == "run-start")
        .unwrap();
    edited[i].insert("principal".into(), "someone-else".into());
    write_lines(&copy.join("segment-00000001.jsonl"), &rechain(&edited));
    let v = env.warden(&[
        "audit",
        "verify",
        "--dir",
        copy.to_str().unwrap(),
        "--no-head",
    ]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stdout.contains("rewritten after it was signed"), "{v:?}");

    // 2. Drop every checkpoint and re-hash: consistent, but nothing a trusted key
    //    signed covers it.
    let stripped: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] != "checkpoint")
        .cloned()
        .collect();
    write_lines(&copy.join("segment-00000001.jsonl"), &rechain(&stripped));
    let v = env.warden(&[
        "audit",
        "verify",
        "--dir",
        copy.to_str().unwrap(),
        "--no-head",
        "--key",
        &key,
    ]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stdout.contains("not signed by a trusted key"), "{v:?}");
    // Without a key to trust, verify can only say the log is consistent, and says so.
    let v = env.warden(&[
        "audit",
        "verify",
        "--dir",
        copy.to_str().unwrap(),
        "--no-head",
    ]);
    assert!(v.stdout.contains("checkpoints: none"), "{v:?}");

    // 3. A checkpoint signed by another key.
    let mut forged = records.clone();
    let c = forged
        .iter()
        .position(|r| r["kind"] == "checkpoint")
        .unwrap();
    let sig = forged[c]["sig"].as_str().unwrap().to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    forged[c].insert("sig".into(), format!("{flipped}{}", &sig[1..]).into());
    write_lines(&copy.join("segment-00000001.jsonl"), &rechain(&forged));
    let v = env.warden(&[
        "audit",
        "verify",
        "--dir",
        copy.to_str().unwrap(),
        "--no-head",
    ]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stdout.contains("not its key's (forged)"), "{v:?}");

    // 4. Cut the end (its checkpoints with it) and rewrite HEAD to match: the witness,
    //    outside the data dir, still holds the later checkpoints.
    let keep = all.len() - 6;
    write_lines(&segment(&env, 1), &all[..keep]);
    let last: Value = serde_json::from_str(&all[keep - 1]).unwrap();
    std::fs::write(
        dir.join("HEAD"),
        serde_json::json!({ "seq": last["seq"], "hash": last["hash"], "open_from": keep + 1, "clean": true, "ts_ms": 0 }).to_string(),
    )
    .unwrap();
    let v = verify(&env, &[]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(
        v.stdout
            .contains("the witness holds a checkpoint at record")
            && v.stdout.contains("were deleted"),
        "{v:?}"
    );
}

#[test]
fn the_signing_key_lives_outside_the_data_dir_and_rotates_in_the_log() {
    let env = audit_env();
    calls(&env, 1);
    let key_file = env.path().join("keys/audit-signing.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let old = public_key(&env);
    let rotated = env.warden(&["audit", "rotate-key"]);
    assert_eq!(rotated.code, OK, "{rotated:?}");
    let new = public_key(&env);
    assert_ne!(old, new);
    calls(&env, 1);
    let rotation = audit_records(&env)
        .into_iter()
        .find(|r| r["kind"] == "key-rotation" && r["key"] == new.as_str())
        .expect("the rotation is in the log");
    assert_eq!(rotation["previous_key"], old.as_str());
    // Trusting the old key alone is enough: it endorsed the new one.
    let dir = env.path().join("data/audit");
    let v = env.warden(&[
        "audit",
        "verify",
        "--dir",
        dir.to_str().unwrap(),
        "--key",
        &old,
    ]);
    assert_eq!(v.code, OK, "{v:?}");
    assert!(v.stdout.contains("(trusted)"), "{v:?}");

    // A key inside the data dir is refused.
    env.append_config("[audit]\nsigning_key = \"data/audit.key\"\n");
    let run = env.warden(&["check"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("audit.signing_key") && run.stderr.contains("inside the data dir"),
        "{run:?}"
    );
}

#[test]
fn audit_verify_dir_checks_a_copied_log_without_a_config() {
    let env = audit_env();
    calls(&env, 2);
    let key_file = env.path().join("keys/audit-signing.key.pub");
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&env.path().join("data/audit"), copy.path());
    std::fs::remove_file(env.config()).unwrap();
    let dir = copy.path().to_str().unwrap();
    let v = env.warden(&[
        "audit",
        "verify",
        "--dir",
        dir,
        "--key",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(v.code, OK, "{v:?}");
    assert!(
        v.stdout.contains("intact") && v.stdout.contains("(trusted)"),
        "{v:?}"
    );
    let seg = copy.path().join("segment-00000001.jsonl");
    let text = std::fs::read_to_string(&seg)
        .unwrap()
        .replacen("call 0", "call 9", 1);
    std::fs::write(&seg, text).unwrap();
    let v = env.warden(&["audit", "verify", "--dir", dir]);
    assert_eq!(v.code, 1, "{v:?}");
}

#[test]
fn an_unusable_audit_location_exits_5_naming_the_path_and_the_os_error() {
    // A file where the directory should be.
    let env = audit_env();
    std::fs::create_dir_all(env.path().join("data")).unwrap();
    std::fs::write(env.path().join("data/audit"), "not a dir").unwrap();
    let run = env.warden(&["call", "text_stats", "--input", r#"{"text":"x"}"#]);
    assert_eq!(run.code, NOT_RECORDED, "{run:?}");
    assert!(
        run.stderr.contains("data/audit") && run.stderr.contains("File exists"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("warden.toml:1:1"), "{run:?}");

    // A torn tail.
    let env = audit_env();
    calls(&env, 1);
    let mut text = std::fs::read_to_string(segment(&env, 1)).unwrap();
    text.push_str("{\"seq\":99,\"prev\"");
    std::fs::write(segment(&env, 1), text).unwrap();
    let run = env.warden(&["call", "text_stats", "--input", r#"{"text":"x"}"#]);
    assert_eq!(run.code, NOT_RECORDED, "{run:?}");
    assert!(
        run.stderr.contains("segment-00000001.jsonl") && run.stderr.contains("cut short"),
        "{run:?}"
    );
    let repaired = env.warden(&["audit", "repair"]);
    assert_eq!(repaired.code, OK, "{repaired:?}");
    assert!(repaired.stderr.contains("cut 16 bytes"), "{repaired:?}");
    assert_eq!(verify(&env, &[]).code, OK);

    // A read-only file system, and a full one.
    for (read_only, error) in [(true, "Read-only file system"), (false, "No space left")] {
        let env = audit_env();
        let fs = Tmpfs::mount(&env.path().join("fs"), "1m", read_only);
        if !read_only {
            fs.fill_leaving(0);
        }
        env.append_config("[audit]\ndir = \"fs/audit\"\n");
        let run = env.warden(&["call", "text_stats", "--input", r#"{"text":"x"}"#]);
        assert_eq!(run.code, NOT_RECORDED, "{run:?}");
        assert!(
            run.stderr.contains("fs/audit") && run.stderr.contains(error),
            "{run:?}"
        );
        assert!(!run.stderr.contains("warden.toml:1:1"), "{run:?}");
    }
}

/// At each point a write can fail (a record, a rotation to a new segment, a
/// checkpoint), the segment is cut back to its last whole record, calls are refused
/// while the disk is full, and once there is room again they run and the log says
/// what was lost, without anyone editing a file.
#[tokio::test]
async fn a_full_disk_is_cut_back_to_the_last_whole_record_and_recorded_when_space_returns() {
    use warden_core::call::{CallRequest, Outcome};
    use warden_core::config::Config;
    use warden_core::runtime::Runtime;

    let env = audit_env();
    let fs = Tmpfs::mount(&env.path().join("fs"), "2m", false);
    env.append_config(
        "[audit]\ndir = \"fs/audit\"\nmax_segment_kb = 6\ncheckpoint_every = 5\n[audit.witness]\ndir = \"fs/witness\"\n",
    );
    async fn call(rt: &Runtime) -> Result<warden_core::CallReport, warden_core::CallError> {
        rt.call(CallRequest {
            principal: "t",
            tool: "text_stats",
            input: r#"{"text":"fill the disk"}"#,
            started_by: None,
        })
        .await
    }
    let audit = env.path().join("fs/audit");
    for room in [0u64, 1000, 3000, 6000, 9000, 13000] {
        let rt = Runtime::load(Config::load(&env.config()).unwrap())
            .await
            .unwrap();
        fs.fill_leaving(room);
        let mut refused = 0;
        for _ in 0..200 {
            match call(&rt).await {
                Ok(report) => assert!(matches!(report.outcome, Outcome::Ok { .. })),
                Err(warden_core::CallError::NotRecorded(why)) => {
                    assert!(
                        why.contains("No space left") || why.contains("not writable"),
                        "{why}"
                    );
                    refused += 1;
                    if refused == 3 {
                        break;
                    }
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(refused, 3, "room {room}: the disk never filled");
        for entry in std::fs::read_dir(&audit).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".jsonl") {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    bytes.is_empty() || bytes.last() == Some(&b'\n'),
                    "room {room}: {} ends in a record cut short",
                    path.display()
                );
            }
        }
        fs.empty();
        let report = call(&rt).await.expect("runs once there is room");
        assert!(matches!(report.outcome, Outcome::Ok { .. }));
        drop(rt);
    }
    let records = warden_core::store::audit::read_all(&audit).unwrap();
    let failed: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "audit-write-failed")
        .collect();
    assert!(
        failed.len() >= 5,
        "each outage is recorded: {}",
        failed.len()
    );
    assert!(
        failed
            .iter()
            .all(|r| r["error"].as_str().unwrap().contains("No space left"))
    );
    let v = verify(&env, &[]);
    assert_eq!(v.code, OK, "{v:?}");
    assert!(
        v.stdout.contains("witness: agrees"),
        "the witness caught up: {v:?}"
    );
}

#[test]
fn verify_gives_no_false_alarm_while_a_server_writes() {
    let (env, token) = super::mcp::agent_env();
    let mut served = env.serve();
    let url = served.url("/mcp");
    let mut client = mcp_client_spawn(&[
        "--http",
        &url,
        "--token",
        &token,
        "hammer",
        "4",
        "text_stats",
        r#"{"text":"load"}"#,
    ]);
    let out = client.stdout.take().unwrap();
    let mut seen = std::io::BufReader::new(out).lines();
    for _ in 0..20 {
        seen.next().expect("the load runs").unwrap();
    }
    for i in 0..50 {
        let v = verify(&env, &[]);
        assert_eq!(v.code, OK, "verify {i} during the load: {v:?}");
        assert!(v.stdout.contains("being written"), "{v:?}");
    }
    let _ = client.kill();
    let _ = client.wait();
    assert!(served.stop().success());
    assert_eq!(verify(&env, &[]).code, OK);
}

#[test]
fn kill_9_under_load_loses_no_run_a_client_saw_and_marks_the_cut_off_ones_interrupted() {
    let (env, token) = super::mcp::agent_env();
    let mut succeeded = Vec::new();
    for round in 0..3 {
        let mut served = env.serve();
        let url = served.url("/mcp");
        let mut client = mcp_client_spawn(&[
            "--http",
            &url,
            "--token",
            &token,
            "hammer",
            "8",
            "text_stats",
            r#"{"text":"load"}"#,
        ]);
        let out = client.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(id) = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["ok"].as_str().map(str::to_string))
                {
                    seen.push(id);
                    let _ = tx.send(());
                }
            }
            seen
        });
        // Kill it in the thick of the load: once calls flow, a little later each round.
        let started = Instant::now();
        for _ in 0..20 {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("the load runs");
        }
        std::thread::sleep(Duration::from_millis(100 + 150 * round));
        served.child.kill().unwrap();
        served.child.wait().unwrap();
        let _ = client.kill();
        let _ = client.wait();
        let seen = reader.join().unwrap();
        assert!(
            seen.len() > 10,
            "round {round}: the load ran ({} in {:?})",
            seen.len(),
            started.elapsed()
        );
        succeeded.extend(seen);
    }
    // The next process to open the log ends what the last crash cut off.
    calls(&env, 1);
    assert_eq!(verify(&env, &[]).code, OK);
    let records = audit_records(&env);
    let ended: std::collections::HashMap<&str, &str> = records
        .iter()
        .filter(|r| r["kind"] == "run-end")
        .filter_map(|r| Some((r["run"].as_str()?, r["status"].as_str()?)))
        .collect();
    let started: Vec<&str> = records
        .iter()
        .filter(|r| r["kind"] == "run-start")
        .filter_map(|r| r["run"].as_str())
        .collect();
    for id in &started {
        assert!(ended.contains_key(id), "run {id} started and never ended");
    }
    let rows = env.warden(&["runs", "list", "--limit", "1000000", "--json"]);
    let rows: std::collections::HashMap<String, Value> = rows
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect();
    for id in &succeeded {
        assert_eq!(ended.get(id.as_str()), Some(&"ok"), "run {id}");
        assert_eq!(
            rows.get(id).map(|r| r["status"].clone()),
            Some("ok".into()),
            "row of run {id}"
        );
    }
    for id in &started {
        assert!(rows.contains_key(*id), "run {id} has no row");
    }
}

#[test]
fn a_secret_straddling_any_cut_never_leaves_its_first_bytes_behind() {
    let (a, b) = (
        crate::support::Listener::http(),
        crate::support::Listener::http(),
    );
    let grants = r#"{ name = "db_password", reveal = true }"#;
    let env = super::secret_env(&a, &b, grants);
    env.append_config("[plugin.limits]\nmax_log_kb = 1\n");
    let secret = super::OTHER_SECRET;
    // The audit log keeps 4 KiB of an input: the secret starts 10 bytes before the cut.
    let input = format!(r#"{{"t":"{}{secret}"}}"#, "x".repeat(4096 - 10 - 6));
    let mut runs = vec![env.warden(&["call", "counter", "--input", &input, "--report"])];
    // stdout and progress keep 1 KiB; a host call's arguments 512 bytes.
    for pad in [1014usize, 430, 440, 450, 460, 470, 480, 490, 500] {
        let run = env.warden(&[
            "call",
            "leak",
            "--input",
            &format!(r#"{{"name":"db_password","pad":{pad}}}"#),
            "--report",
        ]);
        assert_eq!(run.code, OK, "{run:?}");
        runs.push(run);
    }
    let refs: Vec<&Run> = runs.iter().collect();
    super::assert_no_secret(&env, &refs);
    let prefix = &secret[..10];
    let mut files = vec![env.path().join("data")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_none_or(|e| e != "wasm" && e != "cwasm") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(
                !text.contains(prefix),
                "{} holds the secret's first bytes",
                path.display()
            );
        }
    }
    for run in &runs {
        assert!(!run.stdout.contains(prefix), "{run:?}");
    }
}

#[test]
fn every_refusal_is_recorded_as_denied_without_the_hosts_own_stack() {
    let listener = crate::support::Listener::http();
    let env = super::hostile_env(listener.port, super::HOSTILE_LIMITS);
    let cases = [
        ("read_file", r#"{"path":"/data/../outside.txt"}"#),
        ("write_file", r#"{"path":"/ro/x.txt","text":"x"}"#),
        ("tcp_connect", r#"{"addr":"127.0.0.1:9"}"#),
        ("dns_lookup", r#"{"host":"example.com"}"#),
        ("http_get", r#"{"url":"http://10.0.0.1/"}"#),
    ];
    for (tool, input) in cases {
        // As an operator debugging with backtraces on would run it.
        let run = env.warden_with_env(
            &["call", tool, "--input", input, "--report"],
            &[("RUST_BACKTRACE", "1")],
        );
        let report: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        let id = report["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{run:?}"));
        let records: Vec<Value> = audit_records(&env)
            .into_iter()
            .filter(|r| r["run"] == id && r["kind"] == "host-call")
            .collect();
        let refused: Vec<&Value> = records
            .iter()
            .filter(|r| r["result"].as_str().unwrap().contains("Err"))
            .collect();
        assert!(!refused.is_empty(), "{tool}: {records:?}");
        for r in refused {
            assert_eq!(r["outcome"], "denied", "{tool}: {r}");
        }
        for r in &records {
            let text = r.to_string();
            assert!(
                !text.contains("backtrace") && !text.contains("wasmtime"),
                "{tool}: the host's stack in a record: {text}"
            );
        }
    }
    // Allowed calls say ok.
    let (run, report) = env.call("read_file", r#"{"path":"/ro/inside.txt"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let id = report["run_id"].as_str().unwrap();
    assert!(
        audit_records(&env)
            .iter()
            .filter(|r| r["run"] == id && r["kind"] == "host-call")
            .all(|r| r["outcome"] == "ok")
    );
}

#[test]
fn a_host_call_flood_is_counted_past_the_bound_not_written_line_by_line() {
    let env = audit_env();
    let (run, report) = env.call("log_flood", r#"{"lines": 5000}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let id = report["run_id"].as_str().unwrap();
    let records: Vec<Value> = audit_records(&env)
        .into_iter()
        .filter(|r| r["run"] == id)
        .collect();
    let one_by_one = records.iter().filter(|r| r["kind"] == "host-call").count();
    assert_eq!(one_by_one, 1000, "the first 1000 one by one");
    let counted = records
        .iter()
        .find(|r| r["kind"] == "host-calls-counted")
        .expect("the rest counted");
    let logs = counted["counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["function"] == "log")
        .unwrap();
    assert!(logs["calls"].as_u64().unwrap() >= 4000, "{counted}");
    assert_eq!(
        report["host_calls"].as_u64().unwrap() as usize,
        one_by_one
            + counted["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["calls"].as_u64().unwrap() as usize)
                .sum::<usize>()
    );
    let bytes: u64 = std::fs::read_dir(env.path().join("data/audit"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(bytes < 1 << 20, "the log stays small: {bytes} bytes");
}

#[test]
fn checkpoints_reach_an_http_witness_and_a_witness_that_is_down_never_blocks_a_call() {
    let witness = crate::support::Listener::http();
    let env = audit_env();
    env.append_config(&format!(
        "[audit]\ncheckpoint_every = 3\n[audit.witness]\nurl = \"{}\"\n",
        witness.url("/witness")
    ));
    calls(&env, 3);
    let received = witness.received();
    let checkpoints: Vec<Value> = received
        .split("\n----\n")
        .filter_map(|r| r.split_once("\r\n\r\n").map(|(_, body)| body))
        .filter_map(|b| serde_json::from_str(b).ok())
        .collect();
    assert!(checkpoints.len() >= 3, "{received}");
    let key = public_key(&env);
    assert!(
        checkpoints.iter().all(|c| c["key"] == key.as_str()),
        "{received}"
    );
    // The last checkpoint the witness holds is in the log.
    let last = checkpoints.last().unwrap();
    let records = audit_records(&env);
    assert!(
        records.iter().any(|r| r["kind"] == "checkpoint"
            && r["seq"] == last["seq"]
            && r["sig"] == last["sig"])
    );

    // A witness that refuses connections: calls go on as before.
    let down = crate::support::Listener::raw();
    let env = audit_env();
    env.append_config(&format!(
        "[audit]\ncheckpoint_every = 2\n[audit.witness]\nurl = \"{}\"\n",
        down.url("/witness")
    ));
    let started = Instant::now();
    calls(&env, 3);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(verify(&env, &[]).code, OK);
}
