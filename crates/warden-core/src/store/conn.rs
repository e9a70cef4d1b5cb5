//! A store's connection as its callers hold it: on the caller's thread behind a lock
//! (SQLite), or on a thread of its own that runs the caller's queries and hands back
//! the answer (PostgreSQL: its driver blocks, and must never do so on an async
//! runtime's thread, which it refuses).
//!
//! It must never leave a write half-applied: `write` runs in one transaction.

use std::sync::Mutex;
use std::sync::mpsc::Sender;

use super::postgres::{PgDb, Target};
use super::sql::{Db, Sql, SqlError};

type Job = Box<dyn FnOnce(&mut dyn Db) + Send>;

pub enum Conn {
    Local(Mutex<Box<dyn Db>>),
    Thread(Mutex<Sender<Job>>),
}

impl Conn {
    /// `db` used on the caller's thread.
    pub fn local(db: impl Db + 'static) -> Conn {
        Conn::Local(Mutex::new(Box::new(db)))
    }

    /// `db` used on a thread of its own, named `name`; it ends when this is dropped.
    pub fn thread(db: impl Db + 'static, name: &str) -> std::io::Result<Conn> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let mut db: Box<dyn Db> = Box::new(db);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut *db);
                }
            })?;
        Ok(Conn::Thread(Mutex::new(tx)))
    }

    /// A connection to the shared store at `target`, on a thread named `name`
    /// (connected there, too: the driver blocks). `relaxed`: see `PgDb::relaxed`.
    pub fn shared(target: &Target, name: &str, relaxed: bool) -> Result<Conn, String> {
        let them = target.clone();
        let db = std::thread::spawn(move || {
            if relaxed {
                PgDb::relaxed(&them)
            } else {
                PgDb::open(&them)
            }
        })
        .join()
        .map_err(|_| "connecting panicked".to_string())?
        .map_err(|e| e.0)?;
        Conn::thread(db, name).map_err(|e| e.to_string())
    }

    /// Run `f` on the connection, outside a transaction.
    pub fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, SqlError> + Send + 'static,
    ) -> Result<T, SqlError> {
        self.on(move |db| once(f, |body| db.read(body)))
    }

    /// Run `f` in one transaction, committed (durably, when `durable`) before this
    /// returns `Ok`; undone when `f` fails.
    pub fn write<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, SqlError> + Send + 'static,
    ) -> Result<T, SqlError> {
        self.on(move |db| once(f, |body| db.transaction(durable, body)))
    }

    /// Run `f` (one statement, committing on its own) on the connection's thread
    /// without waiting for it; a failure is logged. On a local connection it runs now.
    pub fn detach(&self, f: impl FnOnce(&mut dyn Sql) -> Result<(), SqlError> + Send + 'static) {
        let job = move |db: &mut dyn Db| {
            if let Err(e) = once(f, |body| db.autocommit(body)) {
                tracing::warn!("the shared store: {e}");
            }
        };
        match self {
            Conn::Local(db) => job(&mut **db.lock().unwrap_or_else(|p| p.into_inner())),
            Conn::Thread(jobs) => {
                if let Ok(jobs) = jobs.lock() {
                    let _ = jobs.send(Box::new(job));
                }
            }
        }
    }

    fn on<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, SqlError> + Send + 'static,
    ) -> Result<T, SqlError> {
        match self {
            Conn::Local(db) => {
                let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut **db)
            }
            Conn::Thread(jobs) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let job: Job = Box::new(move |db: &mut dyn Db| {
                    let _ = tx.send(f(db));
                });
                let stopped = || SqlError("the store's connection thread has stopped".into());
                let sent = jobs.lock().map(|j| j.send(job).is_ok()).unwrap_or(false);
                if !sent {
                    return Err(stopped());
                }
                rx.recv().map_err(|_| stopped())?
            }
        }
    }
}

/// Run `f` once through `run`, which takes a body it may call (a read or a
/// transaction); `f`'s answer.
fn once<T>(
    f: impl FnOnce(&mut dyn Sql) -> Result<T, SqlError>,
    run: impl FnOnce(&mut dyn FnMut(&mut dyn Sql) -> Result<(), SqlError>) -> Result<(), SqlError>,
) -> Result<T, SqlError> {
    let mut out = None;
    let mut f = Some(f);
    run(&mut |sql| {
        if let Some(f) = f.take() {
            out = Some(f(sql)?);
        }
        Ok(())
    })?;
    out.ok_or_else(|| SqlError("the query did not run".into()))
}
