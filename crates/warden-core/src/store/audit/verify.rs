//! Verifying a log: every hash, every link, every checkpoint's signature, the end of
//! the log against `HEAD` and against the witness.
//!
//! Reads `HEAD` and the witness before the segments, so a log a server is writing
//! verifies correctly: both only ever name records already on disk. A record being
//! written at the very end of a live log is not yet a record. It must never call a log
//! intact that an attacker without the signing key could have rewritten past the last
//! checkpoint it checked, and it names where trust ends when it finds a break.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::AuditError;
use super::checkpoint::{self, Checkpoint};
use super::head::{self, Head};
use super::segments::{self, ZERO_HASH, segment_name};

/// What to check the log against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Public keys (hex) trusted to sign checkpoints. Empty: each checkpoint is checked
    /// against the key it names, which shows the log is consistent, not who wrote it.
    pub trusted_keys: Vec<String>,
    /// A witness directory (or one witness file) holding this log's checkpoints.
    pub witness: Option<PathBuf>,
    /// Verify without `HEAD` (records deleted from the end then go unnoticed).
    pub no_head: bool,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verified {
    pub records: u64,
    pub segments: usize,
    /// Checkpoints whose signature and chain position check out.
    pub checkpoints: u64,
    /// The last of them.
    pub last_checkpoint: Option<u64>,
    /// Records after the last good checkpoint.
    pub unsigned: u64,
    /// Keys that signed the good checkpoints.
    pub keys: Vec<String>,
    /// The checkpoints were checked against trusted keys (not just their own).
    pub trusted: bool,
    /// The last witnessed checkpoint the log matches.
    pub witnessed: Option<u64>,
    pub head: Option<Head>,
    /// A warden process had the log open while it was read.
    pub live: bool,
    pub problem: Option<Problem>,
}

/// The first break found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first sequence number that cannot be trusted.
    pub seq: u64,
    pub location: String,
    pub what: String,
}

/// Check the log in `dir` (see the module header).
pub fn verify(dir: &Path, options: &VerifyOptions) -> Result<Verified, AuditError> {
    let io = |path: &Path, e: std::io::Error| AuditError::io(path, e);
    if !dir.is_dir() {
        return Err(AuditError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no audit log here"),
        ));
    }
    let mut v = Verified {
        trusted: !options.trusted_keys.is_empty(),
        ..Verified::default()
    };
    let head = head::read(dir);
    let indexes = segments::segments(dir).map_err(|e| io(dir, e))?;
    v.segments = indexes.len();
    let genesis = match indexes.first() {
        Some(&i) => first_line_hash(&dir.join(segment_name(i)))?,
        None => None,
    };
    let witnessed = match &options.witness {
        Some(path) => read_witness(path, genesis.as_deref()).map_err(|message| AuditError::Io {
            path: path.display().to_string(),
            message,
        })?,
        None => BTreeMap::new(),
    };
    let head = match head {
        Ok(head) => head,
        Err(what) => {
            v.problem = Some(Problem {
                seq: 1,
                location: "HEAD".into(),
                what,
            });
            return Ok(v);
        }
    };
    v.head = head.clone();
    let mut scan = Scan {
        v,
        trusted: options.trusted_keys.clone(),
        expected: 1,
        prev: ZERO_HASH.to_string(),
        parent_of_prev: ZERO_HASH.to_string(),
        prev_location: String::new(),
        head_seq: head.as_ref().map_or(0, |h| h.seq),
        head_hash: None,
        every: None,
        witnessed: &witnessed,
        fork: None,
    };
    let last = indexes.len().saturating_sub(1);
    for (i, &index) in indexes.iter().enumerate() {
        if i > 0 && index != indexes[i - 1] + 1 {
            let location = segment_name(indexes[i - 1] + 1);
            scan.broken(
                scan.expected,
                location,
                format!("segment file missing: records from {} on", scan.expected),
            );
            return Ok(scan.v);
        }
        if scan.segment(dir, index, i == last)? {
            return Ok(scan.v);
        }
    }
    if let Some((first, _, second, seq)) = scan.fork.take() {
        // The fork is the very end of the log: nothing says which one is genuine.
        scan.broken(
            seq,
            second.clone(),
            format!(
                "record {seq} appears twice: {first} and {second} both follow record {}; one of them was inserted",
                seq - 1
            ),
        );
        return Ok(scan.v);
    }
    let mut v = scan.v;
    v.live = segments::is_live(dir);
    let records = v.records;
    if let Some((&w, _)) = witnessed.iter().next_back()
        && w > records
    {
        v.problem = Some(Problem {
            seq: records + 1,
            location: witness_location(options),
            what: format!(
                "the witness holds a checkpoint at record {w}, but the log ends at record {records}: records {}..={w} were deleted",
                records + 1
            ),
        });
        return Ok(v);
    }
    match &head {
        None if records > 0 && !options.no_head => {
            v.problem = Some(Problem {
                seq: records + 1,
                location: "HEAD".into(),
                what: "HEAD is missing: the end of the log cannot be checked (records deleted from the end would go unnoticed); pass --no-head to verify without it".into(),
            });
        }
        _ if options.no_head => {}
        Some(h) if h.seq > records => {
            v.problem = Some(Problem {
                seq: records + 1,
                location: "HEAD".into(),
                what: format!(
                    "records {}..={} were deleted from the end (HEAD names record {})",
                    records + 1,
                    h.seq,
                    h.seq
                ),
            });
        }
        Some(h) if h.seq > 0 && scan.head_hash.as_deref() != Some(h.hash.as_str()) => {
            v.problem = Some(Problem {
                seq: h.seq,
                location: "HEAD".into(),
                what: format!("record {} is not the one HEAD names", h.seq),
            });
        }
        Some(h) if h.clean && !v.live && records > h.seq => {
            v.problem = Some(Problem {
                seq: h.seq + 1,
                location: "HEAD".into(),
                what: format!(
                    "records {}..={records} were added after warden stopped (HEAD, written when it stopped, names record {})",
                    h.seq + 1,
                    h.seq
                ),
            });
        }
        _ => {}
    }
    if v.problem.is_none() && v.trusted && !v.live {
        // With no checkpoint at all, nothing in the log is vouched for.
        let allowed = scan.every.unwrap_or(0);
        if v.unsigned > allowed {
            let from = v.last_checkpoint.map_or(1, |c| c + 1);
            v.problem = Some(Problem {
                seq: from,
                location: "checkpoints".into(),
                what: format!(
                    "{} records after {} are not signed by a trusted key, more than a checkpoint every {allowed} records allows: checkpoints were removed, or the log was rewritten",
                    v.unsigned,
                    v.last_checkpoint
                        .map_or("the start of the log".to_string(), |c| format!(
                            "the checkpoint at record {c}"
                        ))
                ),
            });
        }
    }
    Ok(v)
}

fn witness_location(options: &VerifyOptions) -> String {
    options
        .witness
        .as_ref()
        .map_or("witness".into(), |p| p.display().to_string())
}

/// The checkpoints a witness holds for the log whose first record hashes to `genesis`,
/// by sequence number.
fn read_witness(path: &Path, genesis: Option<&str>) -> Result<BTreeMap<u64, Checkpoint>, String> {
    let file = if path.is_dir() {
        match genesis {
            Some(g) => {
                let file = checkpoint::witness_file(path, g);
                if !file.exists() {
                    return Err(format!(
                        "no witness file for this log ({} not found: the log's first record is not the one the witness knows, or the witness never heard from it)",
                        file.display()
                    ));
                }
                file
            }
            None => return Ok(BTreeMap::new()),
        }
    } else {
        path.to_path_buf()
    };
    Ok(checkpoint::read_witness(&file)?
        .into_iter()
        .map(|c| (c.seq, c))
        .collect())
}

fn first_line_hash(path: &Path) -> Result<Option<String>, AuditError> {
    let file = segments::reader(path).map_err(|e| AuditError::io(path, e))?;
    let mut line = Vec::new();
    BufReader::new(file)
        .read_until(b'\n', &mut line)
        .map_err(|e| AuditError::io(path, e))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(segments::parse_line(&line).map(|l| l.hash.to_string()))
}

struct Scan<'w> {
    v: Verified,
    trusted: Vec<String>,
    expected: u64,
    prev: String,
    /// The hash the record before `prev` linked to: a second record claiming the same
    /// place links to it too.
    parent_of_prev: String,
    prev_location: String,
    head_seq: u64,
    head_hash: Option<String>,
    /// The checkpoint interval the last good checkpoint declared.
    every: Option<u64>,
    witnessed: &'w BTreeMap<u64, Checkpoint>,
    /// Two records claimed the same place: (first's location, first's hash, second's
    /// location, seq). The next line decides which one is genuine.
    fork: Option<(String, String, String, u64)>,
}

impl Scan<'_> {
    fn broken(&mut self, seq: u64, location: String, what: String) {
        let trust = match self.v.last_checkpoint {
            Some(c) if self.v.trusted => {
                format!("; records up to {c} are covered by a checkpoint signed by a trusted key")
            }
            Some(c) => format!("; records up to {c} are covered by a valid checkpoint"),
            None => String::new(),
        };
        self.v.problem = Some(Problem {
            seq,
            location,
            what: format!("{what}{trust}"),
        });
    }

    /// Check one segment; `true` when a problem ends the scan.
    fn segment(&mut self, dir: &Path, index: u64, last: bool) -> Result<bool, AuditError> {
        let path = dir.join(segment_name(index));
        let file = segments::reader(&path).map_err(|e| AuditError::io(&path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::with_capacity(1024);
        let mut number = 0u64;
        loop {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .map_err(|e| AuditError::io(&path, e))?
                == 0
            {
                break;
            }
            number += 1;
            let location = format!("{}:{number}", segment_name(index));
            if line.last() != Some(&b'\n') {
                if last && segments::is_live(dir) {
                    // Being written right now.
                    break;
                }
                self.broken(
                    self.expected,
                    location,
                    "truncated tail: the last record is cut short (a crash mid-write?); `warden audit repair` cuts it".into(),
                );
                return Ok(true);
            }
            line.pop();
            let Some(parsed) = segments::parse_line(&line) else {
                self.broken(
                    self.expected,
                    location,
                    "modified: not an audit record".into(),
                );
                return Ok(true);
            };
            if !parsed.hash_ok {
                self.broken(
                    self.expected,
                    location,
                    "modified: the hash does not match the record".into(),
                );
                return Ok(true);
            }
            if let Some((first, first_hash, second, seq)) = self.fork.take() {
                let genuine_is_first = parsed.prev == first_hash;
                let (inserted, genuine) = if genuine_is_first {
                    (&second, &first)
                } else {
                    (&first, &second)
                };
                self.broken(
                    seq,
                    inserted.clone(),
                    format!(
                        "record {seq} appears twice: {first} and {second} both follow record {}; {genuine} is the one record {} links to, so {inserted} was inserted (a forged record with its own hash)",
                        seq - 1,
                        seq + 1
                    ),
                );
                return Ok(true);
            }
            let seq = parsed.seq;
            if seq + 1 == self.expected && parsed.prev == self.parent_of_prev && seq > 0 {
                // Two records claim the same place in the chain.
                self.fork = Some((self.prev_location.clone(), self.prev.clone(), location, seq));
                continue;
            }
            if seq != self.expected {
                let what = if seq > self.expected {
                    if seq == self.expected + 1 {
                        format!("record {} is missing (deleted); found {seq}", self.expected)
                    } else {
                        format!(
                            "records {}..={} are missing (deleted); found {seq}",
                            self.expected,
                            seq - 1
                        )
                    }
                } else {
                    format!("record {seq} appears again or out of order (inserted or reordered)")
                };
                self.broken(self.expected, location, what);
                return Ok(true);
            }
            if parsed.prev != self.prev {
                self.broken(
                    seq,
                    location,
                    "inserted or reordered: does not link to the record before it".into(),
                );
                return Ok(true);
            }
            match parsed.kind {
                Some("checkpoint") => {
                    if let Err(what) = self.checkpoint(&line, seq) {
                        self.broken(seq, location, what);
                        return Ok(true);
                    }
                }
                Some("key-rotation") => self.rotation(&line),
                _ => self.v.unsigned += 1,
            }
            if seq == self.head_seq {
                self.head_hash = Some(parsed.hash.to_string());
            }
            self.parent_of_prev = std::mem::replace(&mut self.prev, parsed.hash.to_string());
            self.prev_location = location;
            self.expected += 1;
            self.v.records += 1;
        }
        Ok(false)
    }

    fn checkpoint(&mut self, line: &[u8], seq: u64) -> Result<(), String> {
        let v: serde_json::Value = serde_json::from_slice(line)
            .map_err(|_| "modified: a checkpoint that is not JSON".to_string())?;
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let c = Checkpoint {
            log: String::new(),
            seq,
            covers: v["covers"].as_u64().unwrap_or(0),
            covers_hash: field("covers_hash"),
            ts_ms: v["ts_ms"].as_u64().unwrap_or(0),
            key: field("key"),
            sig: field("sig"),
        };
        if c.covers + 1 != seq || c.covers_hash != self.prev {
            return Err(format!(
                "the checkpoint at record {seq} signs record {} as {}, but the chain has {}: the records before it were rewritten after it was signed",
                c.covers, c.covers_hash, self.prev
            ));
        }
        if !c.signature_ok() {
            return Err(format!(
                "the checkpoint at record {seq} carries a signature that is not its key's (forged)"
            ));
        }
        if self.v.trusted && !self.trusted.contains(&c.key) {
            return Err(format!(
                "the checkpoint at record {seq} is signed by key {}, which is not trusted (pass it with --key if it is yours)",
                c.key
            ));
        }
        if let Some(w) = self.witnessed.get(&seq)
            && (w.covers_hash != c.covers_hash || w.sig != c.sig)
        {
            return Err(format!(
                "the checkpoint at record {seq} differs from the one the witness holds: the log was rewritten"
            ));
        }
        if self.witnessed.contains_key(&seq) {
            self.v.witnessed = Some(seq);
        }
        self.v.checkpoints += 1;
        self.v.last_checkpoint = Some(seq);
        self.v.unsigned = 0;
        self.every = v["every"].as_u64();
        if !self.v.keys.contains(&c.key) {
            self.v.keys.push(c.key);
        }
        Ok(())
    }

    /// A key rotation endorsed by a trusted key makes the new key trusted.
    fn rotation(&mut self, line: &[u8]) {
        self.v.unsigned += 1;
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let (Some(previous), Some(key), Some(endorsement)) = (
            v["previous_key"].as_str(),
            v["key"].as_str(),
            v["endorsement"].as_str(),
        ) else {
            return;
        };
        if self.trusted.iter().any(|t| t == previous)
            && checkpoint::endorsement_ok(previous, key, endorsement)
            && !self.trusted.iter().any(|t| t == key)
        {
            self.trusted.push(key.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{AuditLog, AuditOptions, Entry, Signer};
    use super::*;

    async fn write(dir: &Path, signer: Option<Arc<Signer>>, n: u64) {
        let mut options = AuditOptions::new(1 << 20);
        options.signer = signer;
        options.checkpoint_every = 5;
        let log = AuditLog::open(dir, options).unwrap();
        for i in 0..n {
            let mut e = Entry::new("test");
            e.num("n", i);
            log.append(vec![e]).await.unwrap();
        }
        log.close();
    }

    fn segment(dir: &Path) -> PathBuf {
        dir.join("segment-00000001.jsonl")
    }

    #[tokio::test]
    async fn an_intact_signed_log_verifies_against_its_trusted_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let signer = Arc::new(Signer::create_new(&keys.path().join("audit.key")).unwrap());
        write(dir.path(), Some(signer.clone()), 12).await;
        let v = verify(
            dir.path(),
            &VerifyOptions {
                trusted_keys: vec![signer.public().to_string()],
                ..VerifyOptions::default()
            },
        )
        .unwrap();
        assert_eq!(v.problem, None, "{v:?}");
        assert!(v.records >= 12 && v.checkpoints >= 2 && v.trusted, "{v:?}");
        let stranger = verify(
            dir.path(),
            &VerifyOptions {
                trusted_keys: vec!["00".repeat(32)],
                ..VerifyOptions::default()
            },
        )
        .unwrap();
        assert!(
            stranger.problem.is_some(),
            "an untrusted signer: {stranger:?}"
        );
    }

    #[tokio::test]
    async fn an_edited_record_is_named_by_sequence_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), None, 6).await;
        let text = std::fs::read_to_string(segment(dir.path())).unwrap();
        let edited = text.replacen("\"n\":3", "\"n\":4", 1);
        assert_ne!(text, edited);
        std::fs::write(segment(dir.path()), edited).unwrap();
        let v = verify(dir.path(), &VerifyOptions::default()).unwrap();
        let p = v.problem.expect("the edit is found");
        assert!(p.location.contains("segment-00000001.jsonl:"), "{p:?}");
        let line: usize = p.location.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            text.lines().nth(line - 1).unwrap().contains("\"n\":3"),
            "{p:?}"
        );
    }

    #[tokio::test]
    async fn a_cut_tail_is_caught_by_head_unless_told_there_is_none() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), None, 6).await;
        let text = std::fs::read_to_string(segment(dir.path())).unwrap();
        let kept: Vec<&str> = text.lines().collect();
        let cut = kept[..kept.len() - 2].join("\n") + "\n";
        std::fs::write(segment(dir.path()), cut).unwrap();
        let v = verify(dir.path(), &VerifyOptions::default()).unwrap();
        assert!(v.problem.is_some(), "HEAD names a later record: {v:?}");
        let blind = verify(
            dir.path(),
            &VerifyOptions {
                no_head: true,
                ..VerifyOptions::default()
            },
        )
        .unwrap();
        assert_eq!(blind.problem, None, "without HEAD the cut is invisible");
    }
}
