//! Cancel keys: the proxy issues its own random secret per client and maps
//! (pid, secret) to the client's current upstream backend only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Serialises forwarding a cancel with the session leaving its backend: a session takes
/// it before it returns a server, a cancel holds it while it is delivered, so a cancel
/// never reaches a backend that already serves someone else.
pub type CancelGate = Arc<tokio::sync::Mutex<()>>;

/// The upstream backend a client key currently points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub server_pid: i32,
    pub server_secret: i32,
}

/// Registry of live client cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<Key, Entry>>,
    /// Server pid → pid its last client was given (transaction mode: NOTIFY pids).
    binders: Mutex<HashMap<i32, i32>>,
    /// Session mode: backend pid → tenant of the session holding it (`backend_calls`).
    tenants: Mutex<HashMap<i32, String>>,
}

/// Entries kept in `binders` before it is emptied (servers come and go over days).
const BINDERS_LIMIT: usize = 10_000;

/// (pid, secret) as the client sent them.
type Key = (i32, i32);
/// Where the key points now, and its gate.
type Entry = (Option<CancelTarget>, CancelGate);

impl CancelRegistry {
    /// A fresh random secret that is not in use together with `pid`.
    pub fn issue(&self, pid: i32, target: Option<CancelTarget>) -> i32 {
        self.issue_with_gate(pid, target).0
    }

    /// Like [`issue`](Self::issue), also returning the key's gate.
    pub fn issue_with_gate(&self, pid: i32, target: Option<CancelTarget>) -> (i32, CancelGate) {
        let mut map = self.map.lock().expect("cancel registry poisoned");
        loop {
            let secret: i32 = rand::random();
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry((pid, secret)) {
                let gate = CancelGate::default();
                v.insert((target, gate.clone()));
                return (secret, gate);
            }
        }
    }

    /// Looks up the backend a client's key currently points at.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let map = self.map.lock().expect("cancel registry poisoned");
        map.get(&(pid, secret)).and_then(|(t, _)| *t)
    }

    /// The gate of a live key.
    pub fn gate(&self, pid: i32, secret: i32) -> Option<CancelGate> {
        let map = self.map.lock().expect("cancel registry poisoned");
        map.get(&(pid, secret)).map(|(_, g)| g.clone())
    }

    /// Points a client's key at its current backend (or none, between transactions).
    pub fn retarget(&self, pid: i32, secret: i32, target: Option<CancelTarget>) {
        {
            let mut map = self.map.lock().expect("cancel registry poisoned");
            if let Some((t, _)) = map.get_mut(&(pid, secret)) {
                *t = target;
            }
        }
        if let Some(t) = target {
            let mut binders = self.binders.lock().expect("cancel registry poisoned");
            if binders.len() >= BINDERS_LIMIT {
                binders.clear();
            }
            binders.insert(t.server_pid, pid);
        }
    }

    /// The pid given to the client that last ran a transaction on backend `server_pid`
    /// (transaction mode), so a NotificationResponse names the notifying client as its
    /// BackendKeyData did. Best effort: another client may have bound that backend
    /// since the NOTIFY was committed.
    pub fn last_binder(&self, server_pid: i32) -> Option<i32> {
        self.binders
            .lock()
            .expect("cancel registry poisoned")
            .get(&server_pid)
            .copied()
    }

    /// Session mode: `pid` (a real backend pid) serves a session of `tenant`.
    pub fn register_tenant(&self, pid: i32, tenant: &str) {
        let mut tenants = self.tenants.lock().expect("cancel registry poisoned");
        tenants.insert(pid, tenant.to_owned());
    }

    /// The session on `pid` ended.
    pub fn forget_tenant(&self, pid: i32) {
        self.tenants
            .lock()
            .expect("cancel registry poisoned")
            .remove(&pid);
    }

    /// Backends of `tenant`'s open session-mode sessions.
    pub fn tenant_pids(&self, tenant: &str) -> Vec<i32> {
        let tenants = self.tenants.lock().expect("cancel registry poisoned");
        let mut pids: Vec<i32> = tenants
            .iter()
            .filter(|(_, t)| t.as_str() == tenant)
            .map(|(pid, _)| *pid)
            .collect();
        pids.sort_unstable();
        pids
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
