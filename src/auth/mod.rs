//! Client authentication: the JWT carried as the password.

pub mod jwt;

pub use jwt::{AuthError, Identity, JwtVerifier, TenantId};
