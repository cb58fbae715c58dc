//! Every JSON document a process takes from the bus; the first byte picks the document.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_bus::dlr::wire::{DlrAnswer, DlrAsk, DlrReport, LookupReply, ReplicaAck, ReplicaBatch};
use switchboard_bus::limits::revision::{History, Revision};
use switchboard_bus::limits::DemandReport;
use switchboard_bus::mesh::View;
use switchboard_bus::wire::control::{Heads, Watermarks};

fuzz_target!(|data: &[u8]| {
    let Some((&which, doc)) = data.split_first() else { return };
    match which % 11 {
        0 => {
            if let Ok(h) = Heads::decode(doc) {
                let _ = h.check(1024);
            }
        }
        1 => {
            let _ = Watermarks::decode(doc);
        }
        2 => {
            if let Ok(d) = serde_json::from_slice::<DemandReport>(doc) {
                let _ = d.check();
            }
        }
        3 => {
            if let Ok(r) = serde_json::from_slice::<Revision>(doc) {
                let mut h = History::default();
                let _ = h.offer(r);
            }
        }
        4 => {
            if let Ok(other) = serde_json::from_slice::<History>(doc) {
                let _ = History::default().merge(&other);
            }
        }
        5 => {
            let _ = serde_json::from_slice::<DlrAsk>(doc);
        }
        6 => {
            let _ = serde_json::from_slice::<DlrAnswer>(doc);
        }
        7 => {
            let _ = serde_json::from_slice::<ReplicaBatch>(doc);
        }
        8 => {
            let _ = serde_json::from_slice::<ReplicaAck>(doc);
        }
        9 => {
            let _ = serde_json::from_slice::<LookupReply>(doc);
            let _ = serde_json::from_slice::<DlrReport>(doc);
        }
        _ => {
            let _ = View::decode(doc);
        }
    }
});
