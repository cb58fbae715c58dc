//! DLR store capacity: `--records` open records (default 10,000,000) written to one node's store
//! as the agent writes them (batches of 10,000), then the disk and resident memory they cost and
//! random reads, printed beside the budget in docs/architecture.md: at most 150 B of disk per
//! open record, and at most 256 MiB of memory growth whatever the count.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use switchboard_agent::dlr::store::{DlrStore, Write};
use switchboard_bus::dlr::DlrRecord;

/// The disk budget per open record.
const DISK_BUDGET: f64 = 150.0;
/// The memory budget, whatever the record count.
const RSS_BUDGET_MIB: u64 = 256;

/// Resident memory of this process.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .map_or(0, |kb: u64| kb * 1024)
}

/// Write `records` records, then measure.
pub(crate) fn run(records: u64, cache_mb: u64) -> Result<()> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let store = DlrStore::open(dir.path(), cache_mb << 20).context("opening the store")?;
    let rss0 = rss_bytes();
    let started = Instant::now();
    let batch = 10_000u64;
    let mut next_report = Instant::now() + Duration::from_secs(10);
    for start in (0..records).step_by(batch as usize) {
        let chunk: Vec<DlrRecord> =
            (start..(start + batch).min(records)).map(|i| DlrRecord::synthetic(i, "node-a")).collect();
        let writes: Vec<Write<'_>> = chunk.iter().map(|r| Write::Put { record: r, previous: None }).collect();
        store.write(&writes).context("writing records")?;
        if Instant::now() >= next_report {
            eprintln!("  {} of {records} records written", start + batch);
            next_report += Duration::from_secs(10);
        }
    }
    let took = started.elapsed();
    store.sync().context("syncing the store")?;
    // Let flushes and compactions settle before the disk is measured.
    std::thread::sleep(Duration::from_secs(3));
    let size = store.size();
    let grew = rss_bytes().saturating_sub(rss0) >> 20;
    let per_record = size.disk_bytes as f64 / records.max(1) as f64;
    let probes = 100_000u64.min(records);
    let t = Instant::now();
    let mut found = 0u64;
    for k in 0..probes {
        let want = DlrRecord::synthetic(k.wrapping_mul(7_919) % records.max(1), "node-a");
        if store.get(&want.connector, &want.id).ok().flatten().is_some_and(|r| r.gateway_ref == want.gateway_ref) {
            found += 1;
        }
    }
    let read = t.elapsed();
    println!("DLR store capacity, {records} open records, block cache {cache_mb} MiB");
    println!("  inserted in {took:.1?} ({:.0} records/s)", records as f64 / took.as_secs_f64());
    println!(
        "  disk        {:.0} MiB, {per_record:.1} B per record   (budget {DISK_BUDGET} B: {:.2}x)",
        size.disk_bytes as f64 / f64::from(1 << 20),
        per_record / DISK_BUDGET
    );
    println!(
        "  memory      +{grew} MiB resident              (budget {RSS_BUDGET_MIB} MiB: {:.2}x)",
        grew as f64 / RSS_BUDGET_MIB as f64
    );
    println!(
        "  reads       {probes} random, {found} found, {:.1} us each",
        read.as_secs_f64() * 1e6 / probes.max(1) as f64
    );
    Ok(())
}
