//! Directories: the `files` grant (`{ host, guest, mode }`), its validation and the
//! preopens it becomes in a call's WASI context.
//!
//! A plugin sees only the granted directories, at the guest paths the operator chose,
//! read-only unless `mode = "rw"`; WASI's preopens keep every path inside them
//! (`..` and symlinks out are refused by wasmtime-wasi). It must never preopen
//! anything not granted. `config` separately refuses a grant over warden's own state.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// A granted directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGrant {
    /// Absolute, canonical host directory.
    pub host: PathBuf,
    /// Absolute path the guest sees.
    pub guest: String,
    pub writable: bool,
}

/// One `files` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileGrant {
    host: String,
    guest: String,
    mode: Mode,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Ro,
    Rw,
}

/// Validate one entry against the ones before it; an error names the field.
pub(crate) fn parse(
    raw: &RawFileGrant,
    base: &Path,
    before: &[FileGrant],
) -> Result<FileGrant, (&'static str, String)> {
    let host = base.join(&raw.host);
    let host = host.canonicalize().map_err(|e| {
        (
            "host",
            format!("cannot use directory {}: {e}", host.display()),
        )
    })?;
    if !host.is_dir() {
        return Err(("host", format!("{} is not a directory", host.display())));
    }
    let guest = raw.guest.trim_end_matches('/');
    if !raw.guest.starts_with('/') || guest.split('/').any(|c| c == ".." || c == ".") {
        return Err((
            "guest",
            format!(
                "must be an absolute path without `.` or `..`, got {:?}",
                raw.guest
            ),
        ));
    }
    let guest = if guest.is_empty() {
        "/".to_string()
    } else {
        guest.to_string()
    };
    if before.iter().any(|g| g.guest == guest) {
        return Err(("guest", format!("{guest} is granted twice")));
    }
    Ok(FileGrant {
        host,
        guest,
        writable: matches!(raw.mode, Mode::Rw),
    })
}

/// Preopen every granted directory in `wasi` (and nothing else).
pub fn preopen(grants: &[FileGrant], wasi: &mut WasiCtxBuilder) -> anyhow::Result<()> {
    for dir in grants {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("opening granted directory {}", dir.host.display()))?;
    }
    Ok(())
}
