//! On-disk cache of compiled components, keyed by component digest and engine
//! configuration, so a restart does not recompile.
//!
//! Owns `<data_dir>/cache/` (or the configured cache dir, which several configs of one
//! user may share). Loading a cached artifact maps native code into the process, so an
//! artifact is loaded only from a directory private to this user (owned by it, writable
//! by nobody else) and only if the file is too: anything else is compiled afresh (and a
//! file that is not private is replaced). An entry that fails to load (truncated, from
//! another wasmtime) is recompiled and replaced, never trusted.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// `Hasher` over SHA-256, so the engine's compatibility hash is stable across runs.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

pub struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl CompileCache {
    /// A cache under `dir`; `None` compiles every time (no cache dir could be found).
    pub fn new(engine: &Engine, dir: Option<&Path>) -> CompileCache {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        CompileCache {
            dir: dir.map(Path::to_path_buf),
            engine_key,
        }
    }

    /// Compile `bytes` (whose SHA-256 is `digest`, hex), or load the cached result.
    pub fn component(&self, engine: &Engine, bytes: &[u8], digest: &str) -> Result<Component> {
        let Some(dir) = &self.dir else {
            return Ok(Component::new(engine, bytes)?);
        };
        if let Err(why) = private(dir, true) {
            tracing::warn!(dir = %dir.display(), "not using the compile cache: {why}");
            return Ok(Component::new(engine, bytes)?);
        }
        let path = dir.join(format!("{digest}-{}.cwasm", self.engine_key));
        let trusted = match private(&path, false) {
            Ok(()) => true,
            Err(why) => {
                if path.exists() {
                    tracing::warn!(path = %path.display(), "recompiling a cache entry: {why}");
                }
                false
            }
        };
        if trusted {
            // SAFETY: the file was written by `store` below from this engine's own
            // `precompile_component`, under a name that binds the source digest and the
            // engine configuration; the data dir is trusted like the binary itself.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    prefault(&component);
                    return Ok(component);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "recompiling unusable cache entry: {e:#}")
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(e) = store(dir, &path, &compiled) {
            tracing::warn!(path = %path.display(), "cannot write compile cache: {e:#}");
        }
        // SAFETY: `compiled` was produced just now by this engine.
        Ok(unsafe { Component::deserialize(engine, &compiled) }?)
    }
}

/// Map a component's compiled code (loaded from the cache: a file mapping the kernel
/// fills page by page as code runs) now, at load, so a server's first call does not
/// take those page faults: on this VM they were most of a first call's 0.7 ms over a
/// warm one's 0.06 ms. Best effort: a kernel without `MADV_POPULATE_READ` (before 5.14)
/// leaves it lazy.
fn prefault(component: &Component) {
    const MADV_POPULATE_READ: libc::c_int = 22;
    let range = component.image_range();
    // SAFETY: `sysconf` has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (range.start as usize) & !(page - 1);
    let len = (range.end as usize).saturating_sub(start);
    if len == 0 {
        return;
    }
    // SAFETY: [start, start + len) lies within the mapping of `component`'s image (the
    // start rounded down to its page, which the same mapping holds), alive while
    // `component` is; MADV_POPULATE_READ only reads it in, changing no contents.
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, len, MADV_POPULATE_READ) };
    // Likewise the linear memories' copy-on-write images, else made at first use.
    let _ = component.initialize_copy_on_write_image();
}

/// Is `path` (a directory when `dir`) this user's alone: owned by it, not a symlink,
/// writable by nobody else? A directory that does not exist yet is created private.
fn private(path: &Path, dir: bool) -> std::result::Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if dir && !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() {
        return Err("it is a symlink".into());
    }
    if meta.uid() != me {
        return Err(format!(
            "it is owned by uid {}, not this user ({me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "others may write it (mode {:o}); `chmod go-w` it",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

/// Write atomically (a crash leaves either no entry or a whole one), private to this user.
fn store(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {} in {}", tmp.display(), dir.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
