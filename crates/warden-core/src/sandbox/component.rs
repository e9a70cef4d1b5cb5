//! Loading a component file: read, identify, pin-check, compile (through the cache)
//! and check it against the world it is meant to implement.
//!
//! Owns the "is this the right kind of component" question and its error messages.
//! It must never instantiate anything: that happens only with a sandbox.

use std::path::Path;

use thiserror::Error;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::sandbox::cache::CompileCache;
use crate::util::sha256_hex;

/// The warden WIT package version this host implements.
pub const PACKAGE: &str = "warden:plugin";
pub const PACKAGE_VERSION: &str = "0.1.0";

/// Which warden world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Tool,
    Policy,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::Tool => "tool",
            World::Policy => "policy",
        }
    }

    fn exports(self) -> &'static [&'static str] {
        match self {
            World::Tool => &["describe", "invoke"],
            World::Policy => &["evaluate"],
        }
    }

    /// Interfaces of our own package a component of this world may import.
    fn own_imports(self) -> &'static [&'static str] {
        match self {
            World::Tool => &["types", "log", "host"],
            World::Policy => &["types", "log"],
        }
    }

    /// Does this world's linker provide `import` (a WASI or warden interface name)?
    fn provides(self, import: &str) -> bool {
        let Some((package, rest)) = import.split_once('/') else {
            return false;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        match package {
            "wasi:http" => self == World::Tool && version.starts_with("0.2"),
            "wasi:io" | "wasi:clocks" | "wasi:random" | "wasi:cli" | "wasi:filesystem"
            | "wasi:sockets" => version.starts_with("0.2"),
            PACKAGE => self.own_imports().contains(&interface) && version == PACKAGE_VERSION,
            _ => false,
        }
    }
}

#[derive(Debug, Error)]
pub enum ComponentError {
    // Not `source`: the message says it already, and a source would print it twice.
    #[error("{path}: cannot read: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: not a WebAssembly file (no `\\0asm` header)")]
    NotWasm { path: String },
    #[error(
        "{path}: is a core WebAssembly module, not a component; build it with `cargo build --target wasm32-wasip2` (a cdylib), or wrap it with `wasm-tools component new`"
    )]
    CoreModule { path: String },
    #[error("{path}: sha256 is {actual}, but the config pins {expected}; refusing to load")]
    DigestMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: invalid component: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path}: does not implement the warden `{world}` world ({PACKAGE}@{PACKAGE_VERSION}): {problems}"
    )]
    WrongWorld {
        path: String,
        world: &'static str,
        problems: String,
    },
}

/// A compiled component and what is known about it.
pub struct Loaded {
    pub component: Component,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    pub imports: Vec<String>,
    /// Exported functions: what the world is judged by.
    pub exports: Vec<String>,
    /// Exported interfaces, modules and types. The host never calls them; toolchains add
    /// their own (componentize-py exports an `exports` interface it uses at build time).
    pub other_exports: Vec<String>,
}

impl Loaded {
    /// The warden world this component's exports name, if any.
    pub fn world(&self) -> Option<World> {
        [World::Tool, World::Policy].into_iter().find(|w| {
            w.exports()
                .iter()
                .all(|e| self.exports.iter().any(|x| x == e))
        })
    }

    /// Check the component against `world`, naming everything missing or extra.
    pub fn expect_world(&self, path: &Path, world: World) -> Result<(), ComponentError> {
        let mut problems = Vec::new();
        if let Some(other) = self.world().filter(|w| *w != world) {
            problems.push(format!("it is a {} component", other.name()));
        }
        for export in world.exports() {
            if !self.exports.iter().any(|e| e == export) {
                problems.push(format!("missing export `{export}`"));
            }
        }
        for export in &self.exports {
            if !world.exports().contains(&export.as_str()) {
                problems.push(format!("unexpected export `{export}`"));
            }
        }
        for import in &self.imports {
            if !world.provides(import) {
                problems.push(format!(
                    "imports `{import}`, which warden does not provide to a {}",
                    world.name()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ComponentError::WrongWorld {
                path: path.display().to_string(),
                world: world.name(),
                problems: problems.join("; "),
            })
        }
    }
}

/// Read, identify, pin-check and compile the component at `path`.
pub fn load(
    engine: &Engine,
    cache: &CompileCache,
    path: &Path,
    pin: Option<&str>,
) -> Result<Loaded, ComponentError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| ComponentError::Read {
        path: shown.clone(),
        error,
    })?;
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ComponentError::NotWasm { path: shown });
    }
    // Bytes 4..8: version and layer; layer 0 is a core module, 1 a component.
    if bytes[6..8] == [0, 0] {
        return Err(ComponentError::CoreModule { path: shown });
    }
    let digest = sha256_hex(&bytes);
    if let Some(expected) = pin
        && expected != digest
    {
        return Err(ComponentError::DigestMismatch {
            path: shown,
            expected: expected.to_string(),
            actual: digest,
        });
    }
    let component =
        cache
            .component(engine, &bytes, &digest)
            .map_err(|e| ComponentError::Invalid {
                path: shown.clone(),
                message: format!("{e:#}"),
            })?;

    let ty = component.component_type();
    let imports = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let (mut exports, mut other_exports) = (Vec::new(), Vec::new());
    for (name, item) in ty.exports(engine) {
        match item.ty {
            ComponentItem::ComponentFunc(_) => exports.push(name.to_string()),
            _ => other_exports.push(name.to_string()),
        }
    }
    Ok(Loaded {
        component,
        digest: format!("sha256:{digest}"),
        imports,
        exports,
        other_exports,
    })
}
