//! Integration tests: real PostgreSQL (started from the local server binaries), real
//! rlsgate, real clients. See `harness.rs`.

mod harness;

mod auth;
mod cancel;
mod copy;
mod guard;
mod pool;
mod psql;
mod restart;
mod security;
mod session;
mod tls;
mod txn;
