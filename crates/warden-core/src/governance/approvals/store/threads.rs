//! The queue's threads: the writer (batches of changes, each in its own savepoint of
//! one transaction; on the shared store also the host's heartbeat) and, on the shared
//! store, the listener that wakes this host when another changed the queue.
//!
//! It must never tell a caller its change is done before the commit is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use crate::store::postgres::{CHANGES, Target};
use crate::store::sql::{Db, Sql, SqlError, vals};

/// One change: run in its own savepoint; says whether it succeeded and what to tell
/// its caller once the commit is known.
pub(in crate::governance::approvals) struct Job {
    pub(super) run: RunJob,
    /// Tells the caller its change was not made (the transaction failed before it
    /// ran), when `run` never runs.
    pub(super) fail: Reply,
    /// The caller must not be answered before the commit is durable.
    pub(super) durable: bool,
}
pub(super) type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
pub(super) type RunJob = Box<dyn FnOnce(&mut dyn Sql) -> (bool, Reply) + Send>;

/// Most changes committed together.
pub(super) const MAX_BATCH: usize = 256;

/// This host in the shared store's `hosts` table, refreshed while it lives.
pub(super) struct Heartbeat {
    pub(super) token: String,
    pub(super) host: String,
    pub(super) every: Duration,
}

/// Record `token` alive now, by the database's clock (hosts' clocks may disagree).
pub(super) fn beat(sql: &mut dyn Sql, token: &str, host: &str) -> Result<(), SqlError> {
    sql.execute(
        "INSERT INTO hosts (token, host, started_ms, seen_ms)
         VALUES (?1, ?2, (extract(epoch from clock_timestamp()) * 1000)::bigint,
                 (extract(epoch from clock_timestamp()) * 1000)::bigint)
         ON CONFLICT (token) DO UPDATE SET seen_ms = excluded.seen_ms",
        vals![token, host],
    )?;
    Ok(())
}

/// Forget hosts not seen for a day that hold no claim (every short-lived command that
/// opened the shared queue left one).
pub(super) fn forget_old_hosts(sql: &mut dyn Sql) -> Result<(), SqlError> {
    sql.execute(
        "DELETE FROM hosts WHERE seen_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint - 86400000
           AND token NOT IN (SELECT owner FROM approvals WHERE state = 'executing' AND owner IS NOT NULL)",
        &[],
    )?;
    Ok(())
}

/// The writer thread's loop: batches until every sender is gone.
pub(super) fn write_loop(
    db: &mut dyn Db,
    rx: Receiver<Job>,
    notify: Arc<tokio::sync::Notify>,
    heartbeat: Option<Heartbeat>,
) {
    let mut beaten = Instant::now();
    loop {
        let first = match &heartbeat {
            None => match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            },
            Some(h) => match rx.recv_timeout(h.every.saturating_sub(beaten.elapsed())) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        if let Some(h) = &heartbeat
            && beaten.elapsed() >= h.every
        {
            let beat = db.transaction(false, &mut |sql| beat(sql, &h.token, &h.host));
            if let Err(e) = beat {
                tracing::warn!("approval queue: heartbeat: {e}");
            }
            beaten = Instant::now();
        }
        let Some(first) = first else {
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(db, batch);
        notify.notify_waiters();
    }
}

/// Run `batch` in one transaction, each job in its own savepoint, then tell every
/// job's caller how the commit went.
pub(super) fn commit_batch(db: &mut dyn Db, batch: Vec<Job>) {
    let mut replies = Vec::with_capacity(batch.len());
    let durable = batch.iter().any(|j| j.durable);
    let mut waiting: std::collections::VecDeque<Job> = batch.into();
    // One change alone needs no savepoint: the transaction is its savepoint.
    let alone = waiting.len() == 1;
    let mut refused = false;
    let committed = db.transaction(durable, &mut |tx| {
        while let Some(job) = waiting.pop_front() {
            if alone {
                let (ok, reply) = (job.run)(tx);
                replies.push(reply);
                if !ok {
                    // Undone with the transaction; its caller gets its own error.
                    refused = true;
                    return Err(SqlError("refused".into()));
                }
                continue;
            }
            if let Err(e) = tx.execute("SAVEPOINT job", &[]) {
                waiting.push_front(job);
                return Err(e);
            }
            let (ok, reply) = (job.run)(tx);
            replies.push(reply);
            if !ok {
                tx.execute("ROLLBACK TO SAVEPOINT job", &[])?;
            }
            tx.execute("RELEASE SAVEPOINT job", &[])?;
        }
        Ok(())
    });
    let committed = match committed {
        Err(_) if refused => Ok(()),
        other => other.map_err(|e| e.0),
    };
    for reply in replies {
        reply(committed.clone());
    }
    // Never run: the transaction failed first (the connection was lost, say).
    let why = committed.err().unwrap_or_else(|| "not run".into());
    for job in waiting {
        (job.fail)(Err(why.clone()));
    }
}

/// Wake `notify` whenever another host changes the shared queue; also after a lost
/// connection comes back (changes may have been missed meanwhile). Stops when `stop`
/// is set (within a second).
pub(super) fn listen(
    target: Target,
    notify: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("warden-approvals-listen".into())
        .spawn(move || {
            let mut client: Option<postgres::Client> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(c) = client.as_mut().filter(|c| !c.is_closed()) else {
                    client = target.connect().ok().and_then(|mut c| {
                        c.batch_execute(&format!("LISTEN {CHANGES}")).ok()?;
                        Some(c)
                    });
                    if client.is_some() {
                        notify.notify_waiters();
                    } else {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    continue;
                };
                let got = c
                    .notifications()
                    .timeout_iter(Duration::from_secs(1))
                    .next();
                match got {
                    Ok(Some(_)) => {
                        // A burst of changes: one wake-up.
                        while let Ok(Some(_)) = c.notifications().iter().next() {}
                        notify.notify_waiters();
                    }
                    Ok(None) => {}
                    Err(_) => client = None,
                }
            }
        })
}
