//! Project tasks, run through cargo aliases (`.cargo/config.toml`):
//!
//! - `cargo guests`: build every component under `plugins/` and `policies/` (examples
//!   and test fixtures) for `wasm32-wasip2` into `target/guests/wasm32-wasip2/guest/`.
//!
//! - `cargo xtask langs`: build the Python and JavaScript components (see `langs.rs`).
//!
//! It adds the `wasm32-wasip2` target when the toolchain lacks it (rustup installs the
//! targets `rust-toolchain.toml` lists only with the toolchain itself), and builds the
//! `no_std` ("lean") components in a cargo run of their own: built with the others,
//! cargo would switch on `std` in the dependencies they share.

mod langs;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TARGET: &str = "wasm32-wasip2";

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "guests" => guests(),
        "langs" => langs::langs(),
        _ => Err("usage: cargo xtask guests (alias: cargo guests) | cargo xtask langs".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::from(2)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// A guest crate: its package name and whether it is a lean (`no_std`) one.
struct Guest {
    name: String,
    lean: bool,
}

fn guest_crates() -> Result<Vec<Guest>, String> {
    let mut out = Vec::new();
    for group in ["plugins", "policies"] {
        let dir = root().join(group);
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut manifests: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("Cargo.toml"))
            .filter(|p| p.is_file())
            .collect();
        manifests.sort();
        for manifest in manifests {
            let text = std::fs::read_to_string(&manifest)
                .map_err(|e| format!("{}: {e}", manifest.display()))?;
            let name = text
                .lines()
                .find_map(|l| {
                    let l = l.trim();
                    let v = l.strip_prefix("name")?.trim_start().strip_prefix('=')?;
                    Some(v.trim().trim_matches('"').to_string())
                })
                .ok_or_else(|| format!("{}: no package name", manifest.display()))?;
            let lean = text.contains("[package.metadata.warden]")
                && text
                    .lines()
                    .any(|l| l.trim().replace(' ', "") == "lean=true");
            out.push(Guest { name, lean });
        }
    }
    Ok(out)
}

/// Is the wasm target installed for the toolchain cargo runs?
fn has_target() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .current_dir(root())
        .output()
        .is_ok_and(|o| {
            o.status.success() && Path::new(String::from_utf8_lossy(&o.stdout).trim()).is_dir()
        })
}

fn ensure_target() -> Result<(), String> {
    if has_target() {
        return Ok(());
    }
    eprintln!(
        "xtask guests: the {TARGET} target is missing; adding it (rustup target add {TARGET})"
    );
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .current_dir(root())
        .status();
    match added {
        Ok(s) if s.success() && has_target() => Ok(()),
        _ => Err(format!(
            "the {TARGET} target is missing and could not be added; run `rustup target add {TARGET}`"
        )),
    }
}

fn guests() -> Result<(), String> {
    ensure_target()?;
    let crates = guest_crates()?;
    let (lean, full): (Vec<&Guest>, Vec<&Guest>) = crates.iter().partition(|g| g.lean);
    for group in [full, lean] {
        if group.is_empty() {
            continue;
        }
        let mut build = cargo();
        build
            .args([
                "build",
                "--target",
                TARGET,
                "--profile",
                "guest",
                "--target-dir",
            ])
            .arg(root().join("target/guests"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS");
        for g in &group {
            build.args(["-p", &g.name]);
        }
        let status = build.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err("building the guest components failed".into());
        }
    }
    Ok(())
}
