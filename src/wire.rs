//! The wire: PostgreSQL protocol framing and messages, the byte streams they travel on,
//! and TLS. Imports nothing of the project above it (see docs/architecture.md).

pub mod protocol;
pub mod stream;
pub mod tls;
