//! warden-core: everything a governed call is made of, with no HTTP server and no CLI.
//!
//! Read it down the path of a call:
//! - `call`: what a call is (request, report, outcome, failure, tier, decisions), plain
//!   data every layer shares;
//! - `config`: `warden.toml`, parsed strictly, every error located;
//! - `grants`: what a plugin may reach (HTTP and its secrets, files, env), one module per
//!   capability with its parsing and its enforcement;
//! - `upstream`: MCP servers an operator already runs, their tools' definitions and
//!   digests, one call through them;
//! - `sandbox`: the engine, components and their cache, the per-call store state, limits,
//!   host-call recording, plugins (components or upstreams) and policies;
//! - `governance`: approvals, their notices and signed links;
//! - `store`: the audit log, run history, the embedded database's migrations;
//! - `runtime`: a loaded config and the governed call itself (policies, approval, the
//!   sandboxed run), the records it leaves, the approval queue's driver, crash recovery;
//! - `automation`: schedules and signed webhook triggers, run through the governed path;
//! - `vault` and `tokens`: secrets at rest, and who a bearer token speaks for;
//! - `util` and `bindings`: the clock, digests and bounded text; the WIT's generated types.
//!
//! The modules form layers (`util`, `bindings`, `call`, `cron`, `store`, `vault`,
//! `tokens`, `grants`, `config`, `upstream`, `sandbox`, `governance`, `runtime`, `automation`,
//! bottom to top), each using only those below it; a test below keeps it so.

pub mod automation;
pub mod bindings;
pub mod call;
pub mod config;
pub mod cron;
pub mod governance;
pub mod grants;
pub mod runtime;
pub mod sandbox;
pub mod store;
pub mod tokens;
pub mod upstream;
pub mod util;
pub mod vault;

pub use call::{CallError, CallReport, Outcome};
pub use config::Config;
pub use runtime::Runtime;
pub use util::now_ms;

#[cfg(test)]
mod layers {
    //! The crate's modules form layers, each using only the ones below it, so that the
    //! path of a call reads one way and no module needs one that needs it back.

    use std::path::{Path, PathBuf};

    /// Bottom to top.
    const LAYERS: &[&str] = &[
        "util",
        "bindings",
        "call",
        "cron",
        "store",
        "vault",
        "tokens",
        "grants",
        "config",
        "upstream",
        "sandbox",
        "governance",
        "runtime",
        "automation",
    ];

    fn sources(module: &str) -> Vec<PathBuf> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            return vec![file];
        }
        let mut files = Vec::new();
        let mut dirs = vec![src.join(module)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        files
    }

    #[test]
    fn no_module_uses_one_above_it() {
        for (level, module) in LAYERS.iter().enumerate() {
            let files = sources(module);
            assert!(!files.is_empty(), "no sources for {module}");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for above in &LAYERS[level + 1..] {
                    assert!(
                        !text.contains(&format!("crate::{above}::")),
                        "{} ({module}) uses crate::{above}, a layer above it",
                        file.display()
                    );
                }
            }
        }
    }
}
