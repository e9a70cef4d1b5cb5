//! `warden new`: a scaffold in each language builds with its one command and passes
//! `warden check` (or `warden policy test`) as written; a Rust tool's schema follows
//! its types.

use std::path::Path;
use std::process::Command;

use super::*;
use crate::support::{repo_root, shared_cache, toolchains};

fn warden_in(dir: &Path, args: &[&str]) -> support::Run {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WARDEN_CACHE_DIR", shared_cache())
        // A scaffold's warden.toml names no key_dir: the audit key goes under $HOME,
        // as on an author's machine (here, the project's own directory).
        .env("HOME", dir)
        .output()
        .expect("run warden")
        .into()
}

fn built(what: &str, command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build a Rust scaffold into a target dir shared across runs (dependencies built
/// once), and copy the component to where its warden.toml expects it.
fn cargo_build(dir: &Path, name: &str) {
    let shared = repo_root().join("target/scaffold-target");
    built(
        "cargo build --release",
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--quiet"])
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", &shared)
            .env_remove("RUSTFLAGS"),
    );
    let component = format!("{name}.wasm");
    let into = dir.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&into).unwrap();
    std::fs::copy(
        shared.join("wasm32-wasip2/release").join(&component),
        into.join(&component),
    )
    .unwrap();
}

fn input_schema(dir: &Path, component: &str) -> Value {
    let run = warden_in(dir, &["inspect", "--json", component]);
    assert_eq!(run.code, OK, "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    report["tools"][0]["inputSchema"].clone()
}

#[test]
fn rust_scaffolds_build_pass_check_and_a_tool_schema_follows_its_types() {
    let top = tempfile::tempdir().unwrap();
    let run = warden_in(top.path(), &["new", "tool", "greet-rs"]);
    assert_eq!(run.code, OK, "{run:?}");
    let dir = top.path().join("greet-rs");
    cargo_build(&dir, "greet_rs");
    let check = warden_in(&dir, &["-c", "warden.toml", "check"]);
    assert_eq!(check.code, OK, "{check:?}");
    let call = warden_in(
        &dir,
        &[
            "-c",
            "warden.toml",
            "call",
            "greet_rs",
            "--input",
            r#"{"name":"Ada","times":2}"#,
        ],
    );
    assert_eq!(call.code, OK, "{call:?}");
    assert!(call.stdout.contains("Hello, Ada! Hello, Ada!"), "{call:?}");

    let component = "target/wasm32-wasip2/release/greet_rs.wasm";
    let before = input_schema(&dir, component);
    assert_eq!(before["properties"]["times"]["maximum"], 10, "{before}");
    assert!(before["properties"].get("loud").is_none());

    // A field added to the input type is in the schema after the next build.
    let lib = dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap().replace(
        "    times: u32,\n}",
        "    times: u32,\n    /// Shout it.\n    #[serde(default)]\n    loud: bool,\n}",
    );
    std::fs::write(&lib, source).unwrap();
    cargo_build(&dir, "greet_rs");
    let after = input_schema(&dir, component);
    assert_eq!(after["properties"]["loud"]["type"], "boolean", "{after}");
    assert_eq!(after["properties"]["loud"]["description"], "Shout it.");

    // A Rust policy scaffold passes its own cases.
    let run = warden_in(top.path(), &["new", "policy", "guard-rs"]);
    assert_eq!(run.code, OK, "{run:?}");
    let policy = top.path().join("guard-rs");
    cargo_build(&policy, "guard_rs");
    let cases = warden_in(
        &policy,
        &[
            "policy",
            "test",
            "target/wasm32-wasip2/release/guard_rs.wasm",
            "cases.toml",
        ],
    );
    assert_eq!(cases.code, OK, "{cases:?}");
    assert!(cases.stdout.contains("2 passed, 0 failed"), "{cases:?}");
}

#[test]
fn python_and_js_scaffolds_build_with_one_command_and_pass_check() {
    let tools = toolchains();
    let top = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        tools.join("python/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // Python tool: ./build.sh, then check and a call.
    assert_eq!(
        warden_in(top.path(), &["new", "tool", "greet-py", "--lang", "python"]).code,
        OK
    );
    let py = top.path().join("greet-py");
    built(
        "./build.sh",
        Command::new("./build.sh")
            .current_dir(&py)
            .env("PATH", &path),
    );
    assert_eq!(warden_in(&py, &["-c", "warden.toml", "check"]).code, OK);
    let call = warden_in(
        &py,
        &[
            "-c",
            "warden.toml",
            "call",
            "greet_py",
            "--input",
            r#"{"name":"Ada"}"#,
        ],
    );
    assert!(call.stdout.contains("Hello, Ada!"), "{call:?}");
    assert_eq!(
        input_schema(&py, "greet_py.wasm")["properties"]["times"]["maximum"],
        10
    );

    // Python policy: ./build.sh, then its own cases.
    assert_eq!(
        warden_in(
            top.path(),
            &["new", "policy", "guard-py", "--lang", "python"]
        )
        .code,
        OK
    );
    let policy = top.path().join("guard-py");
    built(
        "./build.sh",
        Command::new("./build.sh")
            .current_dir(&policy)
            .env("PATH", &path),
    );
    let cases = warden_in(&policy, &["policy", "test", "guard_py.wasm", "cases.toml"]);
    assert_eq!(cases.code, OK, "{cases:?}");

    // JavaScript tool: `npm run build` (its node_modules: the pinned toolchain's).
    assert_eq!(
        warden_in(top.path(), &["new", "tool", "greet-js", "--lang", "js"]).code,
        OK
    );
    let js = top.path().join("greet-js");
    std::os::unix::fs::symlink(tools.join("node/node_modules"), js.join("node_modules")).unwrap();
    built(
        "npm run build",
        Command::new("npm")
            .args(["run", "build", "--silent"])
            .current_dir(&js),
    );
    assert_eq!(warden_in(&js, &["-c", "warden.toml", "check"]).code, OK);
    let call = warden_in(
        &js,
        &[
            "-c",
            "warden.toml",
            "call",
            "greet_js",
            "--input",
            r#"{"name":"Ada","times":2}"#,
        ],
    );
    assert!(call.stdout.contains("Hello, Ada! Hello, Ada!"), "{call:?}");

    // What cannot work is refused up front, and nothing is overwritten.
    let js_policy = warden_in(top.path(), &["new", "policy", "p", "--lang", "js"]);
    assert_eq!(js_policy.code, USAGE, "{js_policy:?}");
    assert!(
        js_policy
            .stderr
            .contains("write the policy in Rust or Python")
    );
    let again = warden_in(top.path(), &["new", "tool", "greet-py", "--lang", "python"]);
    assert_eq!(again.code, USAGE, "{again:?}");
    assert!(
        again.stderr.contains("refusing to write over it"),
        "{again:?}"
    );
    let bad = warden_in(top.path(), &["new", "tool", "Bad_Name"]);
    assert_eq!(bad.code, USAGE, "{bad:?}");
}
