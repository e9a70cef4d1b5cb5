//! Writing the log: the commit path and its group commit, checkpoints, `HEAD`, the
//! segment's zero tail, and what happens when a write fails.
//!
//! Records are chained and written under one lock by the caller (`thread`), and a
//! durable commit waits for an fsync that covers it. A write that fails (a full disk)
//! is cut back to the last whole record and the log keeps refusing until a write
//! succeeds again; the first record written then says what was lost. An fsync that
//! fails leaves the log refusing for good: after it the page cache cannot be trusted.
//! It must never acknowledge a record before it is durable.
//!
//! The segment being written has zeros laid down ahead of its records (`ZERO_AHEAD` at
//! a time): overwriting blocks the file already has lets `fdatasync` skip journaling a
//! new size, which halves its cost on the disks measured (BENCHMARKS.md). The tail is
//! cut when the segment is left and when the log closes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::AuditError;
use super::checkpoint::{Checkpoint, Signer, Witness, WitnessConfig};
use super::entry::Entry;
use super::head::{self, Head};
use super::segments::{self, LastError, ZERO_HASH, segment_name};

mod open;
mod thread;

use open::prepare;
use thread::{Control, Core, Shared, run_maintenance};

/// How long the log's thread waits for more commits before an `fsync` under load.
const GROUP_COMMIT_WAIT: Duration = Duration::from_micros(250);
/// How far ahead of its records the live segment is zero-filled, at most.
const ZERO_AHEAD: u64 = 1 << 20;
/// The zeros laid when the log opens.
const FIRST_ROOM: u64 = 64 << 10;
/// How long opening the log waits for another process to let go of it.
const LOCK_PATIENCE: Duration = Duration::from_secs(5);
/// How often the writer brings `HEAD` up to date and looks for a checkpoint that is
/// due by time. `HEAD` lags the log by at most this after a crash.
const TICK: Duration = Duration::from_millis(100);
/// How long the writer sleeps at most when `HEAD` is up to date: an idle log does not
/// wake at all in between. (What may change meanwhile is only `HEAD`'s oldest open run,
/// which a stale `HEAD` states conservatively; a commit wakes the writer anyway.)
const QUIET_TICK: Duration = Duration::from_secs(60);

/// How the log is opened.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Start a new segment past this size.
    pub max_segment_bytes: u64,
    /// Signs checkpoints; `None` writes none (only for logs nobody relies on: tests of
    /// other things, benchmarks).
    pub signer: Option<Arc<Signer>>,
    /// A checkpoint after this many records...
    pub checkpoint_every: u64,
    /// ...or this long after the last one, whichever comes first (and at close).
    pub checkpoint_interval: Duration,
    pub witness: WitnessConfig,
    /// The host this log belongs to, in every record (hosts sharing a store each keep
    /// their own log; `audit verify --cluster` reads them together). Default none.
    pub host: Option<String>,
}

impl AuditOptions {
    /// Segments of `max_segment_bytes`, no signing key, no witness.
    pub fn new(max_segment_bytes: u64) -> AuditOptions {
        AuditOptions {
            max_segment_bytes,
            signer: None,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            witness: WitnessConfig::default(),
            host: None,
        }
    }
}

/// What `warden audit repair` allows beyond cutting a torn tail.
#[derive(Debug, Clone, Default)]
pub struct Repair {
    /// Accept a log shorter than `HEAD` says (or not the one `HEAD` names): the loss is
    /// recorded and `HEAD` follows the log.
    pub accept_missing_records: bool,
    /// Accept a log whose `HEAD` is gone.
    pub accept_missing_head: bool,
    /// Who repairs (recorded).
    pub by: String,
}

/// What a repair did, one line each.
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    pub actions: Vec<String>,
}

/// Handle to the log. Cloneable, cheap; the log is closed (checkpointed, synced,
/// `HEAD` written, lock released) by `close` or when the last handle is dropped, so
/// several runtimes (a reload's old and new) can share one log.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    closer: Arc<Closer>,
    /// Records being committed and not yet acknowledged (the audit lag).
    queued: Arc<AtomicU64>,
    recovery: Option<u64>,
    pub dir: PathBuf,
}

/// The runs in flight, by the record number the log was at when each began: `HEAD`
/// says where the oldest began, so recovery after a crash reads only from there.
#[derive(Default)]
struct Runs {
    open: Mutex<BTreeMap<u64, usize>>,
    /// The number the next record will get.
    next_seq: AtomicU64,
    /// Runs that have not made their last records durable yet: more than one means a
    /// durable commit has company, and its fsync goes to the log's thread.
    active: std::sync::atomic::AtomicUsize,
}

impl Runs {
    fn enter(&self, at: u64) {
        if let Ok(mut open) = self.open.lock() {
            *open.entry(at).or_default() += 1;
        }
    }

    fn leave(&self, at: u64) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&at)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&at);
            }
        }
    }

    fn oldest(&self) -> Option<u64> {
        self.open.lock().ok()?.keys().next().copied()
    }
}

struct Closer {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Closer {
    fn close(&self) {
        let _ = self.shared.control.send(Control::Close);
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

/// A run in flight (see [`AuditLog::caller`]).
pub struct Caller {
    runs: Arc<Runs>,
    at: u64,
    finished: bool,
}

impl Caller {
    /// The run's last records are durable: it no longer keeps others' commits company
    /// (it stays in flight for recovery until the guard drops).
    pub fn finished(&mut self) {
        if !std::mem::replace(&mut self.finished, true) {
            self.runs.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.finished();
        self.runs.leave(self.at);
    }
}

impl AuditLog {
    /// Open (or create) the log in `dir`. Blocking (it may wait for another process to
    /// let go of the log): call it off the async runtime.
    ///
    /// Refuses a log that does not end where `HEAD` says (records deleted from the
    /// end, or `HEAD` itself deleted) and one whose last record is cut short, naming
    /// what is wrong: nothing is appended to it until `warden audit repair`.
    pub fn open(dir: &Path, options: AuditOptions) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(dir, options, None).map(|(log, _)| log)
    }

    /// Open the log in `dir` for an operator's repair: cut a torn tail (never a whole
    /// record), and accept what `repair` allows; every change is recorded in the log.
    pub fn repair(
        dir: &Path,
        options: AuditOptions,
        repair: &Repair,
    ) -> Result<(AuditLog, Repaired), AuditError> {
        AuditLog::open_with(dir, options, Some(repair))
    }

    fn open_with(
        dir: &Path,
        options: AuditOptions,
        repair: Option<&Repair>,
    ) -> Result<(AuditLog, Repaired), AuditError> {
        let io = |e: std::io::Error| AuditError::io(dir, e);
        std::fs::create_dir_all(dir).map_err(io)?;
        if !dir.is_dir() {
            return Err(AuditError::io(
                dir,
                std::io::Error::other("not a directory"),
            ));
        }
        // One writer per log: a second warden process on the same data dir waits here
        // (a while: short commands finish) rather than fork the chain, then gives up
        // naming who holds it. The lock lives as long as the writer thread.
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| AuditError::io(&lock_path, e))?;
        if !segments::lock_within(&lock, LOCK_PATIENCE)
            .map_err(|e| AuditError::io(&lock_path, e))?
        {
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
        let mut repaired = Repaired::default();
        let mut first = Vec::new();
        let (mut writer, recovery) = prepare(dir, &options, repair, &mut repaired, &mut first)?;
        // A little room for the first records, written with the first commit's fsync;
        // the log's thread lays the rest later, off the start-up path.
        writer.make_room(FIRST_ROOM.min(options.max_segment_bytes), 0)?;
        if !first.is_empty() {
            writer.write(first.iter())?;
            writer.sync()?;
        }
        let runs = Arc::new(Runs::default());
        runs.next_seq.store(writer.seq + 1, Ordering::Release);
        if let Some(from) = recovery {
            // Held until the runtime has ended what the crash cut off (`recovered`).
            runs.enter(from);
        }
        let witness = if options.witness.is_set() && options.signer.is_some() {
            Some(Witness::start(options.witness.clone()).map_err(io)?)
        } else {
            None
        };
        let (control, rx) = mpsc::channel::<Control>();
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                writer,
                witness,
                head_written: None,
                syncing: false,
                sync_wanted: false,
                pending: 0,
                last_shared: false,
                closed: false,
            }),
            synced: tokio::sync::Notify::new(),
            runs,
            failed: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            control,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("warden-audit".into())
                .spawn(move || {
                    let _lock = lock;
                    run_maintenance(&shared, &rx);
                })
                .map_err(io)?
        };
        let log = AuditLog {
            closer: Arc::new(Closer {
                shared: shared.clone(),
                thread: Mutex::new(Some(thread)),
            }),
            shared,
            queued: Arc::default(),
            recovery,
            dir: dir.to_path_buf(),
        };
        Ok((log, repaired))
    }

    /// Where a crash cut runs off: the record to read the log from to find them. Set
    /// when the last writer did not stop cleanly; `None` after a clean stop.
    pub fn recovery(&self) -> Option<u64> {
        self.recovery
    }

    /// The runs a crash cut off have been ended: `HEAD` may move on past them.
    pub fn recovered(&self) {
        if let Some(from) = self.recovery {
            self.shared.runs.leave(from);
        }
    }

    /// Mark one run (a governed call, a resumed held run) as in flight until the guard
    /// drops; every path that writes a run's records holds one until its run-history
    /// row is committed too. After a crash, recovery reads the log from the oldest run
    /// that was in flight.
    pub fn caller(&self) -> Caller {
        let runs = &self.shared.runs;
        let at = runs.next_seq.load(Ordering::Acquire);
        runs.enter(at);
        runs.active.fetch_add(1, Ordering::Relaxed);
        Caller {
            runs: runs.clone(),
            at,
            finished: false,
        }
    }

    /// Sign what is unsigned, write what is queued, bring `HEAD` up to date (clean) and
    /// stop the writer. Appends after this fail. Called when the runtime shuts down.
    pub fn close(&self) {
        self.closer.close();
    }

    /// Does the log refuse appends now (the last write failed)?
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Records being committed and not yet acknowledged.
    pub fn lag(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Append `records` and wait until they are durable (fsynced).
    pub async fn append(&self, records: Vec<Entry>) -> Result<(), AuditError> {
        self.commit(records, true).await
    }

    /// Append `records` and wait until they are `durable` (fsynced), or else written
    /// (they become durable with the next durable commit; a failed write is still
    /// reported before this returns).
    pub async fn commit(&self, records: Vec<Entry>, durable: bool) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len() as u64;
        self.queued.fetch_add(n, Ordering::Relaxed);
        let result = match self.shared.write(&records, durable) {
            Ok(seq) if durable => self.shared.durable(seq).await,
            written => written.map(drop),
        };
        self.queued.fetch_sub(n, Ordering::Relaxed);
        result
    }

    /// Sign the chain as it stands now (if anything is unsigned) and wait until the
    /// checkpoint is durable. Blocking for an fsync: an operator's command, not a call.
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        self.shared.with_core(Core::checkpoint_now)
    }

    /// Sign from now on with `next`: a `key-rotation` record endorsed by the current
    /// key (so a verifier that trusts it trusts `next`), then a checkpoint by `next`.
    pub async fn rotate_key(&self, next: Arc<Signer>) -> Result<(), AuditError> {
        self.shared
            .with_core(|core, failed, runs| core.rotate_key(next, failed, runs))
    }
}

/// A write that failed and was cut back, to be recorded once the log takes records
/// again.
#[derive(Debug, Clone)]
struct FailureNote {
    since_ms: u64,
    error: String,
    records_lost: u64,
    attempts: u64,
}

struct Checkpointing {
    signer: Arc<Signer>,
    every: u64,
    interval: Duration,
    /// Records written since the last checkpoint.
    unsigned: u64,
    last_at: Instant,
    /// Checkpoints written but not yet fsynced: the witness gets them once they are.
    not_yet_durable: Vec<Checkpoint>,
}

struct Writer {
    dir: PathBuf,
    /// Shared with a group commit's leader, which fsyncs it outside the lock.
    file: Arc<File>,
    index: u64,
    /// Where the records end (the next one is written here).
    size: u64,
    /// The file's length: zeros from `size` to here.
    zeroed: u64,
    max_segment_bytes: u64,
    /// The last record written.
    seq: u64,
    hash: String,
    /// The last record fsynced.
    durable: (u64, String),
    /// An fsync failed: nothing more can be trusted to reach the disk.
    broken: bool,
    pending_failure: Option<FailureNote>,
    buf: Vec<u8>,
    checkpoints: Option<Checkpointing>,
    /// The hash of record 1: which log this is (for the witness).
    genesis: Option<String>,
    /// `,"host":"NAME"`, ending every record of a host sharing a store (empty
    /// otherwise).
    host: Vec<u8>,
}

impl Writer {
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

    /// Append `records` (and a checkpoint, when one is due by count). On failure the
    /// segment is cut back to its last whole record.
    fn write<'a>(&mut self, records: impl Iterator<Item = &'a Entry>) -> Result<(), AuditError> {
        if self.broken {
            return Err(AuditError::Failed);
        }
        let note = self.pending_failure.as_ref().map(|f| {
            let mut entry = Entry::new("audit-write-failed");
            entry
                .num("ts_ms", crate::now_ms())
                .num("failed_since_ms", f.since_ms)
                .str("error", &f.error)
                .num("records_not_written", f.records_lost)
                .num("attempts", f.attempts)
                .str("action", "each failed write was cut back to the last whole record; the calls whose records these were did not run or were withheld");
            entry
        });
        let mut all: Vec<&Entry> = note.iter().collect();
        for record in records {
            all.push(record);
        }
        let count = all.len() as u64;
        match self.try_write(all.into_iter()) {
            Ok(()) => {
                self.pending_failure = None;
                Ok(())
            }
            Err(e) => {
                let lost = count.saturating_sub(u64::from(note.is_some()));
                // Cut back to the last whole record: a torn record must never be built on.
                // (`size` moves only on success; a rotation that happened first left an
                // empty new segment, size 0.)
                match self.file.set_len(self.size) {
                    Ok(()) => {
                        self.zeroed = self.size;
                        let note = self.pending_failure.get_or_insert(FailureNote {
                            since_ms: crate::now_ms(),
                            error: String::new(),
                            records_lost: 0,
                            attempts: 0,
                        });
                        note.error = e.to_string();
                        note.records_lost += lost;
                        note.attempts += 1;
                    }
                    Err(cut) => {
                        tracing::error!("audit log: cannot cut back a failed write: {cut}");
                        self.broken = true;
                    }
                }
                Err(e)
            }
        }
    }

    fn try_write<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Entry>,
    ) -> Result<(), AuditError> {
        self.buf.clear();
        let (mut seq, mut hash) = (self.seq, self.hash.clone());
        let mut genesis = None;
        let mut written = 0u64;
        for record in records {
            seq += 1;
            written += 1;
            self.chain(seq, &mut hash, record);
            if seq == 1 {
                genesis = Some(hash.clone());
            }
        }
        let mut checkpoint = None;
        if let Some(c) = &self.checkpoints
            && c.unsigned + written >= c.every
        {
            let ts = crate::now_ms();
            let (entry, sig) = c.signer.checkpoint(seq, &hash, ts, c.every);
            checkpoint = Some(Checkpoint {
                log: self
                    .genesis
                    .clone()
                    .or_else(|| genesis.clone())
                    .unwrap_or_else(|| hash.clone()),
                seq: seq + 1,
                covers: seq,
                covers_hash: hash.clone(),
                ts_ms: ts,
                key: c.signer.public().to_string(),
                sig,
            });
            seq += 1;
            self.chain(seq, &mut hash, &entry);
        }
        if self.size > 0 && self.size + self.buf.len() as u64 > self.max_segment_bytes {
            self.rotate()?;
        }
        self.make_room(self.buf.len() as u64, ZERO_AHEAD)?;
        self.file
            .write_all_at(&self.buf, self.size)
            .map_err(|e| self.error(e))?;
        self.size += self.buf.len() as u64;
        self.seq = seq;
        self.hash = hash;
        if self.genesis.is_none() {
            self.genesis = genesis;
        }
        if let Some(c) = &mut self.checkpoints {
            match checkpoint {
                Some(cp) => {
                    c.unsigned = 0;
                    c.last_at = Instant::now();
                    c.not_yet_durable.push(cp);
                }
                None => c.unsigned += written,
            }
        }
        Ok(())
    }

    /// Add the line for `record` as number `seq` to the buffer, moving `hash` on.
    fn chain(&mut self, seq: u64, hash: &mut String, record: &Entry) {
        let mut head = Vec::with_capacity(96);
        // Writing into a Vec cannot fail.
        let _ = write!(head, "{{\"seq\":{seq},\"prev\":\"{hash}\"");
        let digest = Sha256::new()
            .chain_update(&head)
            .chain_update(&record.0)
            .chain_update(&self.host)
            .chain_update(b"}")
            .finalize();
        let mut hex = [0u8; 64];
        let _ = hex::encode_to_slice(digest, &mut hex);
        hash.clear();
        // The digest's hex digits are ASCII: this never loses a byte.
        hash.push_str(&String::from_utf8_lossy(&hex));
        self.buf.extend_from_slice(&head);
        self.buf.extend_from_slice(&record.0);
        self.buf.extend_from_slice(&self.host);
        self.buf.extend_from_slice(b",\"hash\":\"");
        self.buf.extend_from_slice(&hex);
        self.buf.extend_from_slice(b"\"}\n");
    }

    /// Write a checkpoint by itself (when anything is unsigned).
    fn write_checkpoint(&mut self) -> Result<(), AuditError> {
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        if c.unsigned == 0 {
            return Ok(());
        }
        // Due by count now: `write` adds it.
        c.unsigned = c.every;
        self.write(std::iter::empty())
    }

    /// fsync under the lock; returns the checkpoints that just became durable.
    fn sync(&mut self) -> Result<Vec<Checkpoint>, AuditError> {
        if self.broken {
            return Err(AuditError::Failed);
        }
        if let Err(e) = self.file.sync_data() {
            self.broken = true;
            return Err(self.error(e));
        }
        self.durable = (self.seq, self.hash.clone());
        Ok(self.durable_checkpoints(self.seq))
    }

    /// The checkpoints written up to record `upto`, which an fsync just made durable.
    fn durable_checkpoints(&mut self, upto: u64) -> Vec<Checkpoint> {
        let Some(c) = self.checkpoints.as_mut() else {
            return Vec::new();
        };
        let (ready, later) = std::mem::take(&mut c.not_yet_durable)
            .into_iter()
            .partition(|cp| cp.seq <= upto);
        c.not_yet_durable = later;
        ready
    }

    /// Zeros ahead of the records for the next `len` bytes, and up to `ahead` more
    /// (see the module header); they reach the disk with the next fsync.
    fn make_room(&mut self, len: u64, ahead: u64) -> Result<(), AuditError> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let end = self.size + len;
        if end <= self.zeroed {
            return Ok(());
        }
        let target = end.max((self.zeroed + ahead).min(self.max_segment_bytes));
        let mut at = self.zeroed.max(self.size);
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64);
            self.file
                .write_all_at(&ZEROS[..n as usize], at)
                .map_err(|e| self.error(e))?;
            at += n;
        }
        self.zeroed = target;
        Ok(())
    }

    /// Cut the zero tail (a segment being left, a clean close); the next fsync makes
    /// the cut durable.
    fn trim(&mut self) -> Result<(), AuditError> {
        if self.broken || self.zeroed <= self.size {
            return Ok(());
        }
        self.file.set_len(self.size).map_err(|e| self.error(e))?;
        self.zeroed = self.size;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        // The segment being left must end at its last record, and be durable, before
        // records go to the next one.
        self.trim()?;
        if let Err(e) = self.file.sync_data() {
            self.broken = true;
            return Err(self.error(e));
        }
        let path = self.dir.join(segment_name(self.index + 1));
        let (file, size, zeroed) = open_segment(&path)?;
        self.file = Arc::new(file);
        self.index += 1;
        self.size = size;
        self.zeroed = zeroed;
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            self.broken = true;
            return Err(self.error(e));
        }
        Ok(())
    }
}

/// A segment opened for writing at its records' end: the file, where its records end,
/// and its length (zeros in between, after a crash).
fn open_segment(path: &Path) -> Result<(File, u64, u64), AuditError> {
    let io = |e| AuditError::io(path, e);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let size = segments::data_len(&file).map_err(io)?;
    let zeroed = file.metadata().map_err(io)?.len();
    Ok((file, size, zeroed))
}
