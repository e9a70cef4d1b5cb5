//! Opening the log: checking it against `HEAD`, cutting a torn tail back, what a
//! repair is allowed to accept, and the signing key's continuity, before the writer
//! thread takes it over.

use super::*;

/// Check the log against `HEAD`, repair what `repair` allows, and open it for appends.
/// Records to write first (what a repair did, a new signing key) go into `first`.
pub(super) fn prepare(
    dir: &Path,
    options: &AuditOptions,
    repair: Option<&Repair>,
    repaired: &mut Repaired,
    first: &mut Vec<Entry>,
) -> Result<(Writer, Option<u64>), AuditError> {
    let now = crate::now_ms();
    let indexes = segments::segments(dir).map_err(|e| AuditError::io(dir, e))?;
    let head = head::read(dir).map_err(|message| AuditError::BadHead {
        path: dir.join("HEAD").display().to_string(),
        message,
    })?;
    let last = loop {
        match segments::last_record(dir, &indexes) {
            Ok(last) => break last,
            Err(LastError::Io(path, e)) => return Err(AuditError::io(&path, e)),
            Err(LastError::NotARecord(path)) => {
                return Err(AuditError::BadHead {
                    path: path.display().to_string(),
                    message: "the last line is not an audit record (edited?); `warden audit verify` says more".into(),
                });
            }
            Err(LastError::Torn { path, whole, len }) => {
                let Some(repair) = repair else {
                    return Err(AuditError::TruncatedTail {
                        path: path.display().to_string(),
                        bytes: len - whole,
                    });
                };
                let cut = cut_torn_tail(&path, whole, len)?;
                repaired.actions.push(format!(
                    "cut {} bytes of a record cut short from the end of {}",
                    len - whole,
                    path.display()
                ));
                let mut entry = Entry::new("audit-repair");
                entry
                    .num("ts_ms", now)
                    .str("by", &repair.by)
                    .str("action", "cut-torn-tail")
                    .str(
                        "segment",
                        &path.file_name().unwrap_or_default().to_string_lossy(),
                    )
                    .num("removed_bytes", len - whole)
                    .str("removed_sha256", &cut.0)
                    .str("removed_start", &cut.1);
                first.push(entry);
            }
        }
    };
    let (last_seq, last_hash) = last.clone().unwrap_or((0, ZERO_HASH.to_string()));
    let mut recovery = head.as_ref().filter(|h| !h.clean).map(|h| h.open_from);
    let accept = |what: &str,
                  action: &str,
                  allowed: bool,
                  repaired: &mut Repaired,
                  first: &mut Vec<Entry>| {
        let repair = repair.filter(|_| allowed)?;
        repaired.actions.push(what.to_string());
        let mut entry = Entry::new("audit-repair");
        entry
            .num("ts_ms", now)
            .str("by", &repair.by)
            .str("action", action)
            .str("accepted", what);
        first.push(entry);
        Some(())
    };
    match &head {
        None if last.is_some() => {
            let what = format!(
                "HEAD was missing; the log's {last_seq} records were kept as they are, unchecked at their end"
            );
            if accept(
                &what,
                "accept-missing-head",
                repair.is_some_and(|r| r.accept_missing_head),
                repaired,
                first,
            )
            .is_none()
            {
                return Err(AuditError::HeadMissing {
                    path: dir.join("HEAD").display().to_string(),
                    records: last_seq,
                });
            }
            recovery = Some(1);
        }
        Some(h) if h.seq > last_seq => {
            let what = format!(
                "records {}..={} were missing from the end of the log (HEAD named record {} {})",
                last_seq + 1,
                h.seq,
                h.seq,
                h.hash
            );
            if accept(
                &what,
                "accept-missing-records",
                repair.is_some_and(|r| r.accept_missing_records),
                repaired,
                first,
            )
            .is_none()
            {
                return Err(AuditError::Shortened {
                    path: dir.display().to_string(),
                    last: last_seq,
                    head: h.seq,
                });
            }
            recovery = recovery.map(|from| from.min(last_seq + 1));
        }
        Some(h) if h.seq > 0 => {
            let found =
                segments::hash_of(dir, &indexes, h.seq).map_err(|e| AuditError::io(dir, e))?;
            if found.as_deref() != Some(h.hash.as_str()) {
                let what = format!(
                    "record {} is not the one HEAD named ({}); the log was kept as it is",
                    h.seq, h.hash
                );
                if accept(
                    &what,
                    "accept-rewritten-records",
                    repair.is_some_and(|r| r.accept_missing_records),
                    repaired,
                    first,
                )
                .is_none()
                {
                    return Err(AuditError::Diverged {
                        path: dir.display().to_string(),
                        seq: h.seq,
                    });
                }
            }
        }
        _ => {}
    }
    let genesis = match indexes.first() {
        Some(&index) if last.is_some() => first_hash(&dir.join(segment_name(index)))?,
        _ => None,
    };
    let index = indexes.last().copied().unwrap_or(1);
    let path = dir.join(segment_name(index));
    // After a crash the segment may end in zeros laid ahead of its records.
    let (file, size, zeroed) = super::open_segment(&path)?;
    let checkpoints = options.signer.as_ref().map(|signer| Checkpointing {
        signer: signer.clone(),
        every: options.checkpoint_every.max(1),
        interval: options.checkpoint_interval,
        unsigned: 0,
        last_at: Instant::now(),
        not_yet_durable: Vec::new(),
    });
    if let Some(signer) = &options.signer {
        // A log signed so far by another key says so, in the chain, before the new key
        // signs anything.
        let previous = last_key(dir, &indexes)?;
        if previous.as_deref() != Some(signer.public()) {
            let reason = match &previous {
                None if last.is_some() => "the log had no signing key before",
                None => "a new log",
                Some(_) => "the signing key changed while warden was stopped",
            };
            first.push(signer.rotation(previous.as_deref(), None, reason, now));
        }
    }
    let writer = Writer {
        dir: dir.to_path_buf(),
        file: Arc::new(file),
        index,
        size,
        zeroed,
        max_segment_bytes: options.max_segment_bytes,
        seq: last_seq,
        hash: last_hash.clone(),
        durable: (last_seq, last_hash),
        broken: false,
        pending_failure: None,
        buf: Vec::new(),
        checkpoints,
        genesis,
        host: options
            .host
            .as_deref()
            .map(|h| {
                let mut field = b",\"host\":".to_vec();
                // Writing JSON into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut field, h);
                field
            })
            .unwrap_or_default(),
    };
    // The log is in use, and (after a crash) where recovery must read from, before
    // anything is appended.
    let head = Head {
        seq: writer.seq,
        hash: writer.hash.clone(),
        open_from: recovery.unwrap_or(writer.seq + 1),
        clean: false,
        ts_ms: now,
    };
    head::write(dir, &head).map_err(|e| AuditError::io(&dir.join("HEAD"), e))?;
    Ok((writer, recovery))
}

/// Cut the torn bytes from `whole` to `len` off `path`: their SHA-256 and their start
/// (escaped) for the record of the repair.
fn cut_torn_tail(path: &Path, whole: u64, len: u64) -> Result<(String, String), AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| AuditError::io(path, e);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    file.seek(SeekFrom::Start(whole)).map_err(io)?;
    let mut torn = Vec::with_capacity((len - whole) as usize);
    (&mut file)
        .take(len - whole)
        .read_to_end(&mut torn)
        .map_err(io)?;
    let sha = hex::encode(Sha256::digest(&torn));
    let start = String::from_utf8_lossy(&torn[..torn.len().min(200)]).into_owned();
    file.set_len(whole).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok((sha, start))
}

/// The hash of the first record in the segment at `path`.
fn first_hash(path: &Path) -> Result<Option<String>, AuditError> {
    use std::io::BufRead;
    let file = segments::reader(path).map_err(|e| AuditError::io(path, e))?;
    let mut line = Vec::new();
    std::io::BufReader::new(file)
        .read_until(b'\n', &mut line)
        .map_err(|e| AuditError::io(path, e))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(segments::parse_line(&line).map(|l| l.hash.to_string()))
}

/// The key that signed the log's newest checkpoint or key rotation (looking back two
/// segments at most: a log rotates far less often than it checkpoints).
fn last_key(dir: &Path, indexes: &[u64]) -> Result<Option<String>, AuditError> {
    let line = segments::last_line_where(dir, indexes, 2, |l| {
        matches!(l.kind, Some("checkpoint" | "key-rotation"))
    })
    .map_err(|e| AuditError::io(dir, e))?;
    Ok(line.and_then(|l| {
        let v: serde_json::Value = serde_json::from_slice(&l).ok()?;
        v["key"].as_str().map(str::to_string)
    }))
}
