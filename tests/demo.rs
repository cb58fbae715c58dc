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
