//! Files: reachable only inside granted directories.

use super::*;

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

#[tokio::test]
async fn a_granted_directory_gone_after_load_fails_the_call_as_a_host_error_not_a_trap() {
    let env = hostile_env(1, HOSTILE_LIMITS);
    let rt = Runtime::load(Config::load(&env.config()).unwrap())
        .await
        .unwrap();
    std::fs::remove_dir_all(env.path().join("readonly")).unwrap();
    let report = rt
        .call(CallRequest {
            principal: "t",
            tool: "read_file",
            input: r#"{"path":"/ro/inside.txt"}"#,
            started_by: None,
        })
        .await
        .unwrap();
    match &report.outcome {
        Outcome::Failed {
            kind: Failure::Host(why),
            ..
        } => assert!(why.contains("readonly"), "names the directory: {why}"),
        other => panic!("expected a host error: {other:?}"),
    }
    assert_eq!(
        serde_json::to_value(&report.outcome).unwrap()["kind"],
        "host-error"
    );
}
