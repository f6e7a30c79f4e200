//! rlsgate: a PostgreSQL wire-protocol proxy that turns a JWT into a tenant-scoped,
//! pooled database session enforced by row-level security.
//!
//! Layers, lowest first (docs/architecture.md, "Layout"): `wire`; `config`; `auth`;
//! `sql`; `tenant`; `upstream`; `session`; `proxy`; `control`; `dev`; `cli`. `metrics`
//! and `logging` import nothing of the project.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
#[cfg(feature = "dev")]
pub mod dev;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod session;
pub mod shutdown;
pub mod sql;
pub mod tenant;
pub mod upstream;
pub mod wire;

#[cfg(test)]
mod layout_tests;
