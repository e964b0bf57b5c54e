//! The TaskBroker: narrows an attested identity to per-task, single-audience, minute-scale
//! tokens, with delegation between agents, revocation on close, policy at request time and
//! an audit record before every token leaves.
//!
//! One file per operation (`open`, `mint`, `close`, `introspect`, `list`, `admin`), sharing the state
//! in `core`. Each is unit-tested against a fake issuer, a recording audit sink and a fake
//! clock (`testkit`).

mod admin;
mod close;
pub mod core;
mod events;
pub mod grant;
mod introspect;
mod issued;
pub mod limits;
mod list;
mod mint;
pub mod oidc;
mod open;
mod open_count;
mod owner_share;
pub mod replay;
pub mod service;
pub mod settings;
mod slot;
mod stats;
pub mod table;
mod task_ends;
mod task_size;
#[cfg(test)]
mod testkit;
pub mod token;
mod token_table;
pub mod who;

pub use self::core::{Broker, BrokerParts};
pub use settings::BrokerConfig;
pub use who::Who;
