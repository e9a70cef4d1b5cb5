//! The writer thread: group commit, control messages (checkpoints, key rotation), the
//! periodic `HEAD` update and checkpoint by time, and the clean close.

use super::*;

/// What the writer thread owns: the open segment, the chain head and the witness.
pub(super) struct Core {
    pub(super) writer: Writer,
    pub(super) witness: Option<Witness>,
    /// What `HEAD` says now: (seq, open_from).
    pub(super) head_written: Option<(u64, u64)>,
}

pub(super) fn run_writer(
    mut core: Core,
    rx: &mpsc::Receiver<Message>,
    runs: &Runs,
    failed: &AtomicBool,
) {
    let mut concurrent = false;
    let mut ticked = Instant::now();
    loop {
        let wait = core.until_due();
        let message = match rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match message {
            Some(Message::Commit(first)) => {
                // Under concurrent load, linger briefly so one fsync covers more
                // callers: on this kind of disk an fsync costs CPU as well as time.
                if concurrent {
                    std::thread::sleep(GROUP_COMMIT_WAIT);
                }
                let mut batch = vec![first];
                let mut after = Vec::new();
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Message::Commit(more)) => batch.push(more),
                        Ok(other) => {
                            after.push(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                concurrent = batch.len() > 1;
                core.commit(batch, failed, runs);
                let mut closing = false;
                for m in after {
                    match m {
                        Message::Close => closing = true,
                        other => core.control(other, failed, runs),
                    }
                }
                if closing {
                    break;
                }
            }
            Some(Message::Close) => break,
            Some(other) => core.control(other, failed, runs),
            None => {}
        }
        if ticked.elapsed() >= TICK {
            ticked = Instant::now();
            core.tick(failed, runs);
        }
    }
    core.close(runs);
}

impl Core {
    fn commit(&mut self, batch: Vec<Commit>, failed: &AtomicBool, runs: &Runs) {
        let written = self
            .writer
            .write(batch.iter().flat_map(|c| c.records.iter()));
        let (durable, written_only): (Vec<Commit>, Vec<Commit>) =
            batch.into_iter().partition(|c| c.durable);
        let synced = if durable.is_empty() {
            written.clone()
        } else {
            written.clone().and_then(|()| self.sync())
        };
        failed.store(synced.is_err() || written.is_err(), Ordering::Relaxed);
        runs.next_seq.store(self.writer.seq + 1, Ordering::Release);
        for commit in written_only {
            let _ = commit.done.send(written.clone());
        }
        for commit in durable {
            let _ = commit.done.send(synced.clone());
        }
    }

    /// A checkpoint or a key rotation asked for.
    fn control(&mut self, message: Message, failed: &AtomicBool, runs: &Runs) {
        match message {
            Message::Checkpoint(done) => {
                let _ = done.send(self.checkpoint_now(failed, runs));
            }
            Message::Rotate(next, done) => {
                let _ = done.send(self.rotate_key(next, failed, runs));
            }
            Message::Commit(c) => self.commit(vec![c], failed, runs),
            Message::Close => {}
        }
    }

    fn rotate_key(
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
    fn checkpoint_now(&mut self, failed: &AtomicBool, runs: &Runs) -> Result<(), AuditError> {
        let result = self.writer.write_checkpoint().and_then(|()| self.sync());
        failed.store(result.is_err(), Ordering::Relaxed);
        runs.next_seq.store(self.writer.seq + 1, Ordering::Release);
        result
    }

    /// What is due by time: a checkpoint, and `HEAD`.
    /// Nothing to do until a record comes: `HEAD` says what is durable and no record
    /// waits for a checkpoint by time.
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

    fn tick(&mut self, failed: &AtomicBool, runs: &Runs) {
        let due = self
            .writer
            .checkpoints
            .as_ref()
            .is_some_and(|c| c.unsigned > 0 && c.last_at.elapsed() >= c.interval);
        if due {
            let _ = self.checkpoint_now(failed, runs);
        }
        self.write_head(runs, false);
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
        let synced = self.sync();
        // Clean only when nothing was lost and nothing is in flight.
        let clean = signed.is_ok()
            && synced.is_ok()
            && self.writer.pending_failure.is_none()
            && runs.oldest().is_none();
        self.write_head(runs, clean);
        if let Some(witness) = &mut self.witness {
            witness.close();
        }
    }
}
