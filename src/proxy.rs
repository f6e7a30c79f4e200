//! The proxy process: the listener and shared state (`server`), the client handshake
//! (TLS, startup, JWT), and the admin HTTP endpoint.

pub mod admin;
pub mod handshake;
pub mod server;
