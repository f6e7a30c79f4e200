//! Upstream: server connections to PostgreSQL, what each holds for rlsgate, and the pool.

pub mod conn;
pub mod held;
pub mod pool;
