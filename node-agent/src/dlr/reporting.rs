//! The reports in progress on this node, one at a time per record.
//!
//! Two reports of one DLR that reach the same node together (a gateway's repeat pipelined behind
//! the first, say) would each find the record open on its copy while the owner is down, and both
//! close it there: two identical closes look like one to the copy, and both gateways would handle
//! the DLR. A report enters its record here first, so the second waits for the first and then
//! finds the record closed (a `duplicate`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Slot = Arc<tokio::sync::Mutex<()>>;

/// The records with a report in progress; an entry lives while a report holds or awaits it.
#[derive(Default)]
pub(crate) struct Reporting(Mutex<HashMap<Vec<u8>, Slot>>);

impl Reporting {
    /// Wait until no other report of the record `key` is in progress here, and hold it.
    pub(crate) async fn enter(&self, key: Vec<u8>) -> Entered<'_> {
        let slot = self.map().entry(key.clone()).or_default().clone();
        let held = slot.clone().lock_owned().await;
        Entered { reporting: self, key, slot, _held: held }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Slot>> {
        // A panic while holding it cannot leave the map inconsistent: every change is one call.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records with a report in progress or waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

/// A record held by one report; the next report of it goes on when this is dropped.
pub(crate) struct Entered<'a> {
    reporting: &'a Reporting,
    key: Vec<u8>,
    slot: Slot,
    _held: OwnedMutexGuard<()>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut map = self.reporting.map();
        // The map, `slot` and the guard hold the slot; a fourth holder is a report waiting for it.
        if Arc::strong_count(&self.slot) <= 3 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_report_of_a_record_waits_for_the_first_and_others_do_not() {
        let reporting = Arc::new(Reporting::default());
        let first = reporting.enter(b"a".to_vec()).await;
        // Another record goes on at once.
        let other = tokio::time::timeout(Duration::from_secs(1), reporting.enter(b"b".to_vec())).await;
        assert!(other.is_ok());
        drop(other);
        let (r, order) = (reporting.clone(), Arc::new(Mutex::new(Vec::new())));
        let o = order.clone();
        let second = tokio::spawn(async move {
            let _held = r.enter(b"a".to_vec()).await;
            o.lock().unwrap().push("second");
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        order.lock().unwrap().push("first done");
        drop(first);
        second.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["first done", "second"]);
        assert_eq!(reporting.len(), 0, "no entry outlives its reports");
    }
}
