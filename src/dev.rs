//! Development tools shipped in the binary: throwaway PostgreSQL clusters (`pgtemp`) and
//! `rlsgate demo`.

pub mod demo;
pub mod pgtemp;
