//! rlsgate: a PostgreSQL wire-protocol proxy that turns a JWT into a tenant-scoped,
//! pooled database session enforced by row-level security.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod backend_calls;
pub mod cancel;
pub mod channels;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod encoding;
pub mod error;
pub mod guard;
pub mod handshake;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod pgtemp;
pub mod pipeline;
pub mod policy;
pub mod pool;
pub mod prepared;
pub mod protocol;
pub mod server;
pub mod stream;
pub mod system_views;
pub mod tenant;
pub mod tls;
