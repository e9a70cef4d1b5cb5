//! One limit's counts: the shared one (a limit without `each`) and one per key. Keys
//! are shared with the admissions that hold them, so admitting a call allocates no key
//! once its count exists.

use std::collections::HashMap;
use std::sync::Arc;

use super::window::{Bucket, Window};

/// A count: a token bucket (rates), a window (quotas), calls in flight (concurrency).
#[derive(Debug)]
pub(super) enum Count {
    Bucket(Bucket),
    Window(Window),
    Flight(u64),
}

#[derive(Debug, Default)]
pub(super) struct Counts {
    /// The count of a limit without `each`, and of the empty key.
    shared: Option<Count>,
    each: HashMap<Arc<str>, Count>,
}

impl Counts {
    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut Count> {
        if key.is_empty() {
            self.shared.as_mut()
        } else {
            self.each.get_mut(key)
        }
    }

    /// `key`'s count, made by `fresh` when missing, and the key to find it again
    /// (`None`: the shared count).
    pub(super) fn entry(
        &mut self,
        key: &str,
        fresh: impl FnOnce() -> Count,
    ) -> (&mut Count, Option<Arc<str>>) {
        if key.is_empty() {
            return (self.shared.get_or_insert_with(fresh), None);
        }
        let held = match self.each.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(key);
                self.each.insert(k.clone(), fresh());
                k
            }
        };
        let count = self
            .each
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("found or inserted above"));
        (count, Some(held))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Count)> {
        self.shared
            .iter_mut()
            .map(|c| ("", c))
            .chain(self.each.iter_mut().map(|(k, c)| (&**k, c)))
    }
}
