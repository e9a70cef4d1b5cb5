//! What a plugin may reach, granted by the operator and nothing else: outgoing HTTP and
//! the secrets injected into it (`http`, `secrets`), directories (`files`), environment
//! variables (`env`).
//!
//! Each capability's module holds all of it: the raw form read from
//! `[plugin.grants]`, its validation, its preparation for a call's sandbox and its
//! enforcement, so that adding a kind of grant touches one module (and the list
//! here). Nothing is granted by default; `config` only locates the errors this
//! module reports.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

pub(crate) mod env;
pub(crate) mod files;
pub mod http;
pub mod secrets;

use files::{FileGrant, RawFileGrant};
use http::HttpGrant;
use secrets::{RawSecretGrant, SecretGrant};

/// What a plugin may touch. Everything not listed is denied.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub http: Vec<HttpGrant>,
    pub files: Vec<FileGrant>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<SecretGrant>,
}

/// `[plugin.grants]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    #[serde(default)]
    http: Vec<Spanned<String>>,
    #[serde(default)]
    files: Vec<Spanned<RawFileGrant>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    secrets: Vec<Spanned<RawSecretGrant>>,
}

/// A grant that cannot be given, where it is written: `at` is a byte offset into the
/// config file and `key` the path under the plugin (`grants.files[0].host`), for the
/// config to turn into file, line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantError {
    pub at: usize,
    pub key: String,
    pub message: String,
}

impl Grants {
    /// Validate `raw`; relative host directories are relative to `base`.
    pub fn parse(raw: &RawGrants, base: &Path) -> Result<Grants, GrantError> {
        let mut grants = Grants::default();
        for (i, pattern) in raw.http.iter().enumerate() {
            let grant = HttpGrant::parse(pattern.get_ref()).map_err(|message| GrantError {
                at: pattern.span().start,
                key: format!("grants.http[{i}]"),
                message,
            })?;
            grants.http.push(grant);
        }
        for (i, file) in raw.files.iter().enumerate() {
            let grant =
                files::parse(file.get_ref(), base, &grants.files).map_err(|(field, message)| {
                    GrantError {
                        at: file.span().start,
                        key: format!("grants.files[{i}].{field}"),
                        message,
                    }
                })?;
            grants.files.push(grant);
        }
        for (name, value) in &raw.env {
            env::check(name.get_ref(), value).map_err(|message| GrantError {
                at: name.span().start,
                key: format!("grants.env.{}", name.get_ref()),
                message,
            })?;
            grants.env.insert(name.get_ref().clone(), value.clone());
        }
        for (i, secret) in raw.secrets.iter().enumerate() {
            let at = secret.span().start;
            let grant =
                SecretGrant::parse(secret.get_ref(), at, &grants.http).map_err(|message| {
                    GrantError {
                        at,
                        key: format!("grants.secrets[{i}]"),
                        message,
                    }
                })?;
            grants.secrets.push(grant);
        }
        Ok(grants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, base: &Path) -> Result<Grants, GrantError> {
        let raw: RawGrants = toml::from_str(text).unwrap();
        Grants::parse(&raw, base)
    }

    #[test]
    fn each_capability_parses_and_errors_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("notes")).unwrap();
        let ok = parse(
            r#"
http = ["https://api.example.com"]
files = [{ host = "notes", guest = "/notes/", mode = "ro" }]
env = { REGION = "eu" }
secrets = [{ name = "api_token", header = "authorization", hosts = ["api.example.com"] }]
"#,
            dir.path(),
        )
        .unwrap();
        assert_eq!(ok.files[0].guest, "/notes");
        assert!(!ok.files[0].writable);
        assert_eq!(ok.env["REGION"], "eu");
        assert_eq!(ok.secrets[0].secret, "api_token");

        for (text, key, needle) in [
            (r#"http = ["ftp://x"]"#, "grants.http[0]", ""),
            (
                r#"files = [{ host = "missing", guest = "/m", mode = "rw" }]"#,
                "grants.files[0].host",
                "cannot use directory",
            ),
            (
                r#"files = [{ host = "notes", guest = "/a/../b", mode = "rw" }]"#,
                "grants.files[0].guest",
                "without `.` or `..`",
            ),
            (
                r#"files = [{ host = "notes", guest = "/n", mode = "ro" }, { host = "notes", guest = "/n/", mode = "rw" }]"#,
                "grants.files[1].guest",
                "granted twice",
            ),
            (r#"env = { "A=B" = "x" }"#, "grants.env.A=B", "invalid"),
            (
                r#"secrets = [{ name = "t", header = "x-key", hosts = ["other.example"] }]"#,
                "grants.secrets[0]",
                "not reachable",
            ),
        ] {
            let e = parse(text, dir.path()).expect_err(text);
            assert_eq!(e.key, key, "{text}");
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
    }
}
