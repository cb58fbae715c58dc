//! A `log_batch` payload as a collector receives it from the bus (Arrow IPC).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = switchboard_bus::wire::log_batch::decode(data);
});
