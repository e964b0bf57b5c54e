//! A place in the task table taken before a call decides, signs or writes its record, so
//! that what the record says was issued always fits the table.

use super::table::TaskTable;
use super::Broker;

/// A reserved place in the table: given back on drop unless what it was taken for filled
/// it, so a refused decision, a failed signature, a failed audit write or a cancelled call
/// never leaks one.
pub(super) struct Slot<'a> {
    broker: &'a Broker,
    release: fn(&mut TaskTable),
    filled: bool,
}

impl<'a> Slot<'a> {
    /// A place already reserved in the table; `release` gives it back.
    pub(super) fn taken(broker: &'a Broker, release: fn(&mut TaskTable)) -> Self {
        Self {
            broker,
            release,
            filled: false,
        }
    }

    /// What it was taken for is in the table: nothing to give back.
    pub(super) fn fill(mut self) {
        self.filled = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.filled {
            (self.release)(&mut self.broker.lock());
        }
    }
}
