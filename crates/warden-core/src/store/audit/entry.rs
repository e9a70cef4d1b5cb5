//! One record's fields as JSON text, before the writer chains it.

use serde_json::{Map, Value};

/// One record's fields as JSON text (`,"kind":...`), without `seq`, `prev` and `hash`,
/// which the writer adds as it chains the record. Built on the caller's thread, so
/// the writer (one thread for every caller) only chains, hashes and writes; the
/// records of every governed call are built field by field, with no JSON map between.
pub struct Entry(pub(super) Vec<u8>);

impl Entry {
    /// A record of `kind`; add its fields with the builder methods, in order.
    pub fn new(kind: &str) -> Entry {
        let mut entry = Entry(Vec::with_capacity(384));
        entry.str("kind", kind);
        entry
    }

    /// The fields of a JSON object record.
    pub fn of(record: &Map<String, Value>) -> Entry {
        let mut entry = Entry(Vec::with_capacity(512));
        for (k, v) in record {
            if k != "seq" && k != "prev" && k != "hash" {
                entry.value(k, v);
            }
        }
        entry
    }

    fn key(&mut self, key: &str) {
        debug_assert!(
            !matches!(key, "seq" | "prev" | "hash"),
            "the writer sets {key}"
        );
        self.0.push(b',');
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, key);
        self.0.push(b':');
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Entry {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, value);
        self
    }

    /// A string, or `null`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Entry {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, &value);
        self
    }

    pub fn num(&mut self, key: &str, value: u64) -> &mut Entry {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, &value);
        self
    }

    pub fn value(&mut self, key: &str, value: &Value) -> &mut Entry {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, value);
        self
    }

    /// The record's kind, when it is the first field (every record warden builds).
    pub fn kind(&self) -> Option<&str> {
        let rest = self.0.strip_prefix(b",\"kind\":\"")?;
        let end = rest.iter().position(|&b| b == b'"')?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_entries_match_entries_of_maps() {
        let mut built = Entry::new("run-end");
        built
            .num("ts_ms", 17)
            .str("run", "r \"1\"\n")
            .opt_str("error", None)
            .opt_str("tier", Some("soft"))
            .value("n", &serde_json::json!([1, {"a": "b"}]));
        let map = serde_json::json!({
            "kind": "run-end", "ts_ms": 17, "run": "r \"1\"\n", "error": null,
            "tier": "soft", "n": [1, {"a": "b"}],
        });
        let Value::Object(map) = map else { panic!() };
        assert_eq!(
            String::from_utf8_lossy(&built.0),
            String::from_utf8_lossy(&Entry::of(&map).0)
        );
        assert_eq!(built.kind(), Some("run-end"));
        let line = format!("{{\"seq\":1{}}}", String::from_utf8_lossy(&built.0));
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["run"], "r \"1\"\n");
    }
}
