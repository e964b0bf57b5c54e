//! Fuzz targets for every parser of untrusted bytes, as plain functions: `fuzz/` drives them
//! under AFL++, and `tests/fuzz_corpus.rs` replays the seed corpus through them in `cargo test`.
//!
//! Each target checks invariants, not only "no panic": a broken invariant panics, which AFL
//! records as a crash. Inputs the target cannot use (bad UTF-8 where the daemon only ever sees
//! strings) return early.

use std::time::SystemTime;

pub mod authority_rewriter;
pub mod cgroup;
pub mod config;
mod fixtures;
pub mod grpc_request;
pub mod jwt;
pub mod kubelet_pods;
pub mod seeds;
pub mod x509;

/// A target: checks one input, panicking when an invariant breaks.
pub type Check = fn(&[u8]);

/// Every target by name; the names are the folders under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("authority_rewriter", authority_rewriter::check),
    ("jwt", jwt::check),
    ("x509", x509::check),
    ("cgroup", cgroup::check),
    ("kubelet_pods", kubelet_pods::check),
    ("config", config::check),
    ("grpc_request", grpc_request::check),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Check> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The clock every target reads once per input, so two checks of one input agree.
fn now() -> SystemTime {
    SystemTime::now()
}
