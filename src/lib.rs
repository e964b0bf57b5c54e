//! svid-broker: a SPIFFE Workload API agent and per-task token broker.

pub mod app;
pub mod attest;
pub mod audit;
pub mod authority;
pub mod broker;
pub mod caller;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod fs_trust;
#[doc(hidden)]
pub mod fuzzing;
pub mod oauth;
pub mod policy;
pub mod proto;
pub mod registry;
pub mod server;
pub mod spiffe_id;
pub mod svid;
pub mod telemetry;
pub mod tls;
pub mod workload_api;
