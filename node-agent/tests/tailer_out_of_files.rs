//! A tailer whose process runs out of file descriptors for a while reads on, and takes no file
//! for rotated away or deleted because it could not list its directory: each line comes out once.
//! (Found under a flood of connections: the file was given up for gone, found again and read from
//! its start.) Its own test binary, as it lowers the process's limit of open files.

// getrlimit and setrlimit, through libc.
#![allow(unsafe_code)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use switchboard_bus::wire::log_batch;

fn append(path: &std::path::Path, from: usize, n: usize) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let lines: String = (from..from + n).map(|i| format!("line {i:06}\n")).collect();
    f.write_all(lines.as_bytes()).unwrap();
}

/// Open `/dev/null` until the process may open no more (its soft limit lowered to at most 4,096
/// first, so that this stays small); the descriptors, and the limit to put back.
fn exhaust_descriptors() -> (Vec<std::fs::File>, libc::rlimit) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let lower = libc::rlimit { rlim_cur: limit.rlim_cur.min(4096), rlim_max: limit.rlim_max };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lower) }, 0);
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(held.len() <= 4096, "no limit on open files was reached");
    }
    (held, limit)
}

#[test]
fn running_out_of_file_descriptors_reads_no_line_twice() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let live = logs.join("app.log");
    append(&live, 0, 100);
    let common::Tailing { batches: mut rx, cancel, thread } =
        common::tail(&logs.join("*.log"), &dir.path().join("state"));
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut drain = |want: usize| {
        let started = Instant::now();
        let mut quiet_since = None::<Instant>;
        // Until `want` lines came, then 200 ms more for any that would come again.
        while started.elapsed() < Duration::from_secs(10)
            && quiet_since.is_none_or(|t| t.elapsed() < Duration::from_millis(200))
        {
            while let Ok(b) = rx.try_recv() {
                let batch = log_batch::decode(&b.payload).unwrap();
                let messages = batch.column_by_name("message").unwrap().as_string::<i32>();
                for m in messages.iter().flatten() {
                    *seen.entry(m.to_owned()).or_default() += 1;
                }
            }
            if quiet_since.is_none() && seen.values().sum::<usize>() >= want {
                quiet_since = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seen.clone()
    };
    assert_eq!(drain(100).len(), 100);
    // Thirty scans while no directory can be listed.
    let (held, limit) = exhaust_descriptors();
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    append(&live, 100, 50);
    let seen = drain(150);
    cancel.cancel();
    thread.join().unwrap();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(m, _)| m.clone()).collect();
    assert!(twice.is_empty(), "{} lines read twice, e.g. {:?}", twice.len(), twice.iter().min());
    assert_eq!(seen.len(), 150, "lines read once");
}
