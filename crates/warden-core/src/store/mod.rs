//! What warden keeps: the audit log (files), and the embedded database (run history and
//! the approval queue's tables, schedules' and limits' state) with its migrations.

pub mod audit;
pub mod automation;
pub(crate) mod db;
pub mod runs;
pub mod suspensions;
pub mod upstream_pins;
