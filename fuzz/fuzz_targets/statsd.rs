//! StatsD (and DogStatsD) datagrams as the agent reads them from UDP or `POST /v1/metrics`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_agent::metrics::statsd::{line_text, parse_line};

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(text) = line_text(line) {
            let _ = parse_line(text);
        }
    }
});
