//! The commit path and the maintenance thread.
//!
//! A commit is written by its caller, under the log's lock, on the caller's own thread:
//! chaining and a `pwrite` into the page cache. A durable commit then needs an `fsync`
//! that covers it, done outside the lock so others keep writing meanwhile; callers that
//! need one while it runs wait for it, and the next `fsync` covers all of them (group
//! commit). Who does it depends on company:
//!
//! - a lone commit (its run the only one in flight, no other durable commit waiting,
//!   and the last `fsync` covered one commit) does its `fsync` itself: the whole call
//!   stays on one thread, with no hand-off to a writer thread and back, which on a VM
//!   costs more CPU than the `fsync`;
//! - under concurrent load the `fsync` is handed to the log's thread, so the async
//!   runtime's workers keep running calls while the disk works.
//!
//! The log's thread also does what is due by time: bringing `HEAD` up to date (at most
//! `TICK` behind what is durable), the checkpoint by time, and the clean close. It
//! sleeps while the log is idle; the first durable commit after a quiet spell wakes it.

use super::*;

/// What the log's lock guards: the open segment, the chain head and the witness.
pub(super) struct Core {
    pub(super) writer: Writer,
    pub(super) witness: Option<Witness>,
    /// What `HEAD` says now: (seq, open_from).
    pub(super) head_written: Option<(u64, u64)>,
    /// An `fsync` outside the lock is running (a caller's or the thread's).
    pub(super) syncing: bool,
    /// The log's thread was asked for an `fsync` and has not started it yet.
    pub(super) sync_wanted: bool,
    /// Durable commits written since the last `fsync` started.
    pub(super) pending: u64,
    /// The last `fsync` covered more than one durable commit: company.
    pub(super) last_shared: bool,
    /// The log was closed: appends fail.
    pub(super) closed: bool,
}

/// What wakes the maintenance thread.
pub(super) enum Control {
    /// Records became durable after a quiet spell: `HEAD` is behind.
    Wake,
    /// Durable commits wait under concurrent load: `fsync` them.
    Sync,
    /// Sign what is unsigned, write `HEAD` (clean) and stop.
    Close,
}

/// Everything a handle and the maintenance thread share.
pub(super) struct Shared {
    pub(super) core: Mutex<Core>,
    /// Wakes the callers waiting for an `fsync` a leader is doing.
    pub(super) synced: tokio::sync::Notify,
    pub(super) runs: Arc<Runs>,
    /// Set while appends fail (a write failed and nothing has been written since).
    pub(super) failed: AtomicBool,
    /// The maintenance thread sleeps long (nothing was due): the next `fsync` wakes it.
    pub(super) quiet: AtomicBool,
    pub(super) control: mpsc::Sender<Control>,
}

impl Shared {
    /// The lock; a poisoned one (a panic while writing) refuses: the segment's state
    /// is unknown.
    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, Core>, AuditError> {
        self.core.lock().map_err(|_| AuditError::Failed)
    }

    /// Write `records` on this thread; the number of the last one.
    pub(super) fn write(&self, records: &[Entry], durable: bool) -> Result<u64, AuditError> {
        let mut core = self.lock()?;
        if core.closed {
            return Err(AuditError::Failed);
        }
        let written = core.writer.write(records.iter());
        if durable && written.is_ok() {
            core.pending += 1;
        }
        self.failed
            .store(written.is_err() || core.writer.broken, Ordering::Relaxed);
        self.runs
            .next_seq
            .store(core.writer.seq + 1, Ordering::Release);
        written.map(|()| core.writer.seq)
    }

    /// Wait until record `seq` is durable, leading an `fsync` when none is running.
    pub(super) async fn durable(&self, seq: u64) -> Result<(), AuditError> {
        loop {
            let notified = self.synced.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a leader finishing in between still wakes us.
            notified.as_mut().enable();
            let lead = {
                let mut core = self.lock()?;
                if core.writer.broken {
                    return Err(AuditError::Failed);
                }
                if core.writer.durable.0 >= seq {
                    return Ok(());
                }
                if core.syncing || core.sync_wanted {
                    None
                } else if core.pending <= 1
                    && !core.last_shared
                    && self.runs.active.load(Ordering::Relaxed) <= 1
                {
                    Some(core.start_sync())
                } else if self.control.send(Control::Sync).is_ok() {
                    core.sync_wanted = true;
                    None
                } else {
                    // The log's thread is gone: nobody else will fsync.
                    Some(core.start_sync())
                }
            };
            match lead {
                None => notified.await,
                // Synchronous from here to the end: a leader is never cancelled halfway.
                Some((file, upto, hash)) => self.lead(&file, upto, hash)?,
            }
        }
    }

    /// The log's thread was asked for an `fsync`: everything written so far, after a
    /// short wait for more company when the last one was shared (on these disks an
    /// `fsync` costs CPU as well as time).
    fn sync_for_others(&self) {
        if self.lock().is_ok_and(|core| core.last_shared) {
            std::thread::sleep(GROUP_COMMIT_WAIT);
        }
        let lead = match self.lock() {
            Ok(mut core) => {
                core.sync_wanted = false;
                let behind = core.writer.durable.0 < core.writer.seq;
                (behind && !core.syncing && !core.writer.broken).then(|| core.start_sync())
            }
            Err(_) => None,
        };
        match lead {
            Some((file, upto, hash)) => {
                let _ = self.lead(&file, upto, hash);
            }
            // An `fsync` running elsewhere covers the askers, or they are covered
            // already: wake them to look.
            None => self.synced.notify_waiters(),
        }
    }

    /// `fsync` everything written up to `upto` (this thread blocks for it: a lone call
    /// pays no hand-off), then release the callers waiting for it.
    fn lead(&self, file: &File, upto: u64, hash: String) -> Result<(), AuditError> {
        let synced = file.sync_data();
        let result = match self.lock() {
            Ok(mut core) => {
                let result = core.synced(upto, hash, synced);
                if result.is_err() {
                    self.failed.store(true, Ordering::Relaxed);
                }
                result
            }
            Err(e) => Err(e),
        };
        self.synced.notify_waiters();
        if self.quiet.swap(false, Ordering::AcqRel) {
            let _ = self.control.send(Control::Wake);
        }
        result
    }

    /// Run `f` on the core (a checkpoint, a key rotation: they write and sync under the
    /// lock), then release any caller its `fsync` covered.
    pub(super) fn with_core(
        &self,
        f: impl FnOnce(&mut Core, &AtomicBool, &Runs) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let result = {
            let mut core = self.lock()?;
            if core.closed {
                return Err(AuditError::Failed);
            }
            f(&mut core, &self.failed, &self.runs)
        };
        self.synced.notify_waiters();
        result
    }
}

/// The maintenance thread: `HEAD` and the checkpoint by time, then the clean close.
pub(super) fn run_maintenance(shared: &Shared, rx: &mpsc::Receiver<Control>) {
    let mut ticked = Instant::now();
    loop {
        let wait = match shared.lock() {
            Ok(core) => {
                let wait = core.until_due();
                // Set under the lock: a leader that makes records durable after this
                // sees it and wakes the thread; one before it left `HEAD` behind,
                // which `until_due` has seen.
                shared.quiet.store(wait > TICK, Ordering::Release);
                wait
            }
            Err(_) => break,
        };
        match rx.recv_timeout(wait) {
            Ok(Control::Close) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Control::Sync) => shared.sync_for_others(),
            Ok(Control::Wake) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if ticked.elapsed() >= TICK {
            ticked = Instant::now();
            let _ = shared.with_core(|core, failed, runs| {
                core.tick(failed, runs);
                Ok(())
            });
        }
    }
    if let Ok(mut core) = shared.lock() {
        core.close(&shared.runs);
        core.closed = true;
    }
    shared.synced.notify_waiters();
}

impl Core {
    /// Start an `fsync` outside the lock of everything written so far: the file and
    /// the chain position it makes durable.
    fn start_sync(&mut self) -> (Arc<File>, u64, String) {
        self.syncing = true;
        self.sync_wanted = false;
        self.last_shared = self.pending > 1;
        self.pending = 0;
        let w = &self.writer;
        (w.file.clone(), w.seq, w.hash.clone())
    }

    /// An `fsync` of everything up to `upto` returned `synced`.
    fn synced(
        &mut self,
        upto: u64,
        hash: String,
        synced: std::io::Result<()>,
    ) -> Result<(), AuditError> {
        self.syncing = false;
        if let Err(e) = synced {
            // After a failed fsync the page cache cannot be trusted: refuse for good.
            self.writer.broken = true;
            return Err(self.writer.error(e));
        }
        if upto > self.writer.durable.0 {
            self.writer.durable = (upto, hash);
        }
        let ready = self.writer.durable_checkpoints(upto);
        if let Some(witness) = &self.witness {
            for c in ready {
                witness.send(c);
            }
        }
        Ok(())
    }

    pub(super) fn rotate_key(
        &mut self,
        next: Arc<Signer>,
        failed: &AtomicBool,
        runs: &Runs,
    ) -> Result<(), AuditError> {
        let Some(c) = &self.writer.checkpoints else {
            return Err(AuditError::Io {
                path: self.writer.dir.display().to_string(),
                message: "this log is not signed: there is no key to rotate".into(),
            });
        };
        let old = c.signer.clone();
        let record = next.rotation(
            Some(old.public()),
            Some(&old),
            "rotated by the operator (warden audit rotate-key)",
            crate::now_ms(),
        );
        self.writer.write(std::iter::once(&record))?;
        if let Some(c) = &mut self.writer.checkpoints {
            c.signer = next;
        }
        self.checkpoint_now(failed, runs)
    }

    /// `fsync` under the lock (checkpoints, the close).
    fn sync(&mut self) -> Result<(), AuditError> {
        let ready = self.writer.sync()?;
        if let Some(witness) = &self.witness {
            for c in ready {
                witness.send(c);
            }
        }
        Ok(())
    }

    /// A checkpoint now, made durable (nothing when the chain's end is signed already).
    pub(super) fn checkpoint_now(
        &mut self,
        failed: &AtomicBool,
        runs: &Runs,
    ) -> Result<(), AuditError> {
        let result = self.writer.write_checkpoint().and_then(|()| self.sync());
        failed.store(result.is_err(), Ordering::Relaxed);
        runs.next_seq.store(self.writer.seq + 1, Ordering::Release);
        result
    }

    /// How long the thread may sleep before it has work of its own: a `TICK` while
    /// `HEAD` is behind what is durable, until the checkpoint by time is due while
    /// records wait for one, else `QUIET_TICK`. An idle log does not wake ten times a
    /// second, nor while a checkpoint is merely pending.
    fn until_due(&self) -> Duration {
        let w = &self.writer;
        if self.head_written.is_none_or(|(seq, _)| seq != w.durable.0) {
            return TICK;
        }
        match w.checkpoints.as_ref() {
            Some(c) if c.unsigned > 0 => c
                .interval
                .saturating_sub(c.last_at.elapsed())
                .clamp(TICK, QUIET_TICK),
            _ => QUIET_TICK,
        }
    }

    /// What is due by time: a checkpoint, and `HEAD`.
    fn tick(&mut self, failed: &AtomicBool, runs: &Runs) {
        let due = self
            .writer
            .checkpoints
            .as_ref()
            .is_some_and(|c| c.unsigned > 0 && c.last_at.elapsed() >= c.interval);
        if due {
            let _ = self.checkpoint_now(failed, runs);
        }
        self.keep_room();
        self.write_head(runs, false);
    }

    /// Lay zeros ahead of the records (and make them durable) when less than half of
    /// `ZERO_AHEAD` is left, so that callers' commits rarely do it themselves.
    fn keep_room(&mut self) {
        let w = &mut self.writer;
        let want = ZERO_AHEAD.min(w.max_segment_bytes.saturating_sub(w.size));
        if w.broken || w.zeroed.saturating_sub(w.size) >= want / 2 {
            return;
        }
        if w.make_room(want, ZERO_AHEAD).is_ok() {
            let _ = self.sync();
        }
    }

    /// Bring `HEAD` up to date with what is durable, if it changed.
    fn write_head(&mut self, runs: &Runs, clean: bool) {
        let w = &self.writer;
        if w.broken {
            return;
        }
        let (seq, hash) = w.durable.clone();
        let open_from = runs.oldest().map_or(seq + 1, |o| o.min(seq + 1));
        if !clean && self.head_written == Some((seq, open_from)) {
            return;
        }
        let head = Head {
            seq,
            hash,
            open_from,
            clean,
            ts_ms: crate::now_ms(),
        };
        match head::write(&w.dir, &head) {
            Ok(()) => self.head_written = Some((seq, open_from)),
            Err(e) => tracing::warn!(dir = %w.dir.display(), "cannot write the audit HEAD: {e}"),
        }
    }

    fn close(&mut self, runs: &Runs) {
        let failed = AtomicBool::new(false);
        let signed = self.checkpoint_now(&failed, runs);
        // A closed segment has no zero tail: readers see the records and nothing else.
        let trimmed = self.writer.trim();
        let synced = self.sync();
        // Clean only when nothing was lost and nothing is in flight.
        let clean = signed.is_ok()
            && synced.is_ok()
            && trimmed.is_ok()
            && self.writer.pending_failure.is_none()
            && runs.oldest().is_none();
        self.write_head(runs, clean);
        if let Some(witness) = &mut self.witness {
            witness.close();
        }
    }
}
