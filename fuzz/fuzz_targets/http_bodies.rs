//! The JSON bodies of the agent's DLR API: registrations and reports.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_agent::dlr::{Registration, ReportRequest};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Vec<Registration>>(data);
    let _ = serde_json::from_slice::<ReportRequest>(data);
});
