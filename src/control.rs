//! The control plane: `rlsgate policy` (take a database through the migration) and
//! `rlsgate doctor` (audit it). Does not import the data path.

pub mod doctor;
pub mod policy;
