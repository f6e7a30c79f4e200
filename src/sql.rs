//! Reading the client's SQL: the encodings it arrives in, the inspector (session
//! effects, cleanliness), the guard, and the rewrites (channels, backend calls, views).

pub mod backend_calls;
pub mod channels;
pub mod encoding;
pub mod guard;
pub mod inspect;
pub mod system_views;
