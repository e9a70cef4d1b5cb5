//! Integration tests: the real `warden` binary and real compiled components.

#[path = "warden/approvals.rs"]
mod approvals;
#[path = "warden/audit.rs"]
mod audit;
#[path = "warden/budgets.rs"]
mod budgets;
#[path = "warden/cli.rs"]
mod cli;
#[path = "warden/config.rs"]
mod config;
#[path = "warden/console.rs"]
mod console;
#[path = "warden/files.rs"]
mod files;
#[path = "warden/hosts.rs"]
mod hosts;
#[path = "warden/isolation.rs"]
mod isolation;
#[path = "warden/languages.rs"]
mod languages;
#[path = "warden/limits.rs"]
mod limits;
#[path = "warden/mcp.rs"]
mod mcp;
#[path = "warden/network.rs"]
mod network;
#[path = "warden/policies.rs"]
mod policies;
#[path = "warden/recording.rs"]
mod recording;
#[path = "warden/scaffold.rs"]
mod scaffold;
#[path = "warden/schedules.rs"]
mod schedules;
#[path = "warden/secrets.rs"]
mod secrets;
#[path = "warden/shared_store.rs"]
mod shared_store;
mod support;
#[path = "warden/triggers.rs"]
mod triggers;
#[path = "warden/upstreams.rs"]
mod upstreams;

pub(crate) use limits::assert_failed;
pub(crate) use network::assert_http_denied;
pub(crate) use recording::{audit_env, audit_records};
pub(crate) use secrets::{HEADER_GRANT, OTHER_SECRET, SECRET, assert_no_secret, secret_env};

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Env, Listener, wasm};
use warden_core::call::{CallRequest, Failure, Outcome};
use warden_core::config::Config;
use warden_core::runtime::Runtime;

const OK: i32 = 0;
const TOOL_ERROR: i32 = 1;
const USAGE: i32 = 2;
const DENIED: i32 = 3;
const HELD: i32 = 4;
const NOT_RECORDED: i32 = 5;

/// A config with the hostile fixture, granted `/data` (rw), `/ro` (ro), HTTP to
/// `granted_port` and one env var, plus `text-stats` for control calls.
pub(crate) fn hostile_env(granted_port: u16, limits: &str) -> Env {
    let env = Env::new("");
    std::fs::create_dir_all(env.path().join("granted")).unwrap();
    std::fs::create_dir_all(env.path().join("readonly")).unwrap();
    std::fs::write(env.path().join("readonly/inside.txt"), "inside").unwrap();
    std::fs::write(env.path().join("outside.txt"), "TOP-SECRET-OUTSIDE").unwrap();
    env.write_config(&format!(
        r#"
[[plugin]]
id = "hostile"
component = "{{hostile}}"
[plugin.grants]
files = [{{ host = "granted", guest = "/data", mode = "rw" }}, {{ host = "readonly", guest = "/ro", mode = "ro" }}]
http = ["http://127.0.0.1:{granted_port}"]
env = {{ GRANTED = "yes" }}
[plugin.limits]
{limits}

[[plugin]]
id = "text-stats"
component = "{{text-stats}}"
"#
    ));
    env
}

const HOSTILE_LIMITS: &str =
    "memory_mb = 32\ntimeout_ms = 500\nmax_output_kb = 64\nmax_log_kb = 16";

pub(crate) fn status(report: &Value) -> &str {
    report["status"].as_str().unwrap_or("<none>")
}
