//! Integration tests: real PostgreSQL (started from the local server binaries), real
//! rlsgate, real clients. See `harness.rs`.

// `Result::err().expect()`: tokio-postgres clients are not `Debug`, so `expect_err` is out.
#![allow(clippy::err_expect)]

mod harness;

mod admin;
mod auth;
mod bookkeeping;
mod cancel;
mod channels;
mod checks;
mod copy;
mod demo;
mod doctor;
mod encoding;
mod guard;
mod idle;
mod isolation;
mod jwks;
mod pin;
mod policy;
mod pool;
mod protocol;
mod psql;
mod redteam;
mod redteam10;
mod redteam2;
mod redteam3;
mod redteam4;
mod redteam5;
mod redteam6;
mod redteam7;
mod redteam8;
mod redteam9;
mod restart;
mod sealed;
mod security;
mod session;
mod shapes;
mod state;
mod tls;
mod txn;
mod upstream;
mod views;
