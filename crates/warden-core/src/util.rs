//! Small helpers every layer uses: the clock, digests, bounded text, `*` patterns. No
//! state, no I/O.

use sha2::{Digest, Sha256};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `sha256` of `bytes`, as lower-case hex.
/// Create the key file `path` (mode 0600) holding `bytes`, whole or not at all: written
/// and synced under a name of its own, then linked into place. `Ok(false)`: another
/// process made it first (use theirs); a process that finds the file finds all of it.
pub fn create_key_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
    let temp = path.with_extension(format!("tmp-{}", hex::encode(suffix)));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    let linked = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Cut `text` to at most `max` bytes (on a character boundary), marking the cut.
pub fn bounded_to(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let cut = text.floor_char_boundary(max);
    format!("{}… ({} bytes in all)", &text[..cut], text.len())
}

/// Does `pattern` (with `*` wildcards) match `name`? (On every call's path: it
/// allocates nothing.)
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let Some((first, after)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let (middle, last) = after.rsplit_once('*').unwrap_or(("", after));
    if name.len() < first.len() + last.len() || !name.starts_with(first) || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in middle.split('*').filter(|p| !p.is_empty()) {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// `ms` since the Unix epoch as an RFC 3339 time in UTC (seconds precision).
pub fn rfc3339_ms(ms: i64) -> String {
    use chrono::TimeZone;
    chrono::Utc.timestamp_millis_opt(ms).single().map_or_else(
        || format!("{ms} ms"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("notes_*", "notes_write"));
        assert!(!pattern_matches("notes_*", "http_get"));
        assert!(pattern_matches("*_write", "notes_write"));
        assert!(pattern_matches("a*b*c", "aXXbYYc"));
        assert!(!pattern_matches("a*b*c", "acb"));
        assert!(!pattern_matches("ab*ba", "aba"));
        assert!(pattern_matches("http_get", "http_get"));
    }

    #[test]
    fn bounded_text_is_cut_on_a_character_boundary_and_says_so() {
        assert_eq!(bounded_to("short", 10), "short");
        let cut = bounded_to("ééééé", 3);
        assert!(cut.starts_with('é') && !cut.starts_with("éé"), "{cut}");
        assert!(cut.ends_with("(10 bytes in all)"), "{cut}");
    }
}
