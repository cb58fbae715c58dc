//! A DLR record as the store reads it back (key and value), and a store key alone.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_bus::dlr::record::split_store_key;
use switchboard_bus::dlr::DlrRecord;

fuzz_target!(|data: &[u8]| {
    let Some((&at, rest)) = data.split_first() else { return };
    let (key, value) = rest.split_at(usize::from(at).min(rest.len()));
    if let Ok(r) = DlrRecord::decode(key, value) {
        // What decodes encodes again to a record that decodes the same.
        let again = DlrRecord::decode(&r.store_key(), &r.encode_value()).expect("a record round-trips");
        assert_eq!(r, again);
    }
    let _ = split_store_key(rest);
});
