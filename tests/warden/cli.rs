//! The command line: check, tools, inspect, help, closed pipes, the compile cache.

use super::*;

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
