//! A `log_batch` payload as a collector receives it from the bus (Arrow IPC).
//!
//! `decode` catches a panic of Arrow's reader (some malformed schemas make it panic) and answers
//! "malformed"; only a panic that escapes it is a crash. libFuzzer's panic hook would abort on
//! the caught ones too, so the hook is silenced: an escaping panic still aborts the run.
#![no_main]
use libfuzzer_sys::fuzz_target;

static QUIET: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let _ = switchboard_bus::wire::log_batch::decode(data);
});
