//! Process-wide counters (atomics), read by tests, logs and the admin surface.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters; every field is monotonic except the `*_active` gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    pub clients_total: AtomicU64,
    pub clients_active: AtomicI64,
    pub clients_rejected_max: AtomicU64,
    pub auth_ok: AtomicU64,
    pub auth_failed: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub upstream_connect_errors: AtomicU64,
    pub upstream_discarded: AtomicU64,
    pub pool_timeouts: AtomicU64,
    pub checkouts: AtomicU64,
    pub context_applied: AtomicU64,
    /// Transaction-mode binds where the server already held the client's context.
    pub context_reused: AtomicU64,
    pub guard_refusals: AtomicU64,
    /// Times the proxy waited for its own statement before the client's could go
    /// (only at client startup: applying startup parameters and context).
    pub context_round_trips: AtomicU64,
    pub cancels_forwarded: AtomicU64,
    pub cancels_ignored: AtomicU64,
    /// Transaction-mode clients that kept their server for the rest of their session.
    pub pins: AtomicU64,
    pub pinned_active: AtomicI64,
    /// Clients closed by a `[pool]` idle limit.
    pub idle_timeouts: AtomicU64,
    /// Transaction mode: prepared statements prepared afresh on a server that lacked
    /// them (or held another shape) and compared with the client's (a round trip each).
    pub statement_copies: AtomicU64,
    /// Copies whose result had changed since the client prepared the statement: the
    /// client got 0A000, as directly.
    pub statement_copies_changed: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
