//! One log line in each format the agent parses (plain, JSON, syslog 3164/5424, kv); the first
//! byte picks the format and whether key=value pairs are read from the message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_agent::parse::{parse, Format, ParseContext};

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else { return };
    let Ok(line) = std::str::from_utf8(rest) else { return };
    let format = [Format::Plain, Format::Json, Format::Syslog, Format::Kv][usize::from(how % 4)];
    let ctx = ParseContext { now_micros: 1_795_000_000_000_000, kv_in_message: how & 4 != 0 };
    let _ = parse(format, line, &ctx);
});
