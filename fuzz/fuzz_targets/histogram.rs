//! HDR histograms (V2, DEFLATE or not) as the collector and the query functions read them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_bus::histogram::{decode, Merger};

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    let mut m = Merger::new();
    let _ = m.add(data);
    let _ = m.add(data);
});
