//! Cancel keys: the proxy issues its own random secret per client and maps
//! (pid, secret) to the client's current upstream backend only.

use std::collections::HashMap;
use std::sync::Mutex;

/// The upstream backend a client key currently points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub server_pid: i32,
    pub server_secret: i32,
}

/// Registry of live client cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), Option<CancelTarget>>>,
}

impl CancelRegistry {
    /// A fresh random secret that is not in use together with `pid`.
    pub fn issue(&self, pid: i32, target: Option<CancelTarget>) -> i32 {
        let mut map = self.map.lock().expect("cancel registry poisoned");
        loop {
            let secret: i32 = rand::random();
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry((pid, secret)) {
                v.insert(target);
                return secret;
            }
        }
    }

    /// Looks up the backend a client's key currently points at.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let map = self.map.lock().expect("cancel registry poisoned");
        map.get(&(pid, secret)).copied().flatten()
    }

    /// Points a client's key at its current backend (or none, between transactions).
    pub fn retarget(&self, pid: i32, secret: i32, target: Option<CancelTarget>) {
        let mut map = self.map.lock().expect("cancel registry poisoned");
        if let Some(t) = map.get_mut(&(pid, secret)) {
            *t = target;
        }
    }

    /// Forgets a key (the session ended or left the backend).
    pub fn remove(&self, pid: i32, secret: i32) {
        self.map
            .lock()
            .expect("cancel registry poisoned")
            .remove(&(pid, secret));
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("cancel registry poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_client_and_removed() {
        let r = CancelRegistry::default();
        let t = CancelTarget {
            server_pid: 42,
            server_secret: 7,
        };
        let a = r.issue(42, Some(t));
        let b = r.issue(42, Some(t));
        assert_ne!(a, b);
        assert_eq!(r.lookup(42, a), Some(t));
        r.remove(42, a);
        assert_eq!(r.lookup(42, a), None);
        assert_eq!(r.lookup(42, b), Some(t));
    }
}
