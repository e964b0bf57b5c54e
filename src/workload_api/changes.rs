//! One signal for every Workload API stream: "the bundle, an SVID or the daemon's state may
//! have changed; look again". A stream used to wait on three watches of its own (bundle,
//! SVID renewals, shutdown), which made every idle stream carry three receivers and three
//! pending `changed()` futures; one task now waits on them for all streams, and each stream
//! waits on this one signal.

use std::sync::Arc;

use tokio::sync::watch;

use crate::authority::Issuer;

/// Subscribes to `issuer`'s bundle and SVID changes and to `shutdown`, and returns a receiver
/// whose value is bumped on each of their changes. The sender is dropped, so that every
/// stream waiting on it ends, when the daemon shuts down or the issuer stops reporting
/// changes.
///
/// Must be called within the runtime: the forwarding task is spawned on it.
pub(super) fn forwarded(
    issuer: &Arc<dyn Issuer>,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    let mut bundle = issuer.bundle();
    let mut svids = issuer.changes();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = bundle.changed() => if r.is_err() { break },
                r = svids.changed() => if r.is_err() { break },
                _ = shutdown.changed() => break,
                () = tx.closed() => break,
            }
            tx.send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::authority::fake::FakeIssuer;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn bundle_and_svid_changes_are_forwarded_and_shutdown_closes_it() {
        let fake = FakeIssuer::new("example.org");
        let issuer: Arc<dyn Issuer> = fake.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut rx = forwarded(&issuer, stop_rx);

        fake.bundle_changed();
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("a bundle change is forwarded")
            .unwrap();
        fake.renewed();
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("an SVID renewal is forwarded")
            .unwrap();
        assert_eq!(*rx.borrow_and_update(), 2);

        stop_tx.send(true).unwrap();
        let closed = tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("shutdown ends the signal");
        assert!(closed.is_err(), "streams waiting on it end");
    }
}
