//! `warden store migrate` and `warden store check`: the store the config names (the
//! embedded SQLite file, or the PostgreSQL `[store] url` shares between hosts), its
//! schema version, and whether it answers.
//!
//! Neither ever prints the store's URL (it may hold a password): the server is named
//! as `postgres://user@host:port/db`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use warden_core::config::Config;
use warden_core::store::postgres;
use warden_core::store::sql::SqlError;

use crate::exit;
use crate::output::print;

#[derive(Subcommand, Clone)]
pub enum StoreCommand {
    /// Create the shared store's schema or bring it up to this warden's version (hosts
    /// also do this when they start; a schema newer than this warden is refused).
    Migrate,
    /// Connect, report the schema version against this warden's, and the round-trip
    /// time. Exit 5 when the store is unreachable or its schema is not this warden's.
    Check {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config_path: &Path, command: StoreCommand) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    // The PostgreSQL driver blocks, and must not do so on the async runtime's thread.
    std::thread::spawn(move || on_thread(&config, &command))
        .join()
        .map_err(|_| anyhow::anyhow!("the store command panicked"))?
}

fn on_thread(config: &Config, command: &StoreCommand) -> Result<ExitCode> {
    let Some(target) = config.store.shared.clone() else {
        return embedded(config, command);
    };
    match command {
        StoreCommand::Migrate => {
            let mut client = target.connect().with_context(|| target.shown.clone())?;
            let version = postgres::migrate(&mut client)
                .with_context(|| format!("migrating {}", target.shown))?;
            println!("{}: schema version {version}", target.shown);
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Check { json } => {
            let started = Instant::now();
            let reached = target.connect().and_then(|mut client| {
                let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
                let version = postgres::version(&mut client)?;
                let at = Instant::now();
                let tls: bool = client
                    .query_one(
                        "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                        &[],
                    )
                    .map_err(|e| warden_core::store::sql::SqlError(e.to_string()))?
                    .get(0);
                let rtt_ms = at.elapsed().as_secs_f64() * 1000.0;
                let cluster = cluster(&mut client, version)?;
                Ok((connect_ms, version, rtt_ms, tls, cluster))
            });
            let known = postgres::SCHEMA_VERSION;
            let (ok, report) = match &reached {
                Ok((connect_ms, version, rtt_ms, tls, cluster)) => (
                    *version == known && !cluster.standby,
                    json!({"store": target.shown, "reachable": true, "schema_version": version,
                           "known_version": known, "connect_ms": connect_ms, "round_trip_ms": rtt_ms,
                           "tls": tls, "standby": cluster.standby, "replicas": cluster.replicas,
                           "replay_lag_ms": cluster.lag_ms,
                           "hosts": cluster.hosts.iter()
                               .map(|(h, ago)| json!({"host": h, "seen_ms_ago": ago}))
                               .collect::<Vec<_>>()}),
                ),
                Err(e) => (
                    false,
                    json!({"store": target.shown, "reachable": false, "error": e.to_string(),
                           "known_version": known}),
                ),
            };
            if *json {
                print(&format!("{report:#}\n"))?;
            } else {
                match &reached {
                    Ok((connect_ms, version, rtt_ms, tls, cluster)) => print(&format!(
                        "store: {}\nreachable: yes (connect {connect_ms:.1} ms, round trip {rtt_ms:.2} ms, {})\nschema version: {version} (this warden: {known}){}\n{}",
                        target.shown,
                        if *tls { "TLS" } else { "no TLS" },
                        match version.cmp(&known) {
                            std::cmp::Ordering::Equal => "",
                            std::cmp::Ordering::Less => " - run `warden store migrate`",
                            std::cmp::Ordering::Greater => " - written by a newer warden",
                        },
                        cluster.describe()
                    ))?,
                    Err(e) => print(&format!("store: {}\nreachable: no: {e}\n", target.shown))?,
                }
            }
            Ok(ExitCode::from(if ok {
                exit::OK
            } else {
                exit::NOT_RECORDED
            }))
        }
    }
}

/// The server's place among its replicas, and the hosts using it.
struct Cluster {
    /// The server is a standby (read-only): warden needs the primary.
    standby: bool,
    replicas: i64,
    /// The largest replay lag of a replica, when the server knows it.
    lag_ms: Option<f64>,
    /// Each host's name and how long ago its last heartbeat was.
    hosts: Vec<(String, i64)>,
}

impl Cluster {
    fn describe(&self) -> String {
        let mut out = String::new();
        if self.standby {
            out += "server: a standby (read-only): point [store] url at the primary\n";
        }
        out += &match (self.replicas, self.lag_ms) {
            (0, _) => "replicas: none\n".to_string(),
            (n, Some(lag)) => format!("replicas: {n} (replay lag at most {lag:.1} ms)\n"),
            (n, None) => format!("replicas: {n} (replay lag unknown)\n"),
        };
        if self.hosts.is_empty() {
            out += "hosts: none seen\n";
        }
        for (host, ago) in &self.hosts {
            out += &format!("host {host}: heartbeat {:.1} s ago\n", *ago as f64 / 1000.0);
        }
        out
    }
}

fn cluster(client: &mut postgres::Client, version: i64) -> Result<Cluster, SqlError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_replication),
                    (SELECT CAST(EXTRACT(EPOCH FROM max(replay_lag)) * 1000 AS DOUBLE PRECISION)
                     FROM pg_stat_replication)",
            &[],
        )
        .map_err(|e| SqlError(e.to_string()))?;
    let hosts = if version >= 1 {
        client
            .query(
                "SELECT host, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) - seen_ms
                 FROM hosts ORDER BY host",
                &[],
            )
            .map_err(|e| SqlError(e.to_string()))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Cluster {
        standby: row.get(0),
        replicas: row.get(1),
        lag_ms: row.get(2),
        hosts,
    })
}

/// The embedded store: opening it migrates it.
fn embedded(config: &Config, command: &StoreCommand) -> Result<ExitCode> {
    let path = &config.runs_db;
    let schema = warden_core::store::open_embedded(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match command {
        StoreCommand::Migrate => println!("{}: schema version {schema}", path.display()),
        StoreCommand::Check { json: true } => print(&format!(
            "{:#}\n",
            json!({"store": path.display().to_string(), "reachable": true, "schema_version": schema})
        ))?,
        StoreCommand::Check { json: false } => print(&format!(
            "store: {} (embedded)\nschema version: {schema}\n",
            path.display()
        ))?,
    }
    Ok(ExitCode::SUCCESS)
}
