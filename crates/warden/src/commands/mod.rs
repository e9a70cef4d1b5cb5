//! One module per `warden` subcommand, each with its arguments and its `run`; and
//! `operator`, who a command speaks for (its token) and sending a change through the
//! running server.
//!
//! Commands print through `crate::output` and return an exit code from `crate::exit`;
//! errors carry context and are reported once, by `main`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use warden_core::config::Config;
use warden_core::runtime::Runtime;

pub mod approvals;
pub mod audit;
pub mod budgets;
pub mod call;
pub mod check;
pub mod inspect;
pub mod new;
mod operator;
pub mod policy;
pub mod runs;
pub mod schedules;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod tokens;
pub mod tools;
pub mod upstreams;

/// Load the config and everything it names, holding the audit log: for commands that
/// record.
pub async fn load(config: &Path) -> Result<Runtime> {
    let config = Config::load(config)?;
    Ok(Runtime::load(config).await?)
}

/// The components only: for commands that change nothing (and so never wait for the
/// audit log's lock, held by a running server).
pub async fn look(config: &Path) -> Result<Runtime> {
    let config = Config::load(config)?;
    Ok(Runtime::load_read_only(config).await?)
}

/// Where commands that run without a config (`inspect`, `policy test`) keep compiled
/// components: `WARDEN_CACHE_DIR`, else `$XDG_CACHE_HOME/warden`, else
/// `~/.cache/warden`; none (compile every time) when none of them is set. An 18 MB
/// Python component takes seconds to compile and milliseconds to load from here.
pub fn user_cache_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("WARDEN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("warden")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/warden")))
}
