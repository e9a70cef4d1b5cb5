//! The embedded store: one SQLite file (`<data_dir>/runs.db`, WAL) holding the run
//! history and the approval queue, and the versioned migrations of its schema.
//!
//! Owns opening a connection the same way everywhere and migrating it, so an old data
//! dir opens in a new warden. It must never open a schema written by a newer warden:
//! guessing at columns it does not know could lose an approval.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

/// Schema migrations, in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: run history.
    "
    CREATE TABLE runs (
        id              TEXT PRIMARY KEY,
        started_ms      INTEGER NOT NULL,
        principal       TEXT NOT NULL,
        tool            TEXT NOT NULL,
        plugin          TEXT NOT NULL,
        plugin_digest   TEXT NOT NULL,
        status          TEXT NOT NULL,
        input           TEXT NOT NULL,
        output          TEXT,
        error           TEXT,
        backtrace       TEXT,
        decisions       TEXT NOT NULL,
        log             TEXT NOT NULL,
        denied_requests TEXT NOT NULL,
        secret_reveals  TEXT NOT NULL,
        policy_us       INTEGER NOT NULL,
        instantiate_us  INTEGER NOT NULL,
        execute_us      INTEGER NOT NULL,
        total_us        INTEGER NOT NULL,
        fuel_used       INTEGER,
        peak_memory     INTEGER NOT NULL,
        host_calls      INTEGER NOT NULL
    );
    CREATE INDEX runs_by_time ON runs(started_ms);
    CREATE INDEX runs_by_tool ON runs(tool, started_ms);
    CREATE INDEX runs_by_status ON runs(status, started_ms);
    ",
    // 2: the approval queue, its votes, the webhook outbox; runs link to approvals.
    "
    ALTER TABLE runs ADD COLUMN approval TEXT;
    CREATE TABLE approvals (
        id             TEXT PRIMARY KEY,
        run_id         TEXT NOT NULL UNIQUE,
        principal      TEXT NOT NULL,
        tool           TEXT NOT NULL,
        plugin         TEXT NOT NULL,
        plugin_digest  TEXT NOT NULL,
        input          TEXT NOT NULL,
        input_sha256   TEXT NOT NULL,
        decisions      TEXT NOT NULL,
        tier           TEXT NOT NULL,
        reasons        TEXT NOT NULL,
        approvers      TEXT NOT NULL,
        required       INTEGER NOT NULL,
        created_ms     INTEGER NOT NULL,
        expires_ms     INTEGER NOT NULL,
        state          TEXT NOT NULL,
        state_ms       INTEGER NOT NULL,
        claimed_by     INTEGER,
        result         TEXT
    );
    CREATE INDEX approvals_by_state ON approvals(state, expires_ms);
    CREATE TABLE approval_votes (
        approval_id    TEXT NOT NULL REFERENCES approvals(id),
        seq            INTEGER NOT NULL,
        principal      TEXT NOT NULL,
        vote           TEXT NOT NULL,
        reason         TEXT,
        input_sha256   TEXT NOT NULL,
        at_ms          INTEGER NOT NULL,
        via            TEXT NOT NULL,
        audited        INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (approval_id, seq)
    );
    CREATE INDEX votes_unaudited ON approval_votes(audited) WHERE audited = 0;
    CREATE TABLE approval_notices (
        approval_id    TEXT PRIMARY KEY REFERENCES approvals(id),
        payload        TEXT NOT NULL,
        attempts       INTEGER NOT NULL DEFAULT 0,
        next_ms        INTEGER NOT NULL,
        delivered_ms   INTEGER,
        gave_up        INTEGER NOT NULL DEFAULT 0,
        last_error     TEXT
    );
    CREATE INDEX notices_due ON approval_notices(next_ms) WHERE delivered_ms IS NULL AND gave_up = 0;
    ",
    // 3: each holding policy's approvers; claims by a process's lock, not its pid; held
    // inputs sealed under the vault's key.
    "
    ALTER TABLE approvals ADD COLUMN holds TEXT;
    ALTER TABLE approvals ADD COLUMN owner TEXT;
    ALTER TABLE approvals ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
    ",
    // 4: what started a run when no caller did (a schedule, a trigger); schedules'
    // pauses and the fire times claimed (one runner per fire time, across processes);
    // trigger deliveries seen (a redelivery runs once).
    "
    ALTER TABLE runs ADD COLUMN started_by TEXT;
    CREATE INDEX runs_by_origin ON runs(started_by, started_ms) WHERE started_by IS NOT NULL;
    ALTER TABLE approvals ADD COLUMN started_by TEXT;
    CREATE TABLE schedules (
        name           TEXT PRIMARY KEY,
        seen_ms        INTEGER NOT NULL,
        paused         INTEGER NOT NULL DEFAULT 0,
        paused_by      TEXT,
        paused_ms      INTEGER,
        reason         TEXT
    );
    CREATE TABLE schedule_fires (
        name           TEXT NOT NULL,
        fire_ms        INTEGER NOT NULL,
        kind           TEXT NOT NULL,
        owner          TEXT NOT NULL,
        claimed_ms     INTEGER NOT NULL,
        PRIMARY KEY (name, fire_ms)
    );
    CREATE TABLE trigger_deliveries (
        name           TEXT NOT NULL,
        delivery       TEXT NOT NULL,
        at_ms          INTEGER NOT NULL,
        PRIMARY KEY (name, delivery)
    );
    CREATE INDEX deliveries_by_time ON trigger_deliveries(at_ms);
    ",
    // 5: what each run used that limits count (declared cost, outgoing HTTP), and the
    // same summed per minute and caller (so limits are rebuilt at start from a few rows
    // per minute, not from every run); the kill switch (suspended principals, plugins,
    // tools, schedules).
    "
    ALTER TABLE runs ADD COLUMN cost REAL NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN egress_requests INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN egress_bytes INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE usage_minutes (
        minute_ms       INTEGER NOT NULL,
        principal       TEXT NOT NULL,
        plugin          TEXT NOT NULL,
        tool            TEXT NOT NULL,
        started_by      TEXT NOT NULL,
        calls           INTEGER NOT NULL,
        cost            REAL NOT NULL,
        wall_us         INTEGER NOT NULL,
        fuel            INTEGER NOT NULL,
        egress_requests INTEGER NOT NULL,
        egress_bytes    INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, principal, plugin, tool, started_by)
    );
    CREATE TABLE suspensions (
        kind           TEXT NOT NULL,
        name           TEXT NOT NULL,
        reason         TEXT NOT NULL,
        by             TEXT NOT NULL,
        at_ms          INTEGER NOT NULL,
        PRIMARY KEY (kind, name)
    );
    ",
    // 6: requests newest first, in any state, by an index (the console's inbox and its
    // recently decided list, paged by cursor).
    "
    CREATE INDEX approvals_by_time ON approvals(created_ms, id);
    ",
    // 7: the accepted definition of each upstream MCP server's tools (first sight, or an
    // operator's `warden upstreams accept`).
    "
    CREATE TABLE upstream_pins (
        upstream       TEXT NOT NULL,
        tool           TEXT NOT NULL,
        digest         TEXT NOT NULL,
        definition     TEXT NOT NULL,
        accepted_by    TEXT NOT NULL,
        accepted_ms    INTEGER NOT NULL,
        PRIMARY KEY (upstream, tool)
    );
    ",
    // 8: what an executed request's run returned (for a caller waiting elsewhere);
    // which process recorded each vote (hosts sharing a store audit their own).
    "
    ALTER TABLE approvals ADD COLUMN outcome TEXT;
    ALTER TABLE approval_votes ADD COLUMN cast_by TEXT;
    ",
    // 9: which host ran each run, and usage per minute per host (the same tables in the
    // shared store, where several hosts write them; '' in the embedded one).
    "
    ALTER TABLE runs ADD COLUMN host TEXT NOT NULL DEFAULT '';
    CREATE TABLE usage_by_host (
        minute_ms       INTEGER NOT NULL,
        principal       TEXT NOT NULL,
        plugin          TEXT NOT NULL,
        tool            TEXT NOT NULL,
        started_by      TEXT NOT NULL,
        host            TEXT NOT NULL,
        calls           INTEGER NOT NULL,
        cost            REAL NOT NULL,
        wall_us         INTEGER NOT NULL,
        fuel            INTEGER NOT NULL,
        egress_requests INTEGER NOT NULL,
        egress_bytes    INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, principal, plugin, tool, started_by, host)
    );
    INSERT INTO usage_by_host
        SELECT minute_ms, principal, plugin, tool, started_by, '', calls, cost, wall_us, fuel,
               egress_requests, egress_bytes
        FROM usage_minutes;
    DROP TABLE usage_minutes;
    ALTER TABLE usage_by_host RENAME TO usage_minutes;
    ",
];

/// Why the store's schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error(
        "schema version {found} was written by a newer warden (this one knows {SCHEMA_VERSION})"
    )]
    Newer { found: usize },
}

/// The schema version this warden writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Open the store at `path`, creating or migrating it. `durable` connections fsync
/// every commit (the approval queue); others rely on WAL's checkpointing.
pub fn open(path: &Path, durable: bool) -> Result<Connection, SchemaError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Switching to WAL (and migrating) while another process does the same can answer
    // "locked" without waiting on the busy handler: such an open is tried again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match try_open(path, durable) {
            Err(SchemaError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn try_open(path: &Path, durable: bool) -> Result<Connection, SchemaError> {
    let mut conn = Connection::open(path)?;
    // Every query is prepared once per connection and kept (rusqlite keeps 16 by
    // default, fewer than a store's queries), and kept means kept: without the query
    // planner's stability guarantee SQLite prepares a statement again whenever a
    // parameter it compared against a partial index's condition is bound anew (the
    // request-and-votes query, against `votes_unaudited`: the console's inbox page of
    // 50 requests spent half its 6 ms parsing that query again).
    conn.set_prepared_statement_cache_capacity(256);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    let version = |c: &Connection| -> rusqlite::Result<usize> {
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok(usize::try_from(v).unwrap_or(0))
    };
    let newer = |found: usize| SchemaError::Newer { found };
    let v = version(conn)?;
    if v > SCHEMA_VERSION {
        return Err(newer(v));
    }
    if v == SCHEMA_VERSION {
        return Ok(());
    }
    // Immediate: two processes opening a fresh data dir must not both migrate.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let v = version(&tx)?;
    if v > SCHEMA_VERSION {
        return Err(newer(v));
    }
    for migration in &MIGRATIONS[v..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION as i64)?;
    Ok(tx.commit()?)
}
