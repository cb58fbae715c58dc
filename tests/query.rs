//! `switchboard query` streams what it prints: a result far larger than the process's memory
//! figure goes through, a closed pipe ends it quietly, and the table format, which holds a
//! result whole, refuses one past its bound with the way out.

mod common;

use std::process::{Command, Stdio};

use common::BIN;

/// Run `cmd` to its end: its status and the highest resident set seen (`VmHWM`, read every
/// 20 ms while it runs; the high-water mark only grows).
fn run_measured(mut cmd: Command) -> (std::process::ExitStatus, u64, String) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak = peak.max(hwm.unwrap_or(0) * 1024);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the query did not finish in 300 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status, peak, stderr)
}

fn query(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["query", "--data", dir.to_str().unwrap()]).args(args);
    cmd
}

#[test]
fn a_large_result_streams_in_bounded_memory_and_a_closed_pipe_ends_it_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // A collector's dataset with nothing committed yet: the statements read no table.
    std::fs::create_dir_all(dir.path().join("_switchboard/log")).unwrap();
    // 3,000,000 rows of 100-byte text: 300 MB of values, 320 MB of CSV.
    let big = "SELECT a.value * 1000 + b.value AS n, repeat('x', 100) AS pad \
               FROM generate_series(1, 3000) a CROSS JOIN generate_series(1, 1000) b";
    let out = dir.path().join("big.csv");
    let (status, peak, stderr) =
        run_measured(query(dir.path(), &["--format", "csv", "--output", out.to_str().unwrap(), big]));
    assert!(status.success(), "{stderr}");
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size > 300_000_000, "the whole result was written: {size} bytes");
    std::fs::remove_file(&out).unwrap();
    assert!(peak > 0 && peak < 250_000_000, "the query held {peak} bytes at its peak for a {size}-byte result");

    // Into a pipe that closes after the first bytes: exit 0, at once.
    let mut child = query(dir.path(), &["--format", "ndjson", big]).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 100];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "a closed pipe is no error of the query: {status}");

    // The table format holds a result whole: past its bound it says what to do instead.
    let run = query(dir.path(), &["SELECT value FROM generate_series(1, 200000)"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("--format csv"), "{stderr}");
    // Under it, as before; and an empty result keeps its header.
    let run = query(dir.path(), &["--format", "csv", "SELECT value FROM generate_series(1, 0)"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "value\n");
    let run = query(dir.path(), &["--format", "json", "SELECT value FROM generate_series(1, 0)"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "[]");
}

#[test]
fn a_directory_that_holds_no_dataset_is_an_error_not_an_empty_answer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gateway.log"), "not a dataset\n").unwrap();
    for args in [&["SELECT count(*) FROM logs"][..], &["SHOW TABLES"][..]] {
        let out = query(dir.path(), args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("no dataset at") && stderr.contains("_switchboard/"), "{stderr}");
    }
    let out = Command::new(BIN).args(["report", "errors", "--data", dir.path().to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    // A collector's dataset with nothing committed yet is a dataset: no tables, said so.
    std::fs::create_dir_all(dir.path().join("_switchboard/log")).unwrap();
    let out = query(dir.path(), &["SELECT count(*) FROM logs"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no tables yet"), "{stderr}");
}

#[test]
fn statements_without_a_result_say_done_and_a_dataset_table_is_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("_switchboard/log")).unwrap();
    let out = query(dir.path(), &["SET datafusion.execution.batch_size = 10"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.is_empty() && stderr.contains("done: the statement has no result"),
        "{stdout}{stderr}"
    );
    // A table of the dataset (one file, written here the way an analyst's COPY would).
    let part = dir.path().join("logs/date=2026-01-01/hour=0");
    std::fs::create_dir_all(&part).unwrap();
    let copy = format!("COPY (SELECT 1 AS seq) TO '{}' STORED AS PARQUET", part.join("part-x.parquet").display());
    let out = query(dir.path(), &["--allow-write", &copy]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = query(dir.path(), &["--allow-write", "DROP TABLE logs"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("logs is a table of the dataset"), "{stderr}");
    assert!(part.join("part-x.parquet").exists());
}
