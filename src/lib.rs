//! svid-broker: a SPIFFE Workload API agent and per-task token broker.

pub mod attest;
pub mod authority;
pub mod config;
pub mod identity;
pub mod proto;
pub mod registry;
pub mod svid;
