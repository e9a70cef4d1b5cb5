//! `cargo xtask langs`: build the Python and JavaScript components (every `guest.toml`
//! under `plugins/` and `policies/`) into `target/guests/wasm32-wasip2/guest/`, beside
//! the Rust ones.
//!
//! The toolchains come from the package registries at pinned versions
//! (`sdk/python/requirements-build.txt`, `sdk/js/toolchain/package-lock.json`) into
//! `target/guest-toolchains/`, installed once and reinstalled only when a pin changes.
//! A component is rebuilt only when a digest of its inputs (its sources, the SDK, the
//! WIT and the pins) changed. Needs Python 3 with venv and Node.js with npm.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::root;

const PYTHON_PINS: &str = "sdk/python/requirements-build.txt";
const NODE_PINS: &str = "sdk/js/toolchain";

/// A non-Rust component: where it is, its language and world.
struct LangGuest {
    dir: PathBuf,
    name: String,
    lang: String,
    world: String,
}

pub fn langs() -> Result<(), String> {
    let guests = lang_guests()?;
    let out_dir = root().join("target/guests/wasm32-wasip2/guest");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut python = None;
    let mut node = None;
    for guest in &guests {
        let out = out_dir.join(format!("{}.wasm", guest.name.replace('-', "_")));
        let stamp = out.with_extension("wasm.inputs");
        let digest = inputs_digest(guest)?;
        if out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == digest) {
            continue;
        }
        eprintln!("xtask langs: building {} ({})", guest.name, guest.lang);
        match guest.lang.as_str() {
            "python" => {
                let tools = match &python {
                    Some(p) => p,
                    None => python.insert(python_toolchain()?),
                };
                build_python(tools, guest, &out)?;
            }
            "js" => {
                let tools = match &node {
                    Some(n) => n,
                    None => node.insert(node_toolchain()?),
                };
                build_js(tools, guest, &out)?;
            }
            other => {
                return Err(format!(
                    "{}: unknown lang {other:?} (python or js)",
                    guest.dir.join("guest.toml").display()
                ));
            }
        }
        std::fs::write(&stamp, digest).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(())
}

fn lang_guests() -> Result<Vec<LangGuest>, String> {
    let mut out = Vec::new();
    for group in ["plugins", "policies"] {
        let dir = root().join(group);
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("guest.toml").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let manifest = dir.join("guest.toml");
            let text = std::fs::read_to_string(&manifest)
                .map_err(|e| format!("{}: {e}", manifest.display()))?;
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| {
                        let v = l.trim().strip_prefix(key)?.trim_start().strip_prefix('=')?;
                        Some(v.trim().trim_matches('"').to_string())
                    })
                    .ok_or_else(|| format!("{}: no `{key} = \"..\"`", manifest.display()))
            };
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(LangGuest {
                name,
                lang: field("lang")?,
                world: field("world")?,
                dir,
            });
        }
    }
    Ok(out)
}

/// FNV-1a over every input file's path and bytes: stable across runs and toolchains.
fn inputs_digest(guest: &LangGuest) -> Result<String, String> {
    let sdk = match guest.lang.as_str() {
        "python" => "sdk/python",
        _ => "sdk/js",
    };
    let mut files = Vec::new();
    for dir in [guest.dir.clone(), root().join(sdk), root().join("sdk/wit")] {
        collect(&dir, &mut files)?;
    }
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(guest.world.as_bytes());
    for file in files {
        feed(file.to_string_lossy().as_bytes());
        feed(&std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?);
    }
    Ok(format!("{hash:016x}"))
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let name = entry.file_name();
        if name == "__pycache__" || name == "node_modules" {
            continue;
        }
        if path.is_dir() {
            collect(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", command.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// `target/guest-toolchains/python`: a venv with the pinned componentize-py.
fn python_toolchain() -> Result<PathBuf, String> {
    let venv = root().join("target/guest-toolchains/python");
    let pins = std::fs::read_to_string(root().join(PYTHON_PINS))
        .map_err(|e| format!("{PYTHON_PINS}: {e}"))?;
    let marker = venv.join(".installed");
    let bin = venv.join("bin/componentize-py");
    if bin.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m == pins) {
        return Ok(bin);
    }
    eprintln!(
        "xtask langs: installing componentize-py into {}",
        venv.display()
    );
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv (Python 3 with the venv module is needed for the Python components)",
    )?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(root().join(PYTHON_PINS)),
        "pip install componentize-py",
    )?;
    std::fs::write(&marker, pins).map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(bin)
}

/// `target/guest-toolchains/node`: the pinned componentize-js and the build script.
fn node_toolchain() -> Result<PathBuf, String> {
    let dir = root().join("target/guest-toolchains/node");
    let pins_dir = root().join(NODE_PINS);
    let lock = std::fs::read_to_string(pins_dir.join("package-lock.json"))
        .map_err(|e| format!("{NODE_PINS}/package-lock.json: {e}"))?;
    let marker = dir.join(".installed");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for file in ["package.json", "package-lock.json", "build.mjs"] {
        std::fs::copy(pins_dir.join(file), dir.join(file))
            .map_err(|e| format!("{NODE_PINS}/{file}: {e}"))?;
    }
    if dir.join("node_modules").is_dir()
        && std::fs::read_to_string(&marker).is_ok_and(|m| m == lock)
    {
        return Ok(dir.join("build.mjs"));
    }
    eprintln!(
        "xtask langs: installing componentize-js into {}",
        dir.display()
    );
    run(
        Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir),
        "npm ci (Node.js with npm is needed for the JavaScript components)",
    )?;
    std::fs::write(&marker, lock).map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(dir.join("build.mjs"))
}

fn build_python(componentize_py: &Path, guest: &LangGuest, out: &Path) -> Result<(), String> {
    run(
        Command::new(componentize_py)
            .arg("-d")
            .arg(root().join("sdk/wit"))
            .arg("-w")
            .arg(format!("warden:sdk/{}@0.1.0", guest.world))
            .args(["componentize", "app", "-p"])
            .arg(&guest.dir)
            .arg("-p")
            .arg(root().join("sdk/python"))
            .arg("-o")
            .arg(out)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        &format!("componentize-py {}", guest.name),
    )
}

fn build_js(build_script: &Path, guest: &LangGuest, out: &Path) -> Result<(), String> {
    // componentize-js resolves `./warden.js` beside the source: stage both together.
    let stage = root().join("target/guest-build").join(&guest.name);
    std::fs::create_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    for dir in [root().join("sdk/js"), guest.dir.clone()] {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "js") {
                std::fs::copy(&path, stage.join(entry.file_name()))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
    }
    run(
        Command::new("node")
            .arg(build_script)
            .arg(stage.join("app.js"))
            .arg(root().join("sdk/wit"))
            .arg(format!("warden:sdk/{}@0.1.0", guest.world))
            .arg(out),
        &format!("componentize-js {}", guest.name),
    )
}
