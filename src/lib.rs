//! svid-broker: a SPIFFE Workload API agent and per-task token broker.

pub mod attest;
pub mod proto;
