//! `HEAD`: the last durable record of the log, kept beside it so that records deleted
//! from the end are noticed, and whether the writer stopped cleanly.
//!
//! It names only records already fsynced (so after a crash it may lag the log, never
//! lead it), it is itself fsynced before it replaces the old one, and opening the log
//! checks the log against it. An attacker who can write the directory can rewrite it
//! too: the signed checkpoints and the witness are what such an attacker cannot forge.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The last durable record when this was written.
    pub seq: u64,
    pub hash: String,
    /// Every run in flight when this was written started at or after this record: after
    /// a crash, the runs it cut off are found by reading the log from here.
    pub open_from: u64,
    /// The writer stopped cleanly (everything it took is in the log, nothing in flight).
    pub clean: bool,
    pub ts_ms: u64,
}

/// `HEAD` in `dir`: `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<Head>, String> {
    let path = dir.join("HEAD");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if let Ok(head) = serde_json::from_str::<Head>(&text) {
        return Ok(Some(head));
    }
    // Written by an older warden: `<seq> <hash>`, at a clean stop or not (unknown, so
    // not clean: recovery reads the log after it).
    let legacy = text.trim().split_once(' ').and_then(|(seq, hash)| {
        let seq = seq.parse::<u64>().ok()?;
        (hash.len() == 64).then(|| Head {
            seq,
            hash: hash.to_string(),
            open_from: seq + 1,
            clean: false,
            ts_ms: 0,
        })
    });
    legacy
        .map(Some)
        .ok_or_else(|| format!("{} is not a warden audit head", path.display()))
}

/// Replace `HEAD` in `dir`: written to a temporary file, fsynced, renamed over.
pub fn write(dir: &Path, head: &Head) -> std::io::Result<()> {
    let tmp = dir.join("HEAD.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    let mut text = serde_json::to_vec(head).map_err(std::io::Error::other)?;
    text.push(b'\n');
    file.write_all(&text)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, dir.join("HEAD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trips_and_reads_the_old_format() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        let head = Head {
            seq: 4,
            hash: "ab".repeat(32),
            open_from: 3,
            clean: false,
            ts_ms: 9,
        };
        write(dir.path(), &head).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(head)));
        std::fs::write(dir.path().join("HEAD"), format!("12 {}\n", "cd".repeat(32))).unwrap();
        assert_eq!(read(dir.path()).unwrap().map(|h| h.seq), Some(12));
        std::fs::write(dir.path().join("HEAD"), "garbage").unwrap();
        assert!(read(dir.path()).is_err());
    }
}
