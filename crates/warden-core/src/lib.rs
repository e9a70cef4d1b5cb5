//! warden: a WebAssembly policy-and-plugin runtime for governed AI agent tools.
//!
//! The path of one governed call (see `call`): resolve the tool, validate its input,
//! evaluate every policy in scope (`policy`), then run the tool in a fresh sandbox
//! (`sandbox`, `plugin`) with only the grants the operator configured (`config`).

pub mod api;
pub mod approval_pages;
pub mod approvals;
pub mod audit;
pub mod auth_failures;
pub mod bindings;
pub mod cache;
pub mod call;
pub mod component;
pub mod config;
pub mod db;
pub mod driver;
pub mod egress;
pub mod engine;
pub mod hostcalls;
pub mod interfaces;
pub mod limits;
pub mod links;
pub mod mcp;
pub mod metrics;
pub mod notify;
pub mod plugin;
pub mod policy;
pub mod record;
pub mod recovery;
pub mod runs;
pub mod runtime;
pub mod sandbox;
pub mod secrets;
pub mod serve;
pub mod stdio;
pub mod tokens;
pub mod vault;

pub use call::{CallError, CallReport, Outcome};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
pub use config::Config;
pub use runtime::Runtime;
