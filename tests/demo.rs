//! The demo runs to completion (shortened) and its own SQL summary finds every line once.

mod common;

use std::process::Command;

#[test]
fn demo_runs_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = Command::new(common::BIN)
        .args(["demo", "--duration", "12s", "--rate", "400", "--dir", demo.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n{stdout}\n{stderr}");
    for section in ["1. Logs, exactly once", "2. One rate limit", "3. DLRs", "4. Gateway metrics", "Reports in"] {
        assert!(stdout.contains(section), "{section}:\n{stdout}");
    }
    assert!(stdout.contains("0 duplicate keys: exactly once"), "{stdout}");
    assert!(stderr.contains("kill -9 gw2") && stderr.contains("gw2 restarted"), "the fault happened: {stderr}");
    assert!(stderr.contains("log lines written"), "progress is shown: {stderr}");
    // The rows the demo says it stored are really in the files, the killed node's too.
    let rows = common::read_logs(&demo.join("dataset"));
    let nodes: std::collections::BTreeSet<_> = rows.iter().map(|r| r.node.clone()).collect();
    assert_eq!(nodes.len(), 3);
    common::assert_exactly_once(&rows);
    assert!(stdout.contains(&format!("{} rows stored", rows.len())), "{stdout}");
    // DLRs were found from other nodes, and the killed node's from its copies.
    let copies = stdout
        .lines()
        .find(|l| l.contains("found in one bus round trip from another node"))
        .and_then(|l| l.split(", ").last())
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(copies.is_some_and(|n| n > 0), "copies answered: {stdout}");
    // Every DLR its gateways handed in was a registered message: none is called missing, not
    // even one registered on gw2 just before it was killed (unknown, 503, until it is back).
    if !stdout.contains(" 0 not found,") {
        // Which record, and everything that happened to it, where and when.
        let sql = "SELECT ts, at_node, event, connector, id, owner, answered_by, status FROM dlr \
                   WHERE id IN (SELECT id FROM dlr WHERE event = 'not_found') ORDER BY ts";
        let dataset = demo.join("dataset");
        let history = Command::new(common::BIN)
            .args(["query", "--data", dataset.to_str().unwrap_or_default(), sql])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("a DLR was called missing:\n{stdout}\n{history}\n{stderr}");
    }
    // The reports and a chart are in the demo directory, each one with rows.
    for (name, _) in [("throughput", ()), ("log-volume", ()), ("dlr-latency", ()), ("timer", ()), ("rejections", ())] {
        let text = std::fs::read_to_string(demo.join("reports").join(format!("{name}.txt"))).unwrap();
        assert!(text.lines().count() >= 4, "report {name}:\n{text}");
    }
    let chart = std::fs::read_to_string(demo.join("reports/throughput.svg")).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("<polyline"), "{chart}");
    reports_and_windows(&demo.join("dataset"), rows.len());
    independent_readers_agree(&demo.join("dataset"));
    // A second run into the same directory clears the first.
    let again = Command::new(common::BIN)
        .args(["demo", "--duration", "2s", "--rate", "100", "--nodes", "1", "--dir", demo.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}

/// Plain `switchboard query` after a demo in the same directory finds the demo's dataset; with
/// no dataset at all it says which `--data` to pass.
#[test]
fn query_after_the_demo_finds_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let query = |sql: &str| Command::new(common::BIN).current_dir(dir.path()).args(["query", sql]).output().unwrap();
    let none = query("SELECT 1");
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no dataset at switchboard-data: pass --data"));
    let demo = Command::new(common::BIN)
        .current_dir(dir.path())
        .args(["demo", "--duration", "2s", "--rate", "100", "--nodes", "2", "--no-kill"])
        .output()
        .unwrap();
    assert!(demo.status.success(), "{}", String::from_utf8_lossy(&demo.stderr));
    let out = query("SELECT count(DISTINCT node) AS nodes FROM logs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains('2'), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading the demo's dataset switchboard-demo/dataset"));
}

/// Ctrl-C in a terminal signals the whole foreground process group: the demo stops early and
/// its processes with it, in order, every line written stored once (its processes, in the
/// demo's group, stopped at once, and the demo waited a minute and reported a mismatch).
#[test]
fn ctrl_c_stops_the_demo_early_with_every_line_stored_once() {
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let child = Command::new(common::BIN)
        .process_group(0)
        .args(["demo", "--duration", "60s", "--rate", "200", "--nodes", "2", "--no-kill"])
        .args(["--dir", demo.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Running: the collector has committed lines.
    let running = common::wait_until(std::time::Duration::from_secs(60), || demo.join("dataset").join("logs").exists());
    assert!(running, "the demo did not start");
    std::thread::sleep(std::time::Duration::from_secs(6));
    let group = format!("-{}", child.id());
    assert!(Command::new("kill").args(["-INT", "--", &group]).status().unwrap().success());
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stdout.contains("0 duplicate keys: exactly once"), "{stdout}\n{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(45), "stopping took {:?}", started.elapsed());
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

/// Spark, DuckDB and pyarrow (tests/py/readers.py) count every table the demo wrote as
/// `switchboard query` does, since the README says they read the files as they are.
fn independent_readers_agree(dataset: &std::path::Path) {
    let script = format!("{}/tests/py/readers.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3").arg(&script).arg(dataset).output().expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "readers.py failed:\n{stderr}");
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for table in ["logs", "metrics", "limits", "dlr"] {
        let (ours, _) = run(&[
            "query",
            "--data",
            dataset.to_str().unwrap(),
            "--format",
            "csv",
            &format!("SELECT count(*) FROM {table}"),
        ]);
        let ours: u64 = ours.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap();
        assert!(ours > 0, "the demo wrote the {table} table");
        for reader in ["spark", "duckdb", "pyarrow"] {
            assert_eq!(counts[table][reader].as_u64(), Some(ours), "{reader} on {table}: {counts}");
        }
    }
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
    // The dataset as the collector's data_dir may name it, `file:///...`, reads the same.
    let url = format!("file://{}", dataset.canonicalize().unwrap().display());
    let (same, _) = run(&["report", "top-errors", "--data", &url, "--limit", "2", "--format", "csv"]);
    assert_eq!(same, out);
    // A bucket under a second is refused, not read as one second.
    let out =
        Command::new(common::BIN).args(["report", "log-volume", "--data", data, "--bucket", "500ms"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("whole number of seconds"), "{err}");
    // A report into a Parquet file, as `--format parquet` offers.
    let file = svg.with_file_name("top-errors.parquet");
    run(&["report", "top-errors", "--data", data, "--limit", "2", "--format", "parquet", "-o", file.to_str().unwrap()]);
    assert!(std::fs::read(&file).unwrap().starts_with(b"PAR1"), "{}", file.display());
    // A chart's note on a closed stderr: the report is still written, and no panic.
    let mut child = Command::new(common::BIN)
        .args(["report", "log-volume", "--data", data, "--format", "csv", "--plot", svg.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("time,node,lines"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
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
    let (out, _) = run(&["report", "timer", "--data", data, "--format", "csv"]);
    assert!(out.lines().count() >= 2 && out.contains("vodafone-de"), "the demo's timers, merged:\n{out}");
}
