//! The audit log: append-only JSON Lines segments under `<data_dir>/audit/`, every
//! record hash-chained to the one before it (across segments), group-committed.
//!
//! Owns writing (a writer thread drains what is queued, writes it, `fdatasync`s, then
//! acknowledges every record in the batch; a caller alone commits on its own thread),
//! recovering the chain head on open, and
//! verifying a log. It must never acknowledge a record before it is durable, and after
//! a failed write it refuses every later append (fail closed): nothing runs unaudited.
//!
//! A line is `{"seq":N,"prev":"<hash of N-1>",...fields...,"hash":"<sha256>"}`, where the
//! hash covers the exact bytes of the line up to `,"hash"` plus the closing `}`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_SUFFIX_LEN: usize = ",\"hash\":\"\"}".len() + 64;
/// Most records written in one group commit.
const MAX_BATCH: usize = 8192;
/// How long the writer waits for more records when the last commit was shared.
const GROUP_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_micros(250);

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("audit log {path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "audit log {path}: the last record is cut short (a crash mid-write?); run `warden audit verify` and repair before continuing"
    )]
    TruncatedTail { path: String },
    #[error("audit log {path}: cannot read the chain head: {message}")]
    BadHead { path: String, message: String },
    #[error("audit log is not writable after an earlier failure; nothing can run unaudited")]
    Failed,
    #[error(
        "audit log {path} is held by another warden process{holder} (waited {waited_secs} s); send calls through it (MCP, API) or stop it"
    )]
    Busy {
        path: String,
        holder: String,
        waited_secs: u64,
    },
}

/// One record's fields as JSON text (`,"kind":...`), without `seq`, `prev` and `hash`,
/// which the writer adds as it chains the record. Built on the caller's thread, so
/// the writer (one thread for every caller) only chains, hashes and writes; the
/// records of every governed call are built field by field, with no JSON map between.
pub struct Entry(Vec<u8>);

impl Entry {
    /// A record of `kind`; add its fields with the builder methods, in order.
    pub fn new(kind: &str) -> Entry {
        let mut entry = Entry(Vec::with_capacity(384));
        entry.str("kind", kind);
        entry
    }

    /// The fields of a JSON object record.
    pub fn of(record: &Map<String, Value>) -> Entry {
        let mut entry = Entry(Vec::with_capacity(512));
        for (k, v) in record {
            if k != "seq" && k != "prev" && k != "hash" {
                entry.value(k, v);
            }
        }
        entry
    }

    fn key(&mut self, key: &str) {
        debug_assert!(
            !matches!(key, "seq" | "prev" | "hash"),
            "the writer sets {key}"
        );
        self.0.push(b',');
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, key);
        self.0.push(b':');
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Entry {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, value);
        self
    }

    /// A string, or `null`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Entry {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, &value);
        self
    }

    pub fn num(&mut self, key: &str, value: u64) -> &mut Entry {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, &value);
        self
    }

    pub fn value(&mut self, key: &str, value: &Value) -> &mut Entry {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, value);
        self
    }
}

/// A queued batch and who to tell when it is durable.
struct Commit {
    records: Vec<Entry>,
    /// Wait for fsync (durable), or only for the write to reach the file.
    durable: bool,
    done: tokio::sync::oneshot::Sender<Result<(), AuditError>>,
}

enum Message {
    Commit(Commit),
    /// Write `HEAD` and stop.
    Close,
}

/// How long opening the log waits for another process to let go of it.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// How often `HEAD` is brought up to date while records flow (it is also written
/// when the log is closed). Writing it on every commit would double the cost of a
/// commit on this kind of disk; the cost of the interval is that `verify` cannot see
/// records deleted from the very end of the log if they were written less than this
/// long before the deletion and the writer never closed.
const HEAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Handle to the writer thread. Cloneable, cheap; the log is closed (synced, `HEAD`
/// written, lock released) by `close` or when the last handle is dropped, so several
/// runtimes (a reload's old and new) can share one log.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Message>,
    closer: std::sync::Arc<Closer>,
    core: std::sync::Arc<std::sync::Mutex<Core>>,
    /// Governed calls using the log now (see [`AuditLog::caller`]).
    callers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Records handed to the writer and not yet acknowledged (the audit lag).
    queued: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set once an append failed: the log takes nothing more.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub dir: PathBuf,
}

struct Closer {
    tx: mpsc::Sender<Message>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Closer {
    fn close(&self) {
        let _ = self.tx.send(Message::Close);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.close();
    }
}

impl AuditLog {
    /// Open (or create) the log in `dir`, recovering the chain head from the last segment.
    pub fn open(dir: &Path, max_segment_bytes: u64) -> Result<AuditLog, AuditError> {
        let io = |e: std::io::Error| AuditError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // One writer per log: a second warden process on the same data dir waits here
        // (a while: short commands finish) rather than fork the chain, then gives up
        // naming who holds it. The lock lives as long as the writer thread.
        let lock = File::create(dir.join("LOCK")).map_err(io)?;
        if !lock_within(&lock, LOCK_PATIENCE).map_err(io)? {
            let server = dir
                .parent()
                .and_then(|d| std::fs::read_to_string(d.join("serve.pid")).ok())
                .map(|pid| format!(" (`warden serve`, pid {})", pid.trim()))
                .unwrap_or_default();
            return Err(AuditError::Busy {
                path: dir.display().to_string(),
                holder: server,
                waited_secs: LOCK_PATIENCE.as_secs(),
            });
        }
        let core = std::sync::Arc::new(std::sync::Mutex::new(Core {
            writer: Writer::open(dir, max_segment_bytes)?,
            head_written: std::time::Instant::now(),
            closed: false,
        }));
        let (tx, rx) = mpsc::channel::<Message>();
        let shared = core.clone();
        let thread = std::thread::Builder::new()
            .name("warden-audit".into())
            .spawn(move || {
                let _lock = lock;
                let mut concurrent = false;
                while let Ok(Message::Commit(first)) = rx.recv() {
                    // Under concurrent load, linger briefly so one fsync covers more
                    // callers: on this kind of disk an fsync costs CPU as well as time.
                    if concurrent {
                        std::thread::sleep(GROUP_COMMIT_WAIT);
                    }
                    let mut batch = vec![first];
                    let mut closing = false;
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(Message::Commit(more)) => batch.push(more),
                            Ok(Message::Close) => {
                                closing = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    concurrent = batch.len() > 1;
                    let Ok(mut core) = shared.lock() else {
                        break;
                    };
                    let written = core
                        .writer
                        .write(batch.iter().flat_map(|c| c.records.iter()));
                    let (durable, written_only): (Vec<Commit>, Vec<Commit>) =
                        batch.into_iter().partition(|c| c.durable);
                    for commit in written_only {
                        let _ = commit.done.send(written.clone());
                    }
                    if !durable.is_empty() {
                        let synced = written.and_then(|()| core.writer.sync());
                        for commit in durable {
                            let _ = commit.done.send(synced.clone());
                        }
                    }
                    if closing {
                        break;
                    }
                    core.head_in_time();
                }
                if let Ok(mut core) = shared.lock() {
                    core.closed = true;
                    let _ = core.writer.sync();
                    core.writer.write_head();
                }
            })
            .map_err(io)?;
        Ok(AuditLog {
            closer: std::sync::Arc::new(Closer {
                tx: tx.clone(),
                thread: std::sync::Mutex::new(Some(thread)),
            }),
            tx,
            core,
            callers: std::sync::Arc::default(),
            queued: std::sync::Arc::default(),
            failed: std::sync::Arc::default(),
            dir: dir.to_path_buf(),
        })
    }

    /// Mark one governed call (or resumed held run) as using the log until the guard
    /// drops; every path that commits a run's records holds one. While it is the
    /// only one (and nothing is queued), its commits are written on its own thread:
    /// the hand-off to the writer thread and back costs more CPU on this kind of VM
    /// than the write itself. With company, commits go to the writer thread, where one
    /// fsync covers them all.
    pub fn caller(&self) -> Caller {
        self.callers
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Caller {
            count: self.callers.clone(),
        }
    }

    /// Write what is queued, bring `HEAD` up to date and stop the writer. Appends after
    /// this fail. Called when the runtime shuts down.
    pub fn close(&self) {
        self.closer.close();
    }

    /// Has an append failed (the log refuses everything since)?
    pub fn has_failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records handed to the writer and not yet acknowledged.
    pub fn lag(&self) -> u64 {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Append `records` (JSON objects) and wait until they are durable (fsynced).
    pub async fn append(&self, records: Vec<Map<String, Value>>) -> Result<(), AuditError> {
        self.commit(records.iter().map(Entry::of).collect(), true)
            .await
    }

    /// Append `records` and wait until they are written to the file (not yet synced:
    /// they become durable with the next durable append). A failed write (disk full,
    /// unwritable file) is still reported before this returns.
    pub async fn append_written(&self, records: Vec<Map<String, Value>>) -> Result<(), AuditError> {
        self.commit(records.iter().map(Entry::of).collect(), false)
            .await
    }

    /// Append `records` and wait until they are `durable` (fsynced), or else written.
    pub async fn commit(&self, records: Vec<Entry>, durable: bool) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        if durable && self.alone() {
            // Let calls that are ready to run reach the log first: with company, one
            // fsync on the writer thread covers them all (a single-threaded server
            // would otherwise run pipelined calls one fsync each).
            tokio::task::yield_now().await;
        }
        if let Some(result) = self.commit_alone(&records, durable) {
            if result.is_err() {
                self.failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return result;
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        let n = records.len() as u64;
        self.queued
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let sent = self.tx.send(Message::Commit(Commit {
            records,
            durable,
            done,
        }));
        let result = match sent {
            Ok(()) => wait.await.unwrap_or(Err(AuditError::Failed)),
            Err(_) => Err(AuditError::Failed),
        };
        self.queued
            .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        if result.is_err() {
            self.failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn alone(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.callers.load(Ordering::Acquire) <= 1 && self.queued.load(Ordering::Acquire) == 0
    }

    /// Commit on this thread when no other caller is around (see [`AuditLog::caller`]);
    /// `None` when the writer thread should take it.
    fn commit_alone(&self, records: &[Entry], durable: bool) -> Option<Result<(), AuditError>> {
        if !self.alone() {
            return None;
        }
        let mut core = self.core.try_lock().ok()?;
        if core.closed {
            return Some(Err(AuditError::Failed));
        }
        let mut result = core.writer.write(records.iter());
        if durable {
            result = result.and_then(|()| core.writer.sync());
        }
        core.head_in_time();
        Some(result)
    }
}

/// What the writer thread and a lone caller share: the open segment and chain head.
struct Core {
    writer: Writer,
    head_written: std::time::Instant,
    /// Set when the log is closed: nothing more is written.
    closed: bool,
}

impl Core {
    fn head_in_time(&mut self) {
        if self.head_written.elapsed() >= HEAD_INTERVAL {
            self.writer.write_head();
            self.head_written = std::time::Instant::now();
        }
    }
}

/// One governed call using the log (see [`AuditLog::caller`]).
pub struct Caller {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    index: u64,
    size: u64,
    max_segment_bytes: u64,
    seq: u64,
    hash: String,
    failed: bool,
    buf: Vec<u8>,
}

fn segment_name(index: u64) -> String {
    format!("segment-{index:08}.jsonl")
}

/// Segment indexes present in `dir`, ascending.
/// Wait up to `patience` for the log in `dir` to be free (no warden process has it
/// open for writing). `false` means some process still holds it. (A process that
/// opens it after this returns `true` makes the answer stale.)
pub fn wait_until_free(dir: &Path, patience: std::time::Duration) -> bool {
    match File::open(dir.join("LOCK")) {
        Err(_) => true,
        // Taken and released at once (dropping the file lets go).
        Ok(f) => lock_within(&f, patience).unwrap_or(false),
    }
}

/// Take the exclusive lock on `file`, trying for up to `patience`; `false` when some
/// other process still holds it.
fn lock_within(file: &File, patience: std::time::Duration) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

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

impl Writer {
    fn open(dir: &Path, max_segment_bytes: u64) -> Result<Writer, AuditError> {
        let shown = dir.display().to_string();
        let io = |e: std::io::Error| AuditError::Io {
            path: shown.clone(),
            message: e.to_string(),
        };
        let indexes = segments(dir).map_err(io)?;
        let mut seq = 0;
        let mut hash = ZERO_HASH.to_string();
        for &index in indexes.iter().rev() {
            let path = dir.join(segment_name(index));
            if let Some(last) = last_line(&path)? {
                let (s, h) = parse_head(&last).ok_or_else(|| AuditError::BadHead {
                    path: path.display().to_string(),
                    message: "the last record is not a valid audit record".into(),
                })?;
                seq = s;
                hash = h;
                break;
            }
        }
        let index = indexes.last().copied().unwrap_or(1);
        let path = dir.join(segment_name(index));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok(Writer {
            dir: dir.to_path_buf(),
            file,
            index,
            size,
            max_segment_bytes,
            seq,
            hash,
            failed: false,
            buf: Vec::new(),
        })
    }

    fn write<'a>(&mut self, records: impl Iterator<Item = &'a Entry>) -> Result<(), AuditError> {
        if self.failed {
            return Err(AuditError::Failed);
        }
        let result = self.try_write(records);
        if result.is_err() {
            // Some bytes may have reached the file: never build on an unknown tail.
            self.failed = true;
        }
        result
    }

    fn try_write<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Entry>,
    ) -> Result<(), AuditError> {
        self.buf.clear();
        let (mut seq, mut hash) = (self.seq, self.hash.clone());
        let mut head = Vec::with_capacity(128);
        let mut hex = [0u8; 64];
        for record in records {
            seq += 1;
            head.clear();
            write!(head, "{{\"seq\":{seq},\"prev\":\"{hash}\"").map_err(|e| self.error(e))?;
            let digest = Sha256::new()
                .chain_update(&head)
                .chain_update(&record.0)
                .chain_update(b"}")
                .finalize();
            hex::encode_to_slice(digest, &mut hex).map_err(|e| self.error(e))?;
            hash.clear();
            // The digest's hex digits are ASCII: this never loses a byte.
            hash.push_str(&String::from_utf8_lossy(&hex));
            self.buf.extend_from_slice(&head);
            self.buf.extend_from_slice(&record.0);
            self.buf.extend_from_slice(b",\"hash\":\"");
            self.buf.extend_from_slice(&hex);
            self.buf.extend_from_slice(b"\"}\n");
        }
        if self.size > 0 && self.size + self.buf.len() as u64 > self.max_segment_bytes {
            self.rotate()?;
        }
        self.file.write_all(&self.buf).map_err(|e| self.error(e))?;
        self.size += self.buf.len() as u64;
        self.seq = seq;
        self.hash = hash;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        if self.failed {
            return Err(AuditError::Failed);
        }
        let result = self.file.sync_data().map_err(|e| self.error(e));
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        // The segment being left must be durable before records go to the next one.
        self.file.sync_data().map_err(|e| self.error(e))?;
        self.index += 1;
        let path = self.dir.join(segment_name(self.index));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| self.error(e))?;
        self.size = 0;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// `HEAD` names the last durable record, so `verify` can tell records deleted from
    /// the end. Written after the records are durable; not itself synced (after a crash
    /// it may lag the log, never lead it).
    fn write_head(&self) {
        if self.failed {
            return;
        }
        let tmp = self.dir.join("HEAD.tmp");
        let text = format!("{} {}\n", self.seq, self.hash);
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, self.dir.join("HEAD"));
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> AuditError {
        AuditError::Io {
            path: self
                .dir
                .join(segment_name(self.index))
                .display()
                .to_string(),
            message: e.to_string(),
        }
    }
}

/// The last complete line of `path`, or `None` for an empty file. A file that does not
/// end in a newline has a truncated tail: that is an error, not something to build on.
fn last_line(path: &Path) -> Result<Option<String>, AuditError> {
    let shown = path.display().to_string();
    let io = |e: std::io::Error| AuditError::Io {
        path: shown.clone(),
        message: e.to_string(),
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(io)?;
    if tail.last() != Some(&b'\n') {
        return Err(AuditError::TruncatedTail { path: shown });
    }
    let body = &tail[..tail.len() - 1];
    let line = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
    Ok(Some(String::from_utf8_lossy(line).into_owned()))
}

/// Split a line into its hashed body and its hash; `None` if it has not the shape.
fn split_line(line: &str) -> Option<(String, &str)> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with("\"}") {
        return None;
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    let (body, suffix) = line.split_at(cut);
    let hash = suffix.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    Some((format!("{body}}}"), hash))
}

fn parse_head(line: &str) -> Option<(u64, String)> {
    let (_, hash) = split_line(line)?;
    let value: Value = serde_json::from_str(line).ok()?;
    Some((value.get("seq")?.as_u64()?, hash.to_string()))
}

/// Filters for searching the log; each one set must match.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub run: Option<String>,
    /// A plugin or policy id.
    pub plugin: Option<String>,
    pub since_ms: Option<u64>,
    pub kind: Option<String>,
}

impl Search {
    pub fn matches(&self, r: &Value) -> bool {
        let component_is = |id: &str| {
            r["plugin"] == id
                || r["policy"] == id
                || r["component"]
                    .as_str()
                    .is_some_and(|c| c.split_once(':').is_some_and(|(_, c)| c == id))
        };
        self.run.as_ref().is_none_or(|x| r["run"] == x.as_str())
            && self.plugin.as_deref().is_none_or(component_is)
            && self
                .since_ms
                .is_none_or(|t| r["ts_ms"].as_u64().is_some_and(|ts| ts >= t))
            && self.kind.as_ref().is_none_or(|k| r["kind"] == k.as_str())
    }
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub segments: usize,
    pub problem: Option<Problem>,
}

/// The first break in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first sequence number that cannot be trusted.
    pub seq: u64,
    pub location: String,
    pub what: String,
}

/// Check the whole chain: every hash, every link, the sequence, and the tail against
/// `HEAD`. Reports the first problem.
pub fn verify(dir: &Path) -> Result<Verified, AuditError> {
    let io = |e: std::io::Error| AuditError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let indexes = segments(dir).map_err(io)?;
    let mut expected_seq = 1u64;
    let mut prev = ZERO_HASH.to_string();
    let mut records = 0;
    let segments_found = indexes.len();
    let broken = |records: u64, seq: u64, location: String, what: String| {
        Ok(Verified {
            records,
            segments: segments_found,
            problem: Some(Problem {
                seq,
                location,
                what,
            }),
        })
    };
    for (i, &index) in indexes.iter().enumerate() {
        if i > 0 && index != indexes[i - 1] + 1 {
            let location = segment_name(indexes[i - 1] + 1);
            return broken(
                records,
                expected_seq,
                location,
                "segment file missing".into(),
            );
        }
        let path = dir.join(segment_name(index));
        let mut reader = BufReader::new(File::open(&path).map_err(io)?);
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(io)? == 0 {
                break;
            }
            number += 1;
            let location = format!("{}:{number}", segment_name(index));
            let Some(text) = line.strip_suffix('\n') else {
                return broken(
                    records,
                    expected_seq,
                    location,
                    "truncated tail: the last record is cut short".into(),
                );
            };
            let Some((body, hash)) = split_line(text) else {
                return broken(
                    records,
                    expected_seq,
                    location,
                    "modified: not an audit record".into(),
                );
            };
            let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&body) else {
                return broken(
                    records,
                    expected_seq,
                    location,
                    "modified: not valid JSON".into(),
                );
            };
            let seq = fields.get("seq").and_then(Value::as_u64).unwrap_or(0);
            if hex::encode(Sha256::digest(body.as_bytes())) != hash {
                return broken(
                    records,
                    expected_seq,
                    location,
                    "modified: the hash does not match the record".into(),
                );
            }
            if seq != expected_seq {
                let what = if seq > expected_seq {
                    format!("record {expected_seq} is missing (deleted or reordered); found {seq}")
                } else {
                    format!("record {seq} appears again or out of order (inserted or reordered)")
                };
                return broken(records, expected_seq, location, what);
            }
            if fields.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
                return broken(
                    records,
                    seq,
                    location,
                    "inserted or reordered: does not chain to the record before it".into(),
                );
            }
            prev = hash.to_string();
            expected_seq += 1;
            records += 1;
        }
    }
    if let Ok(head) = std::fs::read_to_string(dir.join("HEAD"))
        && let Some((seq, hash)) = head.trim().split_once(' ')
        && let Ok(seq) = seq.parse::<u64>()
    {
        if seq > records {
            return broken(
                records,
                records + 1,
                "HEAD".into(),
                format!("records {}..={seq} were deleted from the end", records + 1),
            );
        }
        if seq == records && seq > 0 && hash != prev {
            return broken(
                records,
                seq,
                "HEAD".into(),
                "the last record does not match HEAD".into(),
            );
        }
    }
    Ok(Verified {
        records,
        segments: indexes.len(),
        problem: None,
    })
}

/// Every record, in order, in memory (for tests and small logs; the commands stream).
/// Stops at a line that is not valid JSON.
pub fn read_all(dir: &Path) -> Result<Vec<Value>, AuditError> {
    let mut out = Vec::new();
    each_matching(dir, &Search::default(), |record| {
        out.push(record);
        true
    })?;
    Ok(out)
}

/// Call `found` with every record matching `search`, oldest first, one line in memory
/// at a time (a SIEM export of the whole log stays small), until it returns `false`.
pub fn each_matching(
    dir: &Path,
    search: &Search,
    mut found: impl FnMut(Value) -> bool,
) -> Result<(), AuditError> {
    for index in segments(dir).map_err(|e| read_error(dir, e))? {
        let more = scan_segment(dir, index, |record| {
            !search.matches(&record) || found(record)
        })?;
        if !more {
            break;
        }
    }
    Ok(())
}

/// The last `limit` records matching `search`, oldest first. Reads segments newest
/// first and stops once it has `limit`: memory stays bounded by `limit` however large
/// the log is, and a recent query reads only the recent segments.
pub fn last_matching(dir: &Path, search: &Search, limit: usize) -> Result<Vec<Value>, AuditError> {
    let mut newest_first: Vec<std::collections::VecDeque<Value>> = Vec::new();
    let mut kept = 0;
    for index in segments(dir)
        .map_err(|e| read_error(dir, e))?
        .into_iter()
        .rev()
    {
        if kept >= limit {
            break;
        }
        let room = limit - kept;
        let mut hits = std::collections::VecDeque::new();
        scan_segment(dir, index, |record| {
            if search.matches(&record) {
                if hits.len() == room {
                    hits.pop_front();
                }
                hits.push_back(record);
            }
            true
        })?;
        kept += hits.len();
        newest_first.push(hits);
    }
    Ok(newest_first.into_iter().rev().flatten().collect())
}

/// Every record of one segment, in order, up to a line that is not a record (a torn
/// tail; `verify` names any damage) or until `each` returns `false`. `false` when it
/// stopped early for either reason.
fn scan_segment(
    dir: &Path,
    index: u64,
    mut each: impl FnMut(Value) -> bool,
) -> Result<bool, AuditError> {
    let path = dir.join(segment_name(index));
    let reader = BufReader::new(File::open(&path).map_err(|e| read_error(&path, e))?);
    for line in reader.lines() {
        let line = line.map_err(|e| read_error(&path, e))?;
        let Ok(record) = serde_json::from_str::<Value>(&line) else {
            return Ok(false);
        };
        if !each(record) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_error(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("kind".into(), kind.into());
        m
    }

    #[test]
    fn built_entries_match_entries_of_maps() {
        let mut built = Entry::new("run-end");
        built
            .num("ts_ms", 17)
            .str("run", "r \"1\"\n")
            .opt_str("error", None)
            .opt_str("tier", Some("soft"))
            .value("n", &serde_json::json!([1, {"a": "b"}]));
        let map = serde_json::json!({
            "kind": "run-end", "ts_ms": 17, "run": "r \"1\"\n", "error": null,
            "tier": "soft", "n": [1, {"a": "b"}],
        });
        let Value::Object(map) = map else { panic!() };
        assert_eq!(
            String::from_utf8_lossy(&built.0),
            String::from_utf8_lossy(&Entry::of(&map).0)
        );
        let line = format!("{{\"seq\":1{}}}", String::from_utf8_lossy(&built.0));
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["run"], "r \"1\"\n");
    }

    #[tokio::test]
    async fn chain_survives_reopen_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path(), 300).unwrap();
            for i in 0..10 {
                log.append(vec![record(&format!("k{i}"))]).await.unwrap();
            }
        }
        let log = AuditLog::open(dir.path(), 300).unwrap();
        log.append(vec![record("after-reopen"), record("two")])
            .await
            .unwrap();
        let v = verify(dir.path()).unwrap();
        assert_eq!(v.problem, None);
        assert_eq!(v.records, 12);
        assert!(v.segments > 1, "rotated: {v:?}");
        assert_eq!(read_all(dir.path()).unwrap()[11]["kind"], "two");
    }

    #[tokio::test]
    async fn search_keeps_the_last_matches_across_segments_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 300).unwrap();
        for i in 0..30 {
            let kind = if i % 3 == 0 { "hit" } else { "miss" };
            let mut r = record(kind);
            r.insert("n".into(), i.into());
            log.append(vec![r]).await.unwrap();
        }
        log.close();
        let hits = Search {
            kind: Some("hit".into()),
            ..Search::default()
        };
        let n = |records: Vec<Value>| -> Vec<u64> {
            records.iter().filter_map(|r| r["n"].as_u64()).collect()
        };
        assert_eq!(
            n(last_matching(dir.path(), &hits, 4).unwrap()),
            [18, 21, 24, 27]
        );
        assert_eq!(n(last_matching(dir.path(), &hits, 100).unwrap()).len(), 10);
        assert_eq!(
            n(last_matching(dir.path(), &Search::default(), 2).unwrap()),
            [28, 29]
        );
        let mut all = Vec::new();
        each_matching(dir.path(), &hits, |r| {
            all.push(r);
            true
        })
        .unwrap();
        assert_eq!(n(all), [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]);
        let mut first = Vec::new();
        each_matching(dir.path(), &hits, |r| {
            first.push(r);
            first.len() < 4
        })
        .unwrap();
        assert_eq!(n(first), [0, 3, 6, 9], "stops when told to");
    }

    /// Commits made alone (on the caller's thread) and group commits (on the writer
    /// thread) interleave into one chain, none lost, none twice, across rotations.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lone_and_group_commits_form_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 4096).unwrap();
        let mut expected = 0;
        for round in 0..5 {
            {
                let _alone = log.caller();
                log.append_written(vec![record(&format!("alone-start-{round}"))])
                    .await
                    .unwrap();
                log.append(vec![record(&format!("alone-end-{round}"))])
                    .await
                    .unwrap();
                expected += 2;
            }
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let _caller = log.caller();
                        for i in 0..10 {
                            log.append(vec![record(&format!("group-{round}-{t}-{i}"))])
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            expected += 80;
        }
        log.close();
        let v = verify(dir.path()).unwrap();
        assert_eq!(v.problem, None);
        assert_eq!(v.records, expected);
        assert!(v.segments > 1, "rotated: {v:?}");
        let mut kinds: Vec<String> = read_all(dir.path())
            .unwrap()
            .iter()
            .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len() as u64, expected, "every record exactly once");
    }
}
