//! The audit log: append-only JSON Lines segments under `<data_dir>/audit/`, every
//! record hash-chained to the one before it (across segments), group-committed,
//! anchored by `HEAD` beside it and by signed checkpoints a witness keeps elsewhere.
//!
//! - `entry`: one record's fields, built by the caller;
//! - `writer`: the writer thread (group commit, checkpoints, `HEAD`, failed writes cut
//!   back), opening a log (checked against `HEAD`), repairing one;
//! - `checkpoint`: the signing key, signed checkpoints and the witness;
//! - `head`: the `HEAD` file;
//! - `verify`: checking a log, live or copied;
//! - `search`: reading records back;
//! - `segments`: the files and the shape of a line.
//!
//! It must never acknowledge a record before it is durable, build on a record cut
//! short, append to a log that is shorter than its `HEAD` says, or let a call run whose
//! records could not be written (fail closed): nothing runs unaudited.

mod checkpoint;
mod cluster;
mod entry;
mod head;
mod search;
mod segments;
mod verify;
mod writer;

use std::path::Path;

use thiserror::Error;

pub use checkpoint::{Signer, WitnessConfig, parse_public_key, public_path};
pub use cluster::cross_check;
pub use entry::Entry;
pub use head::Head;
pub use search::{Search, each_from, each_matching, last_matching, read_all};
pub use segments::{is_live, wait_until_free};
pub use verify::{Problem, Verified, VerifyOptions, verify};
pub use writer::{AuditLog, AuditOptions, Caller, Repair, Repaired};

/// Why the log cannot be opened or take records. Every one of them stops calls: the
/// CLI exits 5 (not recorded).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("audit log {path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "audit log {path}: the last record is cut short ({bytes} bytes, a crash or a full disk mid-write?); `warden audit repair` cuts it (and records that it did)"
    )]
    TruncatedTail { path: String, bytes: u64 },
    #[error("audit log {path}: {message}")]
    BadHead { path: String, message: String },
    #[error(
        "audit log: {path} is missing, so the end of the log ({records} records) cannot be checked; nothing is appended until `warden audit repair --accept-missing-head` records that it was accepted"
    )]
    HeadMissing { path: String, records: u64 },
    #[error(
        "audit log {path} ends at record {last}, but its HEAD names record {head}: records {}..={head} are missing (deleted?); nothing is appended until `warden audit repair --accept-missing-records` records the loss", last + 1
    )]
    Shortened { path: String, last: u64, head: u64 },
    #[error(
        "audit log {path}: record {seq} is not the one its HEAD names (the log was rewritten?); nothing is appended until `warden audit repair --accept-missing-records` records it"
    )]
    Diverged { path: String, seq: u64 },
    #[error("the audit log is not writable after an earlier failure; nothing can run unaudited")]
    Failed,
    #[error(
        "audit log {path} is held by another warden process{holder} (waited {waited_secs} s); send calls through it (MCP, API) or stop it"
    )]
    Busy {
        path: String,
        holder: String,
        waited_secs: u64,
    },
}

impl AuditError {
    fn io(path: &Path, e: std::io::Error) -> AuditError {
        AuditError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn record(kind: &str) -> Entry {
        Entry::new(kind)
    }

    fn signed(dir: &Path, every: u64) -> AuditOptions {
        let mut options = AuditOptions::new(4096);
        options.signer = Some(Arc::new(Signer::open(&dir.join("signing.key")).unwrap()));
        options.checkpoint_every = every;
        options
    }

    #[tokio::test]
    async fn chain_survives_reopen_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path(), AuditOptions::new(300)).unwrap();
            for i in 0..10 {
                log.append(vec![record(&format!("k{i}"))]).await.unwrap();
            }
        }
        let log = AuditLog::open(dir.path(), AuditOptions::new(300)).unwrap();
        assert_eq!(log.recovery(), None, "closed cleanly");
        log.append(vec![record("after-reopen"), record("two")])
            .await
            .unwrap();
        log.close();
        let v = verify(dir.path(), &VerifyOptions::default()).unwrap();
        assert_eq!(v.problem, None);
        assert_eq!(v.records, 12);
        assert!(v.segments > 1, "rotated: {v:?}");
        assert_eq!(read_all(dir.path()).unwrap()[11]["kind"], "two");
    }

    /// Commits from many tasks interleave into one chain, none lost, none twice,
    /// across rotations, with checkpoints among them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_form_one_signed_chain() {
        let keys = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = signed(keys.path(), 7);
        let public = options.signer.as_ref().unwrap().public().to_string();
        let log = AuditLog::open(dir.path(), options).unwrap();
        let mut expected = 0;
        for round in 0..5 {
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let _caller = log.caller();
                        for i in 0..10 {
                            log.commit(vec![record(&format!("r-{round}-{t}-{i}"))], i % 2 == 1)
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            expected += 80;
        }
        log.close();
        let options = VerifyOptions {
            trusted_keys: vec![public],
            ..VerifyOptions::default()
        };
        let v = verify(dir.path(), &options).unwrap();
        assert_eq!(v.problem, None, "{v:?}");
        assert!(v.segments > 1, "rotated: {v:?}");
        // One per commit that crosses the interval (a commit may hold several records).
        assert!(v.checkpoints >= expected / 16, "{v:?}");
        assert_eq!(v.unsigned, 0, "closing signs the end: {v:?}");
        let kinds: Vec<String> = read_all(dir.path())
            .unwrap()
            .iter()
            .filter_map(|r| {
                r["kind"]
                    .as_str()
                    .filter(|k| k.starts_with("r-"))
                    .map(str::to_string)
            })
            .collect();
        let mut unique = kinds.clone();
        unique.sort();
        unique.dedup();
        let n = expected as usize;
        assert_eq!(
            (kinds.len(), unique.len()),
            (n, n),
            "every record exactly once"
        );
    }

    #[tokio::test]
    async fn a_log_shorter_than_its_head_is_refused_until_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions::new(1 << 20)).unwrap();
        for i in 0..5 {
            log.append(vec![record(&format!("k{i}"))]).await.unwrap();
        }
        log.close();
        let segment = dir.path().join("segment-00000001.jsonl");
        let text = std::fs::read_to_string(&segment).unwrap();
        let kept: Vec<&str> = text.lines().take(3).collect();
        std::fs::write(&segment, kept.join("\n") + "\n").unwrap();

        let refused = AuditLog::open(dir.path(), AuditOptions::new(1 << 20)).err();
        assert!(
            matches!(
                refused,
                Some(AuditError::Shortened {
                    last: 3,
                    head: 5,
                    ..
                })
            ),
            "{refused:?}"
        );
        let repair = Repair {
            accept_missing_records: true,
            by: "test".into(),
            ..Repair::default()
        };
        let (log, repaired) =
            AuditLog::repair(dir.path(), AuditOptions::new(1 << 20), &repair).unwrap();
        assert_eq!(repaired.actions.len(), 1, "{repaired:?}");
        log.close();
        let records = read_all(dir.path()).unwrap();
        assert_eq!(records[3]["kind"], "audit-repair");
        assert!(
            records[3]["accepted"]
                .as_str()
                .unwrap()
                .contains("records 4..=5")
        );
        let v = verify(dir.path(), &VerifyOptions::default()).unwrap();
        assert_eq!(v.problem, None, "{v:?}");
        AuditLog::open(dir.path(), AuditOptions::new(1 << 20)).unwrap();
    }

    #[tokio::test]
    async fn a_torn_tail_is_refused_and_repair_cuts_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions::new(1 << 20)).unwrap();
        log.append(vec![record("a"), record("b")]).await.unwrap();
        log.close();
        let segment = dir.path().join("segment-00000001.jsonl");
        let mut text = std::fs::read_to_string(&segment).unwrap();
        text.push_str("{\"seq\":3,\"prev\":\"ab");
        std::fs::write(&segment, &text).unwrap();
        let refused = AuditLog::open(dir.path(), AuditOptions::new(1 << 20)).err();
        assert!(
            matches!(refused, Some(AuditError::TruncatedTail { bytes: 19, .. })),
            "{refused:?}"
        );
        let (log, repaired) =
            AuditLog::repair(dir.path(), AuditOptions::new(1 << 20), &Repair::default()).unwrap();
        log.close();
        assert_eq!(repaired.actions.len(), 1);
        let records = read_all(dir.path()).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2]["removed_bytes"], 19);
        assert_eq!(
            verify(dir.path(), &VerifyOptions::default())
                .unwrap()
                .problem,
            None
        );
    }

    /// The live segment ends in zeros laid ahead of its records; a crash leaves them,
    /// and the log reopens after its last record, not after the zeros.
    #[tokio::test]
    async fn a_crash_leaves_a_zero_tail_that_readers_and_the_writer_skip() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join(segments::segment_name(1));
        let log = AuditLog::open(dir.path(), AuditOptions::new(64 << 20)).unwrap();
        let _in_flight = log.caller();
        log.append(vec![record("a"), record("b")]).await.unwrap();
        // The image a crash leaves: the segment and HEAD as they are on disk now.
        let crashed = std::fs::read(&segment).unwrap();
        let head = std::fs::read(dir.path().join("HEAD")).unwrap();
        let end = crashed.iter().rposition(|&b| b != 0).unwrap() + 1;
        assert!(crashed.len() > end, "a zero tail ahead of the records");
        assert!(crashed[end..].iter().all(|&b| b == 0));
        assert_eq!(crashed[end - 1], b'\n');
        let live = verify(dir.path(), &VerifyOptions::default()).unwrap();
        assert_eq!((live.problem, live.records), (None, 2));
        log.close();
        let closed = std::fs::read(&segment).unwrap();
        assert_eq!(closed.len(), end, "a clean close cuts the tail");

        std::fs::write(&segment, &crashed).unwrap();
        std::fs::write(dir.path().join("HEAD"), &head).unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions::new(64 << 20)).unwrap();
        assert!(log.recovery().is_some(), "not a clean stop");
        log.recovered();
        log.append(vec![record("c")]).await.unwrap();
        log.close();
        let v = verify(dir.path(), &VerifyOptions::default()).unwrap();
        assert_eq!((v.problem, v.records), (None, 3));
        let kinds: Vec<_> = read_all(dir.path())
            .unwrap()
            .iter()
            .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(kinds, ["a", "b", "c"]);
        assert!(!std::fs::read(&segment).unwrap().contains(&0));
    }

    #[tokio::test]
    async fn a_crash_leaves_where_to_recover_from() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions::new(1 << 20)).unwrap();
        log.append(vec![record("before")]).await.unwrap();
        let caller = log.caller();
        log.append(vec![record("run-start")]).await.unwrap();
        // A run still in flight at close: not a clean stop.
        log.close();
        drop(caller);
        let log = AuditLog::open(dir.path(), AuditOptions::new(1 << 20)).unwrap();
        assert_eq!(log.recovery(), Some(2));
        log.recovered();
        log.close();
        let log = AuditLog::open(dir.path(), AuditOptions::new(1 << 20)).unwrap();
        assert_eq!(log.recovery(), None);
    }
}
