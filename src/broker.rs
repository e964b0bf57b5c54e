//! The TaskBroker: narrows an attested identity to per-task, single-audience, minute-scale
//! tokens, with delegation between agents, revocation on close, policy at request time and
//! an audit record before every token leaves.

pub mod core;
pub mod grant;
pub mod limits;
pub mod oidc;
pub mod replay;
pub mod service;
pub mod settings;
pub mod table;
pub mod token;

pub use self::core::Broker;
pub use settings::BrokerConfig;
