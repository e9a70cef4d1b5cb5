//! Policies decide: the example policies allow, hold and deny; misbehaving policies deny.

use super::*;

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
