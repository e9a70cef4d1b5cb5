//! Secrets: encrypted at rest, injected where granted, never reaching the plugin, its output or records.

use super::*;

pub(crate) const SECRET: &str = "sk-live-7f3a9c1e5b2d8f4a6c0e";
pub(crate) const OTHER_SECRET: &str = "db-pass-Qm9vYmFyQmF6";
pub(crate) const HEADER_GRANT: &str = r#"{ name = "api_token", header = "authorization", format = "Bearer {}", hosts = ["127.0.0.1"] }"#;

/// A hostile plugin granted HTTP to `granted` (by IP) and `other` (by name), with a
/// vault holding `api_token` and `db_password`, and the given secret grants.
pub(crate) fn secret_env(granted: &Listener, other: &Listener, secret_grants: &str) -> Env {
    let env = Env::new("");
    let init = env.warden(&["secrets", "init"]);
    assert_eq!(init.code, OK, "{init:?}");
    for (name, value) in [("api_token", SECRET), ("db_password", OTHER_SECRET)] {
        let run = env.warden_stdin(&["secrets", "set", name], &format!("{value}\n"));
        assert_eq!(run.code, OK, "{run:?}");
    }
    env.write_config(&format!(
        r#"
[[plugin]]
id = "hostile"
component = "{{hostile}}"
[plugin.grants]
http = ["http://127.0.0.1:{}", "http://localhost:{}"]
secrets = [{secret_grants}]
"#,
        granted.port, other.port
    ));
    env
}

/// Nothing warden wrote (data dir, stdout, stderr) holds a secret in any common encoding.
pub(crate) fn assert_no_secret(env: &Env, runs: &[&support::Run]) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let needles = [
        SECRET.to_string(),
        OTHER_SECRET.to_string(),
        b64.encode(SECRET),
        b64.encode(OTHER_SECRET),
    ];
    let mut files = vec![env.path().to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_none_or(|e| e != "wasm" && e != "cwasm") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            for needle in &needles {
                assert!(
                    !text.contains(needle.as_str()),
                    "{} contains a secret",
                    path.display()
                );
            }
        }
    }
    for run in runs {
        for needle in &needles {
            assert!(
                !run.stdout.contains(needle.as_str()) && !run.stderr.contains(needle.as_str()),
                "output leaks: {run:?}"
            );
        }
    }
}

#[test]
fn vault_keeps_values_encrypted_and_refuses_wrong_keys_and_loose_key_files() {
    let (a, b) = (Listener::http(), Listener::http());
    let env = secret_env(&a, &b, HEADER_GRANT);
    // The key lives outside the data dir: a copy of the data dir holds no key.
    let key_file = env.path().join("keys/master.key");
    assert!(!env.path().join("data/master.key").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let check = env.warden(&["check"]);
    assert!(
        check
            .stdout
            .contains("secrets: api_token (header authorization to 127.0.0.1)"),
        "{check:?}"
    );
    let list = env.warden(&["secrets", "list", "--json"]);
    assert_eq!(list.code, OK, "{list:?}");
    let rows: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(rows[0]["name"], "api_token");
    assert_eq!(rows[0]["granted_to"], serde_json::json!(["hostile"]));
    let rotate = env.warden_stdin(&["secrets", "rotate", "db_password"], OTHER_SECRET);
    assert_eq!(rotate.code, OK, "{rotate:?}");
    assert_no_secret(&env, &[&check, &list, &rotate]);

    let wrong = env.warden_with_env(
        &["secrets", "list"],
        &[("WARDEN_MASTER_KEY", &"ab".repeat(32))],
    );
    assert_eq!(wrong.code, USAGE, "{wrong:?}");
    assert!(wrong.stderr.contains("wrong master key"), "{wrong:?}");

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = env.warden(&["check"]);
    assert_eq!(loose.code, USAGE, "{loose:?}");
    assert!(
        loose.stderr.contains("readable by others") && loose.stderr.contains("chmod 600"),
        "{loose:?}"
    );
}

#[test]
fn a_master_key_left_in_the_data_dir_still_opens_the_vault_with_a_warning() {
    let (a, b) = (Listener::http(), Listener::http());
    let env = secret_env(&a, &b, HEADER_GRANT);
    // As an older warden left it: the key beside the vault.
    std::fs::rename(
        env.path().join("keys/master.key"),
        env.path().join("data/master.key"),
    )
    .unwrap();
    let check = env.warden(&["check"]);
    assert_eq!(check.code, OK, "{check:?}");
    assert!(
        check
            .stderr
            .contains("is in the data dir, beside the vault"),
        "{check:?}"
    );
    // Without a key dir (no HOME, none configured) there is nowhere to make one.
    let bare = Env::new("");
    std::fs::write(bare.config(), "data_dir = \"data\"\n").unwrap();
    let init = bare.warden(&["secrets", "init"]);
    assert_eq!(init.code, USAGE, "{init:?}");
    assert!(
        init.stderr.contains("no place for the master key"),
        "{init:?}"
    );
}

#[test]
fn tampered_or_swapped_ciphertexts_fail_the_load() {
    let (a, b) = (Listener::http(), Listener::http());
    let grants = r#"{ name = "api_token", header = "x-a", hosts = ["127.0.0.1"] }, { name = "db_password", header = "x-b", hosts = ["127.0.0.1"] }"#;
    let env = secret_env(&a, &b, grants);
    assert_eq!(env.warden(&["check"]).code, OK);
    let vault_path = env.path().join("data/vault.json");
    let original = std::fs::read_to_string(&vault_path).unwrap();

    let mut doc: Value = serde_json::from_str(&original).unwrap();
    let (x, y) = (
        doc["secrets"]["api_token"][0].clone(),
        doc["secrets"]["db_password"][0].clone(),
    );
    for field in ["nonce", "ciphertext"] {
        doc["secrets"]["api_token"][0][field] = y[field].clone();
        doc["secrets"]["db_password"][0][field] = x[field].clone();
    }
    std::fs::write(&vault_path, serde_json::to_string(&doc).unwrap()).unwrap();
    let swapped = env.warden(&["check"]);
    assert_eq!(swapped.code, USAGE, "{swapped:?}");
    assert!(swapped.stderr.contains("tampered"), "{swapped:?}");

    let mut doc: Value = serde_json::from_str(&original).unwrap();
    let ct = doc["secrets"]["api_token"][0]["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    // Change the first base64 digit: still valid base64, different ciphertext.
    let first = if ct.starts_with('A') { "B" } else { "A" };
    let flipped = format!("{first}{}", &ct[1..]);
    doc["secrets"]["api_token"][0]["ciphertext"] = Value::String(flipped);
    std::fs::write(&vault_path, serde_json::to_string(&doc).unwrap()).unwrap();
    let edited = env.warden(&["check"]);
    assert_eq!(edited.code, USAGE, "{edited:?}");
    assert!(
        edited
            .stderr
            .contains("secret \"api_token\" version 1 failed authentication"),
        "{edited:?}"
    );
}

#[test]
fn injected_header_reaches_the_granted_host_but_never_the_plugin() {
    let (granted, other) = (Listener::http(), Listener::http());
    let env = secret_env(&granted, &other, HEADER_GRANT);
    let (run, report) = env.call(
        "secret_http",
        &format!(r#"{{"url":"{}"}}"#, granted.url("/echo")),
    );
    assert_eq!(run.code, OK, "{run:?}");
    assert!(
        granted
            .received()
            .contains(&format!("authorization: Bearer {SECRET}")),
        "{}",
        granted.received()
    );
    // The server echoed the header back; the plugin's output reaches the caller redacted
    // (the header's whole formatted value is one of the forms scrubbed).
    let body = report["output"]["body"].as_str().unwrap();
    assert!(body.contains("authorization: [REDACTED]"), "{body}");
    assert_no_secret(&env, &[&run]);
}

#[test]
fn redirect_to_another_host_does_not_carry_the_injected_header() {
    let (granted, other) = (Listener::http(), Listener::http());
    let env = secret_env(
        &granted,
        &other,
        r#"{ name = "api_token", header = "authorization", hosts = ["127.0.0.1"] }"#,
    );
    let url = granted.url(&format!(
        "/redirect?to={}",
        format_args!("http://localhost:{}/echo", other.port)
    ));
    let (run, report) = env.call(
        "http_get",
        &serde_json::json!({ "url": url, "follow": true }).to_string(),
    );
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(
        report["output"]["status"], 200,
        "the redirect was followed to the other granted host"
    );
    assert!(granted.received().contains(SECRET));
    assert!(
        !other.received().contains(SECRET) && other.received().contains("GET /echo"),
        "{}",
        other.received()
    );
    assert_no_secret(&env, &[&run]);
}

#[test]
fn placeholders_are_substituted_only_where_the_grant_says() {
    let (granted, other) = (Listener::http(), Listener::http());
    let grant = r#"{ name = "api_token", placeholder = true, substitute = ["query", "body"], hosts = ["127.0.0.1"] }"#;
    let env = secret_env(&granted, &other, grant);
    let mut runs = Vec::new();
    for put in ["header", "query", "body"] {
        let input =
            serde_json::json!({ "url": granted.url("/echo"), "secret": "api_token", "put": put });
        let (run, _) = env.call("secret_http", &input.to_string());
        assert_eq!(run.code, OK, "{put}: {run:?}");
        runs.push(run);
    }
    let seen = granted.received();
    assert!(
        seen.contains(&format!("x-api-key: {SECRET}")),
        "header: {seen}"
    );
    assert!(seen.contains(&format!("?key={SECRET}")), "query: {seen}");
    assert!(
        seen.contains(&format!("{{\"key\":\"{SECRET}\"}}")),
        "body: {seen}"
    );
    assert!(
        !seen.contains("warden-secret-"),
        "every placeholder was replaced: {seen}"
    );

    // To a host the secret's grant does not name: refused before any connection.
    let input = serde_json::json!({ "url": format!("http://localhost:{}/echo", other.port), "secret": "api_token", "put": "header" });
    let (run, report) = env.call("secret_http", &input.to_string());
    assert_http_denied(&run, &report);
    assert!(
        report["denied_requests"][0]
            .as_str()
            .unwrap()
            .contains("placeholder for secret api_token"),
        "{run:?}"
    );
    assert_eq!(other.count(), 0);
    runs.push(run);
    let refs: Vec<&support::Run> = runs.iter().collect();
    assert_no_secret(&env, &refs);
}

/// A tool holding a revealed secret encodes it every way a leak would (base64 of a
/// header, of bodies at each byte offset, escaped twice, URL-encoded): none of it
/// leaves the call, in its output, the CLI's, the run history or the audit log.
#[test]
fn a_secret_encoded_every_way_a_tool_would_never_leaves_the_call() {
    use base64::Engine as _;
    let tricky = r#"q"u\ote/and+pl=us-0123456789"#;
    let env = Env::new("");
    assert_eq!(env.warden(&["secrets", "init"]).code, OK);
    let set = env.warden_stdin(&["secrets", "set", "tricky"], &format!("{tricky}\n"));
    assert_eq!(set.code, OK, "{set:?}");
    env.write_config(
        "[[plugin]]\nid = \"hostile\"\ncomponent = \"{hostile}\"\n[plugin.grants]\nsecrets = [{ name = \"tricky\", reveal = true }]\n",
    );
    let (run, report) = env.call("encode", r#"{"name":"tricky"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    let plain = env.warden(&["call", "encode", "--input", r#"{"name":"tricky"}"#]);
    assert_eq!(plain.code, OK, "{plain:?}");
    assert!(
        report["output"]["header_b64"]
            .as_str()
            .unwrap()
            .contains("[REDACTED]"),
        "{report}"
    );
    // What would betray the value: its base64 at every offset (each alphabet), and the
    // JSON escaping of it applied twice.
    let mut needles: Vec<String> = Vec::new();
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        for offset in 0..3 {
            let mut padded = vec![b'x'; offset];
            padded.extend_from_slice(tricky.as_bytes());
            let encoded = engine.encode(&padded);
            let last = 4 * (padded.len() / 3);
            needles.push(encoded[4..last].to_string());
        }
    }
    let once = serde_json::to_string(tricky).unwrap();
    needles.push(
        serde_json::to_string(&once)
            .unwrap()
            .trim_matches('"')
            .to_string(),
    );
    needles.push("ote/and+pl".to_string());
    let mut texts = vec![run.stdout.clone(), run.stderr.clone(), plain.stdout.clone()];
    let mut files = vec![env.path().join("data")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_none_or(|e| e != "wasm" && e != "cwasm") {
            texts.push(String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned());
        }
    }
    for text in &texts {
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{needle} leaked: {}",
                &text[..text.len().min(2000)]
            );
        }
    }
}

#[test]
fn reveal_needs_its_grant_is_recorded_and_is_redacted() {
    let (a, b) = (Listener::http(), Listener::http());
    let grants = r#"{ name = "db_password", reveal = true }, { name = "api_token", header = "x-token", hosts = ["127.0.0.1"] }"#;
    let env = secret_env(&a, &b, grants);
    let (run, report) = env.call("reveal", r#"{"name":"db_password"}"#);
    assert_eq!(run.code, OK, "{run:?}");
    assert_eq!(report["output"]["value"], "[REDACTED]");
    assert_eq!(report["secret_reveals"], serde_json::json!(["db_password"]));

    let (run, report) = env.call("reveal", r#"{"name":"api_token"}"#);
    assert_failed(&run, &report, "tool-error");
    assert!(
        report["error"].as_str().unwrap().contains("wrong-use"),
        "{run:?}"
    );
    // Not granted and not in the vault look the same.
    for name in ["not_granted_anywhere", "db_password_v2"] {
        let (run, report) = env.call("reveal", &format!(r#"{{"name":"{name}"}}"#));
        assert!(
            report["error"].as_str().unwrap().contains("not-found"),
            "{run:?}"
        );
    }
    let (env_run, _) = env.call("env", "{}");
    // An input that quotes a secret is refused by the schema without echoing it.
    let quoted = env.warden(&[
        "call",
        "log_flood",
        "--input",
        &format!(r#"{{"lines":"{OTHER_SECRET}"}}"#),
    ]);
    assert_eq!(quoted.code, OK, "hostile tools take any object: {quoted:?}");
    let bad = env.warden(&[
        "call",
        "reveal",
        "--input",
        &format!(r#"["{OTHER_SECRET}"]"#),
    ]);
    assert_eq!(bad.code, USAGE, "{bad:?}");
    assert!(bad.stderr.contains("[REDACTED]"), "{bad:?}");
    assert_no_secret(&env, &[&run, &env_run, &quoted, &bad]);
}

#[test]
fn secret_grants_are_checked_at_load() {
    let (a, b) = (Listener::http(), Listener::http());
    let cases = [
        (
            r#"{ name = "missing", header = "x", hosts = ["127.0.0.1"] }"#,
            "secret \"missing\" is not in the vault",
        ),
        (
            r#"{ name = "api_token", header = "x", hosts = ["api.example.com"] }"#,
            "no `http` grant of this plugin covers it",
        ),
        (
            r#"{ name = "api_token", header = "x", reveal = true }"#,
            "exactly one use",
        ),
        (
            r#"{ name = "api_token", placeholder = true }"#,
            "`hosts` must name where",
        ),
        (
            r#"{ name = "api_token", reveal = true, hosts = ["127.0.0.1"] }"#,
            "takes no `hosts`",
        ),
    ];
    for (grant, needle) in cases {
        let env = secret_env(&a, &b, grant);
        let run = env.warden(&["check"]);
        assert_eq!(run.code, USAGE, "{grant}: {run:?}");
        assert!(
            run.stderr.contains(needle) && run.stderr.contains("grants.secrets[0]"),
            "{grant}: {run:?}"
        );
    }
    // A files grant that would let the plugin read the vault is refused.
    let env = secret_env(&a, &b, r#"{ name = "api_token", reveal = true }"#);
    env.append_config("[[plugin]]\nid = \"peek\"\ncomponent = \"{text-stats}\"\n[plugin.grants]\nfiles = [{ host = \".\", guest = \"/all\", mode = \"ro\" }]\n");
    let run = env.warden(&["check"]);
    assert_eq!(run.code, USAGE, "{run:?}");
    assert!(run.stderr.contains("would expose"), "{run:?}");
}
