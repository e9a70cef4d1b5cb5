//! The files of a log (`segment-NNNNNNNN.jsonl`, `LOCK`) and the shape of one line.
//!
//! The segment being written ends in a zero tail: the writer lays down zeros ahead of
//! its records so that a durable commit only overwrites blocks the file already has
//! (no size change for `fdatasync` to journal). The tail is cut when the segment is
//! left or the log closed cleanly; after a crash it stays. Every reader goes through
//! [`open_data`], which ends a segment at its last non-zero byte (a record never
//! contains a zero byte: JSON escapes control characters).
//!
//! A line is `{"seq":N,"prev":"<hash of N-1>",...fields...,"hash":"<sha256>"}`, where the
//! hash covers the exact bytes of the line up to `,"hash"` plus the closing `}`. Lines
//! are read here without a JSON parser: verifying a large log is mostly this.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_SUFFIX: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = HASH_SUFFIX.len() + 64 + 2;

/// Where the records of `file` end: after its last non-zero byte.
pub fn data_len(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut end = file.metadata()?.len();
    let mut chunk = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(i) = part.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// A segment opened for reading, and where its records end (see [`data_len`]).
pub fn open_data(path: &Path) -> std::io::Result<(File, u64)> {
    let file = File::open(path)?;
    let len = data_len(&file)?;
    Ok((file, len))
}

/// A segment's records, from its start, without its zero tail.
pub fn reader(path: &Path) -> std::io::Result<std::io::Take<File>> {
    let (file, len) = open_data(path)?;
    Ok(file.take(len))
}

pub fn segment_name(index: u64) -> String {
    format!("segment-{index:08}.jsonl")
}

/// Segment indexes present in `dir`, ascending.
pub fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("segment-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            && let Ok(n) = n.parse()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A line that has the shape of a record: its sequence number, the hash it links to,
/// the hash it carries, and whether that hash is the hash of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    pub seq: u64,
    pub prev: &'a str,
    pub hash: &'a str,
    /// The record's kind, when it is the first field (as warden writes it).
    pub kind: Option<&'a str>,
    pub hash_ok: bool,
}

/// Read `text` (one line, without its newline) as a record; `None` when it is not
/// shaped like one.
pub fn parse_line(text: &[u8]) -> Option<Line<'_>> {
    if text.len() < HASH_SUFFIX_LEN + 2 || !text.ends_with(b"\"}") {
        return None;
    }
    let cut = text.len() - HASH_SUFFIX_LEN;
    let hash = text[cut..].strip_prefix(HASH_SUFFIX)?;
    let hash = std::str::from_utf8(&hash[..64]).ok()?;
    let rest = text.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let seq: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"prev\":\"")?;
    if rest.len() < 65 || rest[64] != b'"' {
        return None;
    }
    let prev = std::str::from_utf8(&rest[..64]).ok()?;
    let kind = rest[65..].strip_prefix(b",\"kind\":\"").and_then(|k| {
        let end = k.iter().position(|&b| b == b'"' || b == b'\\')?;
        std::str::from_utf8(&k[..end]).ok()
    });
    let digest = Sha256::new()
        .chain_update(&text[..cut])
        .chain_update(b"}")
        .finalize();
    let mut hex = [0u8; 64];
    hex::encode_to_slice(digest, &mut hex).ok()?;
    Some(Line {
        seq,
        prev,
        hash,
        kind,
        hash_ok: hex == hash.as_bytes(),
    })
}

/// The end of a segment as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// No bytes at all.
    Empty,
    /// The last whole line (without its newline) and the file's length.
    Line(Vec<u8>, u64),
    /// The file does not end in a newline: the bytes after the last one are a record
    /// cut short (`whole` is the length up to and including the last newline).
    Torn { whole: u64, len: u64 },
}

/// How the segment at `path` ends.
pub fn tail(path: &Path) -> std::io::Result<Tail> {
    let (mut file, len) = open_data(path)?;
    if len == 0 {
        return Ok(Tail::Empty);
    }
    let mut lines = Backwards::new(&mut file, len)?;
    let last = lines.next_line()?;
    match last {
        Some((start, line)) if start + line.len() as u64 + 1 == len => Ok(Tail::Line(line, len)),
        Some((start, line)) => Ok(Tail::Torn {
            whole: start + line.len() as u64 + 1,
            len,
        }),
        None => Ok(Tail::Torn { whole: 0, len }),
    }
}

/// Reads the whole lines of a file from its end towards its start.
pub struct Backwards<'f> {
    file: &'f mut File,
    /// Bytes before `pos` not read yet.
    pos: u64,
    /// Read but not yet returned: the bytes at `pos..pos + buf.len()`.
    buf: Vec<u8>,
    /// Whether the bytes after the buffer's last newline (the end of the file, at the
    /// start) have been set aside as an unterminated tail.
    started: bool,
}

const BACK_CHUNK: u64 = 64 << 10;

impl<'f> Backwards<'f> {
    pub fn new(file: &'f mut File, len: u64) -> std::io::Result<Backwards<'f>> {
        Ok(Backwards {
            file,
            pos: len,
            buf: Vec::new(),
            started: false,
        })
    }

    fn fill(&mut self) -> std::io::Result<bool> {
        if self.pos == 0 {
            return Ok(false);
        }
        let start = self.pos.saturating_sub(BACK_CHUNK);
        let mut chunk = vec![0u8; (self.pos - start) as usize];
        self.file.seek(SeekFrom::Start(start))?;
        self.file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&self.buf);
        self.buf = chunk;
        self.pos = start;
        Ok(true)
    }

    /// The next whole line going backwards, with its starting offset; `None` at the
    /// start of the file. Bytes after the file's last newline (a torn tail) are skipped:
    /// [`tail`] tells them apart by the first line's end.
    pub fn next_line(&mut self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        if !self.started {
            self.started = true;
            self.fill()?;
            // A terminated file's final newline ends the last line; drop it so the
            // search below finds the newline *before* the last line.
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            } else {
                // Unterminated: find where the torn tail starts and skip it.
                loop {
                    if let Some(i) = self.buf.iter().rposition(|&b| b == b'\n') {
                        self.buf.truncate(i);
                        break;
                    }
                    if !self.fill()? {
                        self.buf.clear();
                        return Ok(None);
                    }
                }
            }
        }
        loop {
            if let Some(i) = self.buf.iter().rposition(|&b| b == b'\n') {
                let line = self.buf.split_off(i + 1);
                self.buf.pop();
                return Ok(Some((self.pos + i as u64 + 1, line)));
            }
            if !self.fill()? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                return Ok(Some((0, line)));
            }
        }
    }
}

/// The log's last record (seq, hash), from the newest segment that has one. A torn
/// tail is an error: the log must be repaired before anything is added to it.
pub fn last_record(dir: &Path, indexes: &[u64]) -> Result<Option<(u64, String)>, LastError> {
    for &index in indexes.iter().rev() {
        let path = dir.join(segment_name(index));
        match tail(&path).map_err(|e| LastError::Io(path.clone(), e))? {
            Tail::Empty => continue,
            Tail::Torn { whole, len } => return Err(LastError::Torn { path, whole, len }),
            Tail::Line(line, _) => {
                let parsed =
                    parse_line(&line).ok_or_else(|| LastError::NotARecord(path.clone()))?;
                return Ok(Some((parsed.seq, parsed.hash.to_string())));
            }
        }
    }
    Ok(None)
}

#[derive(Debug)]
pub enum LastError {
    Io(PathBuf, std::io::Error),
    Torn { path: PathBuf, whole: u64, len: u64 },
    NotARecord(PathBuf),
}

/// The hash of record `seq`, searched from the newest segment backwards (what is
/// looked up is almost always near the end). `None` when the log has no such record.
pub fn hash_of(dir: &Path, indexes: &[u64], seq: u64) -> std::io::Result<Option<String>> {
    for &index in indexes.iter().rev() {
        let (mut file, len) = open_data(&dir.join(segment_name(index)))?;
        let mut lines = Backwards::new(&mut file, len)?;
        while let Some((_, line)) = lines.next_line()? {
            let Some(parsed) = parse_line(&line) else {
                continue;
            };
            if parsed.seq == seq {
                return Ok(Some(parsed.hash.to_string()));
            }
            if parsed.seq < seq {
                return Ok(None);
            }
        }
    }
    Ok(None)
}

/// The newest line (whole, parsed by the caller) for which `wanted` says yes, looking
/// back through at most `segments` segments.
pub fn last_line_where(
    dir: &Path,
    indexes: &[u64],
    segments: usize,
    wanted: impl Fn(&Line<'_>) -> bool,
) -> std::io::Result<Option<Vec<u8>>> {
    for &index in indexes.iter().rev().take(segments) {
        let (mut file, len) = open_data(&dir.join(segment_name(index)))?;
        let mut lines = Backwards::new(&mut file, len)?;
        while let Some((_, line)) = lines.next_line()? {
            if parse_line(&line).is_some_and(|l| wanted(&l)) {
                return Ok(Some(line));
            }
        }
    }
    Ok(None)
}

/// Take the exclusive lock on `file`, trying for up to `patience`; `false` when some
/// other process still holds it. Blocking: call it off the async runtime.
pub fn lock_within(file: &File, patience: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + patience;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Does a warden process hold the log in `dir` open for writing right now?
pub fn is_live(dir: &Path) -> bool {
    match File::open(dir.join("LOCK")) {
        Err(_) => false,
        Ok(f) => match f.try_lock_shared() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(std::fs::TryLockError::Error(_)) => false,
        },
    }
}

/// Wait up to `patience` for the log in `dir` to be free (no warden process has it
/// open for writing). `false` means some process still holds it. (A process that
/// opens it after this returns `true` makes the answer stale.)
pub fn wait_until_free(dir: &Path, patience: Duration) -> bool {
    match File::open(dir.join("LOCK")) {
        Err(_) => true,
        // Taken and released at once (dropping the file lets go).
        Ok(f) => lock_within(&f, patience).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, prev: &str, kind: &str) -> String {
        let body = format!("{{\"seq\":{seq},\"prev\":\"{prev}\",\"kind\":\"{kind}\"");
        let hash = hex::encode(Sha256::digest(format!("{body}}}").as_bytes()));
        format!("{body},\"hash\":\"{hash}\"}}")
    }

    #[test]
    fn lines_are_read_without_a_json_parser() {
        let line = record(7, ZERO_HASH, "run-end");
        let parsed = parse_line(line.as_bytes()).unwrap();
        assert_eq!(
            (parsed.seq, parsed.prev, parsed.kind, parsed.hash_ok),
            (7, ZERO_HASH, Some("run-end"), true)
        );
        let edited = line.replace("run-end", "run-enD");
        assert!(!parse_line(edited.as_bytes()).unwrap().hash_ok);
        assert!(parse_line(b"{\"seq\":1}").is_none());
        assert!(parse_line(&line.as_bytes()[..line.len() - 1]).is_none());
    }

    #[test]
    fn tails_and_backward_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "").unwrap();
        assert_eq!(tail(&path).unwrap(), Tail::Empty);
        let long = "x".repeat(100_000);
        std::fs::write(&path, format!("a\n{long}\nc\n")).unwrap();
        assert_eq!(tail(&path).unwrap(), Tail::Line(b"c".to_vec(), 100_005));
        std::fs::write(&path, format!("a\n{long}\ncut")).unwrap();
        assert_eq!(
            tail(&path).unwrap(),
            Tail::Torn {
                whole: 100_003,
                len: 100_006
            }
        );
        let mut file = File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        let mut back = Backwards::new(&mut file, len).unwrap();
        assert_eq!(back.next_line().unwrap(), Some((2, long.into_bytes())));
        assert_eq!(back.next_line().unwrap(), Some((0, b"a".to_vec())));
        assert_eq!(back.next_line().unwrap(), None);
        std::fs::write(&path, "cut").unwrap();
        assert_eq!(tail(&path).unwrap(), Tail::Torn { whole: 0, len: 3 });
    }
}
