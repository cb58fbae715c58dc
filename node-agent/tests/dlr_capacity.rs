//! Capacity of the DLR store within its stated budget, at a size the suite can afford.
//!
//! Budget (stated in docs/architecture.md): at most 150 bytes of disk per record, and the
//! process's resident memory grows by at most 256 MiB however many records there are (the store
//! keeps its memtables, block cache and filters in memory, not the records). The suite writes
//! 1,000,000 records (set `SB_DLR_CAPACITY` for another count); the ten-million figure is
//! `sb-bench capacity`'s.

use std::time::Instant;

use switchboard_agent::dlr::store::{DlrStore, Write};
use switchboard_bus::dlr::DlrRecord;

const DISK_BYTES_PER_RECORD: f64 = 150.0;
const RSS_GROWTH_BYTES: u64 = 256 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn record(i: u64) -> DlrRecord {
    DlrRecord::synthetic(i, "node-a")
}

#[test]
fn a_million_open_records_fit_the_budget_and_stay_readable() {
    let n: u64 = std::env::var("SB_DLR_CAPACITY").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let store = DlrStore::open(dir.path(), 16 << 20).unwrap();
    let rss0 = rss_bytes();
    let t = Instant::now();
    let batch = 10_000u64;
    for start in (0..n).step_by(batch as usize) {
        let records: Vec<DlrRecord> = (start..(start + batch).min(n)).map(record).collect();
        let writes: Vec<Write<'_>> = records.iter().map(|r| Write::Put { record: r, previous: None }).collect();
        store.write(&writes).unwrap();
    }
    let took = t.elapsed();
    store.sync().unwrap();
    // Let flushes and compactions settle before measuring the disk.
    let settle = Instant::now();
    while settle.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        if store.size().disk_bytes > 0 && settle.elapsed().as_secs() >= 3 {
            break;
        }
    }
    let size = store.size();
    let rss = rss_bytes();
    let per_record = size.disk_bytes as f64 / n as f64;
    let t2 = Instant::now();
    let probes = 20_000u64;
    for k in 0..probes {
        let i = k.wrapping_mul(7_919) % n;
        let want = record(i);
        let got = store.get(&want.connector, &want.id).unwrap();
        assert_eq!(got.as_ref().map(|r| &r.gateway_ref), Some(&want.gateway_ref), "record {i}");
    }
    let lookup = t2.elapsed();
    eprintln!(
        "{n} records: inserted in {took:.1?} ({:.0}/s); disk {:.0} MiB ({per_record:.1} B/record); RSS +{} MiB; {probes} random reads in {lookup:.1?} ({:.1} µs each)",
        n as f64 / took.as_secs_f64(),
        size.disk_bytes as f64 / (1 << 20) as f64,
        rss.saturating_sub(rss0) >> 20,
        lookup.as_secs_f64() * 1e6 / probes as f64,
    );
    assert!(per_record <= DISK_BYTES_PER_RECORD, "{per_record:.1} B/record on disk");
    assert!(rss.saturating_sub(rss0) <= RSS_GROWTH_BYTES, "RSS grew {} MiB", rss.saturating_sub(rss0) >> 20);
    assert!(size.records >= n * 9 / 10, "approximate count {} of {n}", size.records);
}
