//! The shared store on PostgreSQL (`[store] url`): connecting (the URL's password never
//! leaves this module: errors and logs name the server as `shown`), reconnecting after
//! the server went away, prepared statements kept per connection, the versioned
//! migrations of its schema, and `Sql` over a connection or a transaction.
//!
//! It must never run against a schema newer than it knows, nor migrate while another
//! host does (migrations take an advisory lock in their transaction).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use postgres::Client;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{GenericClient, NoTls};

use super::sql::{Db, Row, Sql, SqlError, Val, dollar_placeholders};

/// Migrations of the shared schema, in order; `warden_schema.version` records how many
/// have run. The tables mirror the embedded store's (the same queries run on both),
/// with integers as BIGINT; `hosts` is what a lease is: each host's last heartbeat.
const MIGRATIONS: &[&str] = &[
    // 1: the approval queue, its votes and webhook notices; schedules' pauses and fire
    // times claimed; trigger deliveries seen; limits' shared counts; the kill switch;
    // accepted upstream definitions; hosts' heartbeats.
    "
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
        required       BIGINT NOT NULL,
        created_ms     BIGINT NOT NULL,
        expires_ms     BIGINT NOT NULL,
        state          TEXT NOT NULL,
        state_ms       BIGINT NOT NULL,
        claimed_by     BIGINT,
        result         TEXT,
        holds          TEXT,
        owner          TEXT,
        sealed         BIGINT NOT NULL DEFAULT 0,
        started_by     TEXT,
        outcome        TEXT
    );
    CREATE INDEX approvals_by_state ON approvals(state, expires_ms);
    CREATE INDEX approvals_by_time ON approvals(created_ms, id);
    CREATE TABLE approval_votes (
        approval_id    TEXT NOT NULL REFERENCES approvals(id),
        seq            BIGINT NOT NULL,
        principal      TEXT NOT NULL,
        vote           TEXT NOT NULL,
        reason         TEXT,
        input_sha256   TEXT NOT NULL,
        at_ms          BIGINT NOT NULL,
        via            TEXT NOT NULL,
        audited        BIGINT NOT NULL DEFAULT 0,
        cast_by        TEXT,
        PRIMARY KEY (approval_id, seq)
    );
    CREATE INDEX votes_unaudited ON approval_votes(audited) WHERE audited = 0;
    CREATE TABLE approval_notices (
        approval_id    TEXT PRIMARY KEY REFERENCES approvals(id),
        payload        TEXT NOT NULL,
        attempts       BIGINT NOT NULL DEFAULT 0,
        next_ms        BIGINT NOT NULL,
        delivered_ms   BIGINT,
        gave_up        BIGINT NOT NULL DEFAULT 0,
        last_error     TEXT
    );
    CREATE INDEX notices_due ON approval_notices(next_ms) WHERE delivered_ms IS NULL AND gave_up = 0;
    CREATE TABLE schedules (
        name           TEXT PRIMARY KEY,
        seen_ms        BIGINT NOT NULL,
        paused         BIGINT NOT NULL DEFAULT 0,
        paused_by      TEXT,
        paused_ms      BIGINT,
        reason         TEXT
    );
    CREATE TABLE schedule_fires (
        name           TEXT NOT NULL,
        fire_ms        BIGINT NOT NULL,
        kind           TEXT NOT NULL,
        owner          TEXT NOT NULL,
        claimed_ms     BIGINT NOT NULL,
        PRIMARY KEY (name, fire_ms)
    );
    CREATE TABLE trigger_deliveries (
        name           TEXT NOT NULL,
        delivery       TEXT NOT NULL,
        at_ms          BIGINT NOT NULL,
        PRIMARY KEY (name, delivery)
    );
    CREATE INDEX deliveries_by_time ON trigger_deliveries(at_ms);
    CREATE TABLE limit_uses (
        limit_name     TEXT NOT NULL,
        key            TEXT NOT NULL,
        bucket_ms      BIGINT NOT NULL,
        amount         DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (limit_name, key, bucket_ms)
    );
    CREATE TABLE limit_buckets (
        limit_name     TEXT NOT NULL,
        key            TEXT NOT NULL,
        tokens         DOUBLE PRECISION NOT NULL,
        at_ms          BIGINT NOT NULL,
        PRIMARY KEY (limit_name, key)
    );
    -- One quota take: the takes of one limit and key in turn. Uses are summed per
    -- bucket (a calendar window is one bucket, a rolling one sixty); buckets that
    -- ended before the window are forgotten, and one that straddles its start still
    -- counts whole (a take is refused a little early, never admitted over the
    -- maximum). Refused: `taken` false.
    CREATE FUNCTION warden_quota_take(p_limit TEXT, p_key TEXT, p_start BIGINT,
        p_bucket BIGINT, p_bucket_len BIGINT, p_amount DOUBLE PRECISION,
        p_max DOUBLE PRECISION, p_force BOOLEAN)
    RETURNS TABLE (taken BOOLEAN, used_before DOUBLE PRECISION) LANGUAGE plpgsql AS $fn$
    DECLARE v_used DOUBLE PRECISION;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext(p_limit), hashtext(p_key));
        DELETE FROM limit_uses u WHERE u.limit_name = p_limit AND u.key = p_key
            AND u.bucket_ms + p_bucket_len <= p_start;
        SELECT coalesce(sum(u.amount), 0) INTO v_used FROM limit_uses u
            WHERE u.limit_name = p_limit AND u.key = p_key;
        IF NOT p_force AND ((p_amount > 0 AND v_used + p_amount > p_max)
                            OR (p_amount <= 0 AND v_used >= p_max)) THEN
            RETURN QUERY SELECT false, v_used;
            RETURN;
        END IF;
        IF p_amount > 0 THEN
            INSERT INTO limit_uses AS u (limit_name, key, bucket_ms, amount)
                VALUES (p_limit, p_key, p_bucket, p_amount)
                ON CONFLICT (limit_name, key, bucket_ms)
                DO UPDATE SET amount = u.amount + excluded.amount;
        END IF;
        RETURN QUERY SELECT true, v_used;
    END $fn$;
    -- One token of a rate's bucket, refilled by the time since the last take.
    CREATE FUNCTION warden_rate_take(p_limit TEXT, p_key TEXT, p_now BIGINT,
        p_per_ms DOUBLE PRECISION, p_burst DOUBLE PRECISION, p_force BOOLEAN)
    RETURNS TABLE (admitted BOOLEAN, tokens_left DOUBLE PRECISION) LANGUAGE plpgsql AS $fn$
    DECLARE v_tokens DOUBLE PRECISION; v_at BIGINT;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext(p_limit), hashtext(p_key));
        SELECT b.tokens, b.at_ms INTO v_tokens, v_at FROM limit_buckets b
            WHERE b.limit_name = p_limit AND b.key = p_key;
        IF NOT FOUND THEN
            v_tokens := p_burst;
            v_at := p_now;
        END IF;
        v_tokens := least(p_burst, v_tokens + greatest(0, p_now - v_at) * p_per_ms);
        IF v_tokens >= 1 THEN
            v_tokens := v_tokens - 1;
            admitted := true;
        ELSE
            admitted := p_force;
        END IF;
        INSERT INTO limit_buckets AS b (limit_name, key, tokens, at_ms)
            VALUES (p_limit, p_key, v_tokens, greatest(p_now, v_at))
            ON CONFLICT (limit_name, key) DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms;
        tokens_left := v_tokens;
        RETURN NEXT;
    END $fn$;
    -- Every change to the queue is announced to the other hosts (LISTEN), with its
    -- commit and at no extra round trip.
    CREATE FUNCTION warden_announce() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        PERFORM pg_notify('warden_changes', '');
        RETURN NULL;
    END $fn$;
    CREATE TRIGGER approvals_announce AFTER INSERT OR UPDATE ON approvals
        FOR EACH STATEMENT EXECUTE FUNCTION warden_announce();
    CREATE TRIGGER votes_announce AFTER INSERT OR UPDATE ON approval_votes
        FOR EACH STATEMENT EXECUTE FUNCTION warden_announce();
    CREATE TABLE suspensions (
        kind           TEXT NOT NULL,
        name           TEXT NOT NULL,
        reason         TEXT NOT NULL,
        by             TEXT NOT NULL,
        at_ms          BIGINT NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE TRIGGER suspensions_announce AFTER INSERT OR UPDATE OR DELETE ON suspensions
        FOR EACH STATEMENT EXECUTE FUNCTION warden_announce();
    CREATE TABLE upstream_pins (
        upstream       TEXT NOT NULL,
        tool           TEXT NOT NULL,
        digest         TEXT NOT NULL,
        definition     TEXT NOT NULL,
        accepted_by    TEXT NOT NULL,
        accepted_ms    BIGINT NOT NULL,
        PRIMARY KEY (upstream, tool)
    );
    CREATE TABLE hosts (
        token          TEXT PRIMARY KEY,
        host           TEXT NOT NULL,
        started_ms     BIGINT NOT NULL,
        seen_ms        BIGINT NOT NULL
    );
    ",
    // 2: run history (every host's runs, each naming its host) and what runs used, per
    // minute, caller and host; the console's sessions.
    "
    CREATE TABLE runs (
        id              TEXT PRIMARY KEY,
        started_ms      BIGINT NOT NULL,
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
        policy_us       BIGINT NOT NULL,
        instantiate_us  BIGINT NOT NULL,
        execute_us      BIGINT NOT NULL,
        total_us        BIGINT NOT NULL,
        fuel_used       BIGINT,
        peak_memory     BIGINT NOT NULL,
        host_calls      BIGINT NOT NULL,
        approval        TEXT,
        started_by      TEXT,
        cost            DOUBLE PRECISION NOT NULL DEFAULT 0,
        egress_requests BIGINT NOT NULL DEFAULT 0,
        egress_bytes    BIGINT NOT NULL DEFAULT 0,
        host            TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX runs_by_time ON runs(started_ms, id);
    CREATE INDEX runs_by_tool ON runs(tool, started_ms);
    CREATE INDEX runs_by_status ON runs(status, started_ms);
    CREATE INDEX runs_by_origin ON runs(started_by, started_ms) WHERE started_by IS NOT NULL;
    CREATE TABLE usage_minutes (
        minute_ms       BIGINT NOT NULL,
        principal       TEXT NOT NULL,
        plugin          TEXT NOT NULL,
        tool            TEXT NOT NULL,
        started_by      TEXT NOT NULL,
        host            TEXT NOT NULL,
        calls           BIGINT NOT NULL,
        cost            DOUBLE PRECISION NOT NULL,
        wall_us         BIGINT NOT NULL,
        fuel            BIGINT NOT NULL,
        egress_requests BIGINT NOT NULL,
        egress_bytes    BIGINT NOT NULL,
        PRIMARY KEY (minute_ms, principal, plugin, tool, started_by, host)
    );
    CREATE TABLE console_sessions (
        key            TEXT PRIMARY KEY,
        token          TEXT NOT NULL,
        principal      TEXT NOT NULL,
        csrf           TEXT NOT NULL,
        created_ms     BIGINT NOT NULL,
        seen_ms        BIGINT NOT NULL
    );
    ",
];

/// The schema version this warden writes to PostgreSQL.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The channel every change to the queue is announced on (by a trigger; hosts
/// `LISTEN`), so hosts wake on each other's changes instead of polling.
pub const CHANGES: &str = "warden_changes";

/// What this process did with the shared store, for `/metrics` and the benchmarks:
/// round trips (every statement, prepare, BEGIN and COMMIT is one), failures,
/// connections made and open, and whether the last attempt reached the server.
#[derive(Default)]
pub struct Stats {
    pub round_trips: AtomicU64,
    pub errors: AtomicU64,
    pub connects: AtomicU64,
    pub open: AtomicI64,
    /// 1 when the last statement or connection reached the server, 0 when it did not.
    pub up: AtomicI64,
}

pub static STATS: Stats = Stats {
    round_trips: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    connects: AtomicU64::new(0),
    open: AtomicI64::new(0),
    up: AtomicI64::new(1),
};

fn trip(n: u64) {
    STATS.round_trips.fetch_add(n, Ordering::Relaxed);
}

/// How long a connection that failed is not tried again: meanwhile every use fails
/// at once with the same error instead of waiting on the server again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An arbitrary constant: the advisory lock migrations hold.
const MIGRATION_LOCK: i64 = 0x7761_7264_656e;

/// Where the shared store is, with the URL kept out of every message.
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    /// `postgres://user@host:port/db`: what errors and `store check` show.
    pub shown: String,
    /// How TLS is spoken: `None` when the URL says `sslmode=disable`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    /// Parse `url` (a `postgres://` URL or `key=value` pairs). The error never
    /// repeats the URL (it may hold a password). TLS is spoken unless the URL says
    /// `sslmode=disable`, with the server's certificate checked against the public
    /// roots (Mozilla's) and the certificates in `ca_file` (PEM), host name included:
    /// `sslmode=require` fails closed on a certificate it cannot check.
    pub fn parse(url: &str, ca_file: Option<&std::path::Path>) -> Result<Target, String> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("warden");
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "postgres://{}@{}:{port}/{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            config.get_dbname().unwrap_or("")
        );
        let tls = match config.get_ssl_mode() {
            postgres::config::SslMode::Disable => None,
            _ => Some(tls(ca_file)?),
        };
        Ok(Target { config, shown, tls })
    }

    /// A new connection.
    pub fn connect(&self) -> Result<postgres::Client, SqlError> {
        STATS.connects.fetch_add(1, Ordering::Relaxed);
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        match connected {
            Ok(client) => {
                STATS.up.store(1, Ordering::Relaxed);
                Ok(client)
            }
            Err(e) => {
                STATS.errors.fetch_add(1, Ordering::Relaxed);
                STATS.up.store(0, Ordering::Relaxed);
                Err(SqlError(format!("cannot connect: {}", cause(&e))))
            }
        }
    }
}

/// A TLS client that trusts the public roots and `ca_file`'s certificates.
fn tls(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display();
        let mut added = 0;
        for cert in
            CertificateDer::pem_file_iter(path).map_err(|e| format!("ca_file {shown}: {e}"))?
        {
            let cert = cert.map_err(|e| format!("ca_file {shown}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {shown}: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("ca_file {shown}: no certificate in it"));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A driver error with its cause (the server's message), never a parameter's value.
fn cause(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match e.source() {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

/// Create or migrate the schema at `target`; the version it is at. Refuses a schema
/// a newer warden wrote.
pub fn migrate(client: &mut postgres::Client) -> Result<i64, SqlError> {
    let newer = |found: i64| {
        SqlError(format!(
            "schema version {found} was written by a newer warden (this one knows {SCHEMA_VERSION})"
        ))
    };
    // Every connection a host opens comes here: when the schema is current (the usual
    // case) that is two reads, with no lock and no write.
    match version(client)? {
        SCHEMA_VERSION => return Ok(SCHEMA_VERSION),
        found if found > SCHEMA_VERSION => return Err(newer(found)),
        _ => {}
    }
    let err = |e: postgres::Error| SqlError(cause(&e));
    let mut tx = client.transaction().map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS warden_schema (version BIGINT NOT NULL)")
        .map_err(err)?;
    let found: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM warden_schema", &[])
        .map_err(err)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(newer(found));
    }
    let start = usize::try_from(found).unwrap_or(0);
    for migration in &MIGRATIONS[start..] {
        tx.batch_execute(migration).map_err(err)?;
    }
    tx.execute("DELETE FROM warden_schema", &[]).map_err(err)?;
    tx.execute(
        "INSERT INTO warden_schema (version) VALUES ($1)",
        &[&SCHEMA_VERSION],
    )
    .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(SCHEMA_VERSION)
}

/// The version the schema at `client` is at, without changing it (0: none yet).
pub fn version(client: &mut postgres::Client) -> Result<i64, SqlError> {
    let err = |e: postgres::Error| SqlError(cause(&e));
    let exists: bool = client
        .query_one("SELECT to_regclass('warden_schema') IS NOT NULL", &[])
        .map_err(err)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one("SELECT coalesce(max(version), 0) FROM warden_schema", &[])
        .map_err(err)?
        .get(0))
}

fn relax(client: &mut postgres::Client) -> Result<(), SqlError> {
    trip(1);
    client
        .batch_execute("SET synchronous_commit = off")
        .map_err(|e| SqlError(cause(&e)))
}

/// One connection, reopened when the server went away; its statements prepared once.
pub struct PgDb {
    target: Target,
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
    /// The last failed connection: when, and why.
    failed: Option<(Instant, SqlError)>,
    /// Commits do not wait for the server's WAL flush (see `PgDb::relaxed`).
    relaxed: bool,
}

impl PgDb {
    /// Connect to `target` and bring its schema up to date.
    pub fn open(target: &Target) -> Result<PgDb, SqlError> {
        Self::open_with(target, false)
    }

    /// As `open`, but commits return before the server flushes them (a server crash
    /// may forget its last fraction of a second; a warden crash loses nothing): for
    /// counts whose last few takes may be forgotten, never for the queue.
    pub fn relaxed(target: &Target) -> Result<PgDb, SqlError> {
        Self::open_with(target, true)
    }

    fn open_with(target: &Target, relaxed: bool) -> Result<PgDb, SqlError> {
        let mut client = target.connect()?;
        migrate(&mut client)?;
        if relaxed {
            relax(&mut client)?;
        }
        STATS.open.fetch_add(1, Ordering::Relaxed);
        Ok(PgDb {
            target: target.clone(),
            client: Some(client),
            statements: HashMap::new(),
            failed: None,
            relaxed,
        })
    }

    fn client(&mut self) -> Result<&mut postgres::Client, SqlError> {
        if self.client.as_ref().is_none_or(postgres::Client::is_closed) {
            if let Some((at, e)) = &self.failed
                && at.elapsed() < RETRY_AFTER
            {
                return Err(e.clone());
            }
            self.statements.clear();
            match self.target.connect().and_then(|mut client| {
                if self.relaxed {
                    relax(&mut client)?;
                }
                Ok(client)
            }) {
                Ok(client) => {
                    self.client = Some(client);
                    self.failed = None;
                }
                Err(e) => {
                    let e = SqlError(format!("the database is unreachable ({})", e.0));
                    self.failed = Some((Instant::now(), e.clone()));
                    return Err(e);
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| SqlError("not connected".into()))
    }

    /// After a failure: forget a connection that is gone, so the next use reconnects.
    fn settle(&mut self, e: SqlError) -> SqlError {
        STATS.errors.fetch_add(1, Ordering::Relaxed);
        // SQLSTATE class 57 (the server is shutting down or restarting) and 08 (the
        // connection failed) end the session even before the driver notices; so do
        // the driver's own I/O and closed-connection errors, which can reach here
        // before its connection task has marked the client closed.
        let session_over = e.0.starts_with("57P")
            || e.0.starts_with("08")
            || e.0.starts_with("error communicating with the server")
            || e.0.starts_with("connection closed");
        if session_over || self.client.as_ref().is_none_or(postgres::Client::is_closed) {
            STATS.up.store(0, Ordering::Relaxed);
            self.client = None;
            self.statements.clear();
            if e.0.starts_with("the database is unreachable") {
                return e;
            }
            return SqlError(format!("the database is unreachable: {}", e.0));
        }
        e
    }
}

impl PgDb {
    /// Run `f` on the live connection (reconnecting first if it was lost) and its
    /// prepared statements; a failure that ended the session is noted for the next use.
    fn with_client(
        &mut self,
        f: impl FnOnce(
            &mut postgres::Client,
            &mut HashMap<String, postgres::Statement>,
        ) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        let result = self.client().map(drop).and_then(|()| {
            let PgDb {
                client, statements, ..
            } = self;
            match client.as_mut() {
                Some(client) => f(client, statements),
                None => Err(SqlError("not connected".into())),
            }
        });
        match result {
            Ok(()) => {
                STATS.up.store(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.settle(e)),
        }
    }
}

impl Db for PgDb {
    fn transaction(
        &mut self,
        durable: bool,
        body: &mut dyn FnMut(&mut dyn Sql) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        self.with_client(|client, statements| {
            let err = |e: postgres::Error| SqlError(cause(&e));
            trip(2);
            let mut tx = client.transaction().map_err(err)?;
            if !durable {
                trip(1);
                tx.batch_execute("SET LOCAL synchronous_commit = off")
                    .map_err(err)?;
            }
            body(&mut PgSql {
                client: &mut tx,
                statements,
            })?;
            tx.commit().map_err(err)
        })
    }

    fn read(
        &mut self,
        body: &mut dyn FnMut(&mut dyn Sql) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        self.with_client(|client, statements| body(&mut PgSql { client, statements }))
    }
}

/// `Sql` over a PostgreSQL connection or transaction.
struct PgSql<'a, C: GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, postgres::Statement>,
}

impl<C: GenericClient> PgSql<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, SqlError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        trip(1);
        let s = self
            .client
            .prepare(&dollar_placeholders(sql))
            .map_err(|e| SqlError(cause(&e)))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// Statements that cannot be prepared (transaction control, settings).
fn utility(sql: &str) -> bool {
    let head = sql.trim_start().to_ascii_uppercase();
    [
        "SAVEPOINT",
        "RELEASE",
        "ROLLBACK",
        "SET",
        "NOTIFY",
        "LISTEN",
    ]
    .iter()
    .any(|w| head.starts_with(w))
}

impl<C: GenericClient> Sql for PgSql<'_, C> {
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError> {
        trip(1);
        if params.is_empty() && utility(sql) {
            self.client
                .batch_execute(sql)
                .map_err(|e| SqlError(cause(&e)))?;
            return Ok(0);
        }
        let statement = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        self.client
            .execute(&statement, &refs)
            .map_err(|e| SqlError(cause(&e)))
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, SqlError> {
        trip(1);
        let statement = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        let rows = self
            .client
            .query(&statement, &refs)
            .map_err(|e| SqlError(cause(&e)))?;
        rows.iter().map(row).collect()
    }

    fn postgres(&self) -> bool {
        true
    }
}

fn row(r: &postgres::Row) -> Result<Row, SqlError> {
    let err = |e: postgres::Error| SqlError(cause(&e));
    let mut out = Vec::with_capacity(r.len());
    for (i, column) in r.columns().iter().enumerate() {
        let ty = column.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map_err(err)?.map(Val::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)
                .map_err(err)?
                .map(|v| Val::Int(v.into()))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)
                .map_err(err)?
                .map(|v| Val::Int(v.into()))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)
                .map_err(err)?
                .map(|v| Val::Int(v.into()))
        } else if *ty == Type::FLOAT8 {
            r.try_get::<_, Option<f64>>(i).map_err(err)?.map(Val::Real)
        } else if *ty == Type::FLOAT4 {
            r.try_get::<_, Option<f32>>(i)
                .map_err(err)?
                .map(|v| Val::Real(v.into()))
        } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
            r.try_get::<_, Option<String>>(i)
                .map_err(err)?
                .map(Val::Text)
        } else {
            return Err(SqlError(format!(
                "column {} has type {ty}, which the shared store does not use",
                column.name()
            )));
        };
        out.push(v.unwrap_or(Val::Null));
    }
    Ok(Row(out))
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => Err(format!("an integer given for a {ty} parameter").into()),
            },
            Val::Real(v) => v.to_sql(ty, out),
            Val::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl Drop for PgDb {
    fn drop(&mut self) {
        STATS.open.fetch_sub(1, Ordering::Relaxed);
    }
}
