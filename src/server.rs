//! The gRPC server on Unix sockets: each accepted connection is pinned to its caller
//! ([`conn`]), attested once and re-checked cheaply on each call ([`caller`]); every call must
//! carry the Workload API security header ([`header`]).

pub mod authority;
pub mod caller;
pub mod conn;
pub mod header;
pub mod socket;
