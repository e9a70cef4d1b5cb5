//! Which process holds a claim: a token and a lock file the kernel releases when the
//! process dies, so a claim whose process is gone can be told from a live one
//! (never by pid, which restarts and pid reuse make lie).

use std::fs::File;
use std::path::{Path, PathBuf};

/// This process, as claims name it: a token and a lock file (`owners/<token>.lock`)
/// it holds until it exits. The kernel drops the lock when the process dies, however
/// it dies, so another process can tell a live claim from an orphaned one.
pub(super) struct Owner {
    pub(super) token: String,
    dir: PathBuf,
    _lock: File,
}

impl Owner {
    pub(super) fn take(dir: &Path) -> std::io::Result<Owner> {
        std::fs::create_dir_all(dir)?;
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
        let token = hex::encode(raw);
        let lock = File::create(dir.join(format!("{token}.lock")))?;
        lock.lock()?;
        Ok(Owner {
            token,
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Is the process that took `token` gone? (Its lock file is free or missing.)
    pub(super) fn is_gone(&self, token: &str) -> bool {
        if token == self.token {
            return false;
        }
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            // A pid from an older warden, or garbage: no lock can prove it alive.
            return true;
        }
        let path = self.dir.join(format!("{token}.lock"));
        match File::open(&path) {
            Err(_) => true,
            Ok(f) => match f.try_lock() {
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                    true
                }
                Err(_) => false,
            },
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(format!("{}.lock", self.token)));
    }
}
