//! The sealed tenant context's proxy half: a per-process counter and the HMAC that
//! `rlsgate.enter` (policies/sealed.sql) verifies, bound to one backend and one moment.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The seal secret and the counter every seal takes its `seq` from. One per process
/// (in `server::State`), shared by all sessions.
pub struct Sealer {
    key: Vec<u8>,
    last: AtomicI64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Sealer {
    pub fn new(key: Vec<u8>) -> Sealer {
        Sealer {
            key,
            last: AtomicI64::new(now_micros()),
        }
    }

    /// The next `seq`: max(previous + 1, wall clock in µs). Strictly increasing within
    /// the process; a restarted proxy (or another one with a sane clock) starts above
    /// every value already used, unless this one issued more than one per µs for long.
    pub fn next_seq(&self) -> i64 {
        let now = now_micros();
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(last.saturating_add(1).max(now))
            })
            .expect("the update closure always returns Some");
        prev.saturating_add(1).max(now)
    }

    /// hex(HMAC-SHA256(key, `tenant:pid:seq`)): what `rlsgate.enter` recomputes with
    /// `pg_backend_pid()`. Unambiguous although a tenant may contain `:`: the last two
    /// fields are digits.
    pub fn seal(&self, tenant: &str, pid: i32, seq: i64) -> String {
        hmac_hex(&self.key, format!("{tenant}:{pid}:{seq}").as_bytes())
    }

    /// The arguments of `rlsgate.enter(tenant, seq, seal)` for one application of the
    /// context on the backend `pid`. Every call takes a fresh `seq`.
    pub fn enter_args(&self, tenant: &str, pid: i32) -> [String; 3] {
        let seq = self.next_seq();
        [
            tenant.to_owned(),
            seq.to_string(),
            self.seal(tenant, pid, seq),
        ]
    }
}

/// A session's handle on the process's [`Sealer`], with the tenant it seals. Compared
/// by identity (the key is not part of a context's value).
#[derive(Debug, Clone)]
pub struct SealHandle {
    pub sealer: Arc<Sealer>,
    pub tenant: String,
}

impl PartialEq for SealHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.sealer, &other.sealer) && self.tenant == other.tenant
    }
}

impl Eq for SealHandle {}

/// HMAC-SHA256(key, data) in lower-case hex.
pub fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_test_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn seq_is_strictly_increasing_and_starts_at_the_clock() {
        let before = now_micros();
        let s = Sealer::new(b"0123456789abcdef".to_vec());
        let mut last = s.next_seq();
        assert!(last > before);
        for _ in 0..10_000 {
            let next = s.next_seq();
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn seal_binds_tenant_pid_and_seq() {
        let s = Sealer::new(b"0123456789abcdef".to_vec());
        let base = s.seal("acme", 42, 7);
        assert_eq!(base, hmac_hex(b"0123456789abcdef", b"acme:42:7"));
        assert_ne!(base, s.seal("acme", 43, 7));
        assert_ne!(base, s.seal("acme", 42, 8));
        assert_ne!(base, s.seal("globex", 42, 7));
        let [t, seq, seal] = s.enter_args("acme", 42);
        assert_eq!(t, "acme");
        assert_eq!(seal, s.seal("acme", 42, seq.parse().unwrap()));
        assert_ne!(
            s.enter_args("acme", 42)[1],
            seq,
            "every application takes a new seq"
        );
    }
}
