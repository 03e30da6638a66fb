//! Values kept for a while: a small map whose entries count for a fixed
//! time after they were put in, with a bound on how many it holds (when
//! full, the expired entries go, and if that frees nothing, all of them).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries that count for `max_age` after they were kept, `max_len` at most.
pub struct Recent<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
    max_age: Duration,
    max_len: usize,
}

impl<K: Hash + Eq, V: Clone> Recent<K, V> {
    /// An empty map.
    pub fn new(max_age: Duration, max_len: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max_age,
            max_len,
        }
    }

    /// The value kept under `key` less than `max_age` ago.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (at, value) = entries.get(key)?;
        (at.elapsed() < self.max_age).then(|| value.clone())
    }

    /// Keep `value` under `key` from now on.
    pub fn keep(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max_len {
            entries.retain(|_, (at, _)| at.elapsed() < self.max_age);
            if entries.len() >= self.max_len {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_count_for_their_age_and_the_bound_holds() {
        let recent = Recent::new(Duration::from_millis(50), 2);
        recent.keep("a".to_string(), 1);
        recent.keep("b".to_string(), 2);
        assert_eq!(recent.get("a"), Some(1));
        // Full, nothing expired: everything goes, the new entry stays.
        recent.keep("c".to_string(), 3);
        assert_eq!(recent.get("a"), None);
        assert_eq!(recent.get("c"), Some(3));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            recent.get("c"),
            None,
            "an entry past its age does not count"
        );
        // Full again with an expired entry: only that one goes.
        recent.keep("d".to_string(), 4);
        recent.keep("e".to_string(), 5);
        assert_eq!((recent.get("d"), recent.get("e")), (Some(4), Some(5)));
    }
}
