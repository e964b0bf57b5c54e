//! The gRPC server on Unix sockets: each accepted connection is pinned to its caller
//! ([`conn`]), attested once and re-checked cheaply on each call ([`caller`]); every call must
//! carry the Workload API security header ([`header`]). Before any of that, admission by uid
//! ([`gate`], [`listener`]), connection timeouts ([`conn`]) and per-call bounds ([`calls`])
//! keep what an unknown local user can make the daemon spend bounded ([`limits`]).

pub mod authority;
pub mod caller;
pub mod calls;
pub mod conn;
pub mod gate;
pub mod header;
pub mod limits;
pub mod listener;
pub mod socket;
pub mod status;
