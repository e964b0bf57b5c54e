//! Who signs. The embedded authority holds its own CA and JWT keys and rotates them with
//! overlap; [`schedule`] is the pure timing, [`store`] the on-disk form.

pub mod embedded;
pub mod schedule;
pub mod store;

pub use embedded::{AuthorityError, EmbeddedAuthority};
