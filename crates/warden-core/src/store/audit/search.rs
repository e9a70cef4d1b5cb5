//! Reading records back: the newest N, or every record matching a filter, streamed.
//! It never holds more than N records (or one line) in memory, and stops at a line
//! that is not a record (`verify` names any damage).

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use super::AuditError;
use super::segments::{segment_name, segments};

/// Filters for searching the log; each one set must match.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub run: Option<String>,
    /// A plugin or policy id.
    pub plugin: Option<String>,
    pub since_ms: Option<u64>,
    pub kind: Option<String>,
}

impl Search {
    pub fn matches(&self, r: &Value) -> bool {
        let component_is = |id: &str| {
            r["plugin"] == id
                || r["policy"] == id
                || r["component"]
                    .as_str()
                    .is_some_and(|c| c.split_once(':').is_some_and(|(_, c)| c == id))
        };
        self.run.as_ref().is_none_or(|x| r["run"] == x.as_str())
            && self.plugin.as_deref().is_none_or(component_is)
            && self
                .since_ms
                .is_none_or(|t| r["ts_ms"].as_u64().is_some_and(|ts| ts >= t))
            && self.kind.as_ref().is_none_or(|k| r["kind"] == k.as_str())
    }
}

/// Every record, in order, in memory (for tests and small logs; the commands stream).
/// Stops at a line that is not valid JSON.
pub fn read_all(dir: &Path) -> Result<Vec<Value>, AuditError> {
    let mut out = Vec::new();
    each_matching(dir, &Search::default(), |record| {
        out.push(record);
        true
    })?;
    Ok(out)
}

/// Call `found` with every record matching `search`, oldest first, one line in memory
/// at a time (a SIEM export of the whole log stays small), until it returns `false`.
pub fn each_matching(
    dir: &Path,
    search: &Search,
    mut found: impl FnMut(Value) -> bool,
) -> Result<(), AuditError> {
    for index in segments(dir).map_err(|e| read_error(dir, e))? {
        let more = scan_segment(dir, index, |record| {
            !search.matches(&record) || found(record)
        })?;
        if !more {
            break;
        }
    }
    Ok(())
}

/// Call `found` with every record from number `from` on, oldest first, one line in
/// memory at a time. Segments that end before `from` are skipped unread (their first
/// record says where they start).
pub fn each_from(
    dir: &Path,
    from: u64,
    mut found: impl FnMut(Value) -> bool,
) -> Result<(), AuditError> {
    let indexes = segments(dir).map_err(|e| read_error(dir, e))?;
    // The last segment that starts at or before `from`.
    let mut start = 0;
    for (i, &index) in indexes.iter().enumerate() {
        let path = dir.join(segment_name(index));
        let file = super::segments::reader(&path).map_err(|e| read_error(&path, e))?;
        let mut first = Vec::new();
        BufReader::new(file)
            .read_until(b'\n', &mut first)
            .map_err(|e| read_error(&path, e))?;
        match super::segments::parse_line(first.strip_suffix(b"\n").unwrap_or(&first)) {
            Some(line) if line.seq <= from => start = i,
            Some(_) => break,
            None => {}
        }
    }
    for &index in &indexes[start.min(indexes.len())..] {
        let more = scan_segment(dir, index, |record| {
            record["seq"].as_u64().is_none_or(|s| s < from) || found(record)
        })?;
        if !more {
            break;
        }
    }
    Ok(())
}

/// The last `limit` records matching `search`, oldest first. Reads segments newest
/// first and stops once it has `limit`: memory stays bounded by `limit` however large
/// the log is, and a recent query reads only the recent segments.
pub fn last_matching(dir: &Path, search: &Search, limit: usize) -> Result<Vec<Value>, AuditError> {
    let mut newest_first: Vec<std::collections::VecDeque<Value>> = Vec::new();
    let mut kept = 0;
    for index in segments(dir)
        .map_err(|e| read_error(dir, e))?
        .into_iter()
        .rev()
    {
        if kept >= limit {
            break;
        }
        let room = limit - kept;
        let mut hits = std::collections::VecDeque::new();
        scan_segment(dir, index, |record| {
            if search.matches(&record) {
                if hits.len() == room {
                    hits.pop_front();
                }
                hits.push_back(record);
            }
            true
        })?;
        kept += hits.len();
        newest_first.push(hits);
    }
    Ok(newest_first.into_iter().rev().flatten().collect())
}

/// Every record of one segment, in order, up to a line that is not a record (a torn
/// tail; `verify` names any damage) or until `each` returns `false`. `false` when it
/// stopped early for either reason.
fn scan_segment(
    dir: &Path,
    index: u64,
    mut each: impl FnMut(Value) -> bool,
) -> Result<bool, AuditError> {
    let path = dir.join(segment_name(index));
    let reader = BufReader::new(super::segments::reader(&path).map_err(|e| read_error(&path, e))?);
    for line in reader.lines() {
        let line = line.map_err(|e| read_error(&path, e))?;
        let Ok(record) = serde_json::from_str::<Value>(&line) else {
            return Ok(false);
        };
        if !each(record) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_error(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AuditLog, AuditOptions, Entry};
    use super::*;

    fn record(kind: &str, n: u64) -> Entry {
        let mut e = Entry::new(kind);
        e.num("n", n);
        e
    }

    #[tokio::test]
    async fn search_keeps_the_last_matches_across_segments_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions::new(300)).unwrap();
        for i in 0..30 {
            let kind = if i % 3 == 0 { "hit" } else { "miss" };
            log.append(vec![record(kind, i)]).await.unwrap();
        }
        log.close();
        let hits = Search {
            kind: Some("hit".into()),
            ..Search::default()
        };
        let n = |records: Vec<Value>| -> Vec<u64> {
            records.iter().filter_map(|r| r["n"].as_u64()).collect()
        };
        assert_eq!(
            n(last_matching(dir.path(), &hits, 4).unwrap()),
            [18, 21, 24, 27]
        );
        assert_eq!(n(last_matching(dir.path(), &hits, 100).unwrap()).len(), 10);
        assert_eq!(
            n(last_matching(dir.path(), &Search::default(), 2).unwrap()),
            [28, 29]
        );
        let mut all = Vec::new();
        each_matching(dir.path(), &hits, |r| {
            all.push(r);
            true
        })
        .unwrap();
        assert_eq!(n(all), [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]);
        let mut first = Vec::new();
        each_matching(dir.path(), &hits, |r| {
            first.push(r);
            first.len() < 4
        })
        .unwrap();
        assert_eq!(n(first), [0, 3, 6, 9], "stops when told to");
    }
}
