//! svid-broker: a SPIFFE Workload API agent and per-task token broker.

pub mod attest;
pub mod audit;
pub mod cli;
pub mod policy;
pub mod proto;
