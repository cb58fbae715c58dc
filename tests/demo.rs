//! The demo runs to completion (shortened) and its own SQL summary finds every line once.

mod common;

use std::process::Command;

#[test]
fn demo_runs_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = Command::new(common::BIN)
        .args(["demo", "--duration", "3s", "--rate", "400", "--dir", demo.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("Lines per node and level"), "{stdout}");
    assert!(stdout.contains("Errors per operator"), "{stdout}");
    assert!(stdout.contains("0 duplicate keys: exactly once"), "{stdout}");
    assert!(stderr.contains("written"), "progress is shown: {stderr}");
    // The rows the demo says it stored are really in the files.
    let rows = common::read_logs(&demo.join("dataset"));
    let nodes: std::collections::BTreeSet<_> = rows.iter().map(|r| r.node.clone()).collect();
    assert_eq!(nodes.len(), 3);
    assert!(stdout.contains(&format!("{} rows stored", rows.len())), "{stdout}");
    reports_and_windows(&demo.join("dataset"), rows.len());
    // A second run into the same directory clears the first.
    let again = Command::new(common::BIN)
        .args(["demo", "--duration", "1s", "--rate", "100", "--nodes", "1", "--dir", demo.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn demo_refuses_a_directory_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), b"keep me").unwrap();
    let out = Command::new(common::BIN)
        .args(["demo", "--duration", "1s", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not made by the demo"));
    assert!(dir.path().join("precious.txt").exists());
}

fn run(args: &[&str]) -> (String, String) {
    let out = Command::new(common::BIN).args(args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?}\n{stdout}\n{stderr}");
    (stdout.into_owned(), stderr.into_owned())
}

/// Reports over the demo's logs, a chart, time windows and Parquet output.
fn reports_and_windows(dataset: &std::path::Path, rows: usize) {
    let data = dataset.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("volume.svg");
    let (out, _) = run(&[
        "report",
        "log-volume",
        "--data",
        data,
        "--bucket",
        "1d",
        "--format",
        "csv",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let per_node: usize = out.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().parse::<usize>().unwrap()).sum();
    assert_eq!(per_node, rows, "{out}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.matches("<polyline").count() == 3, "{chart}");
    let (out, _) = run(&["report", "top-errors", "--data", data, "--limit", "2", "--format", "csv"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    // Nothing before 2020; everything since a day ago; a window the wrong way round is refused.
    let (out, _) =
        run(&["query", "--data", data, "--until", "2020-01-01", "--format", "csv", "SELECT count(*) FROM logs"]);
    assert_eq!(out.lines().nth(1), Some("0"));
    let file = dir.path().join("out.parquet");
    run(&[
        "query",
        "--data",
        data,
        "--since",
        "1d",
        "--format",
        "parquet",
        "-o",
        file.to_str().unwrap(),
        "SELECT node, seq FROM logs",
    ]);
    let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    use parquet::file::reader::FileReader as _;
    assert_eq!(reader.metadata().file_metadata().num_rows() as usize, rows);
    let out = Command::new(common::BIN)
        .args(["query", "--data", data, "--since", "1h", "--until", "2h", "SELECT 1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since must be before --until"));
    let out = Command::new(common::BIN).args(["report", "timer", "--data", data]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("reads the metrics table"), "no metrics in the demo");
}
