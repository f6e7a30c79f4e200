//! What a pooled server holds for rlsgate beyond its connection: the prepared
//! statements it has under their server-side names (transaction mode).

use std::num::NonZeroUsize;

use lru::LruCache;

/// Prepared statements kept per server before the least recently used is closed.
pub const SERVER_CACHE_SIZE: usize = 512;

/// What one server has prepared (server names), least recently used first out.
#[derive(Debug)]
pub struct ServerStatements {
    lru: LruCache<String, ()>,
    /// The server may hold statements not listed (after a `DEALLOCATE ALL`/`DISCARD
    /// ALL` that may have failed): every Parse of the proxy's is preceded by a Close.
    uncertain: bool,
}

impl Default for ServerStatements {
    fn default() -> Self {
        Self {
            lru: LruCache::new(NonZeroUsize::new(SERVER_CACHE_SIZE).expect("non-zero")),
            uncertain: false,
        }
    }
}

impl ServerStatements {
    /// True if prepared here (and marks it recently used).
    pub fn has(&mut self, name: &str) -> bool {
        self.lru.get(name).is_some()
    }

    /// Records a statement; returns the one evicted to make room, to be closed.
    pub fn add(&mut self, name: &str) -> Option<String> {
        self.lru
            .push(name.to_owned(), ())
            .and_then(|(k, _)| (k != name).then_some(k))
    }

    pub fn remove(&mut self, name: &str) {
        self.lru.pop(name);
    }

    /// The server is known to hold none (a reset that dropped them all).
    pub fn clear(&mut self) {
        self.lru.clear();
        self.uncertain = false;
    }

    /// The server may or may not hold any of them any more.
    pub fn forget_all(&mut self) {
        self.lru.clear();
        self.uncertain = true;
    }

    /// How many statements it is known to hold.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    pub fn uncertain(&self) -> bool {
        self.uncertain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lru_evicts_oldest() {
        let mut s = ServerStatements {
            lru: LruCache::new(NonZeroUsize::new(2).unwrap()),
            uncertain: false,
        };
        assert_eq!(s.add("a"), None);
        assert_eq!(s.add("b"), None);
        assert!(s.has("a"));
        assert_eq!(s.add("c"), Some("b".into()));
    }
}
