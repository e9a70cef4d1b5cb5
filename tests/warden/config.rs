//! Config and components: bad ones are refused with a located error; input is validated first.

use super::*;

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
