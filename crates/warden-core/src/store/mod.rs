//! What warden keeps: the audit log (files), and the embedded database (run history and
//! the approval queue's tables, schedules' and limits' state) with its migrations;
//! the same on a shared PostgreSQL when `[store] url` is set (`postgres`), with the
//! console's sessions (`sessions`), its queries written once for both (`sql`).

pub mod audit;
pub mod automation;
pub mod conn;
pub(crate) mod db;
pub mod postgres;
pub mod runs;
pub mod sessions;
pub mod sql;
pub mod suspensions;
pub mod upstream_pins;

/// Open (creating or migrating) the embedded store at `path`; its schema version.
pub fn open_embedded(path: &std::path::Path) -> Result<usize, db::SchemaError> {
    db::open(path, true).map(|_| db::SCHEMA_VERSION)
}
