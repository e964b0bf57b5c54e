//! A place in the task table taken before a call decides, signs or writes its record, so
//! that what the record says was issued always fits the table.

use super::table::TaskTable;
use super::Broker;

/// A reserved place in the table: given back on drop unless what it was taken for filled
/// it, so a refused decision, a failed signature, a failed audit write or a cancelled call
/// never leaks one.
pub(super) struct Slot<'a, F: FnOnce(&mut TaskTable)> {
    broker: &'a Broker,
    /// `None` once filled.
    release: Option<F>,
}

impl<'a, F: FnOnce(&mut TaskTable)> Slot<'a, F> {
    /// A place already reserved in the table; `release` gives it back.
    pub(super) fn taken(broker: &'a Broker, release: F) -> Self {
        Self {
            broker,
            release: Some(release),
        }
    }

    /// What it was taken for is in the table: nothing to give back.
    pub(super) fn fill(mut self) {
        self.release = None;
    }
}

impl<F: FnOnce(&mut TaskTable)> Drop for Slot<'_, F> {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release(&mut self.broker.lock());
        }
    }
}
