//! The configuration repository against three node processes: the time from a push to the last
//! node's switch, for a whole tree of `--files` files of about `--file-kib` KiB each (every
//! file new) and for a one-line change to one of them, with the bytes each push carried; beside
//! the anchor of writing the same tree's files into a directory and flushing them (as the nodes
//! do: several `fsync`s at once) on this machine, the least any node must do to apply a whole
//! tree durably. The disk is left quiet (`sync`) before each timed step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use switchboard_bus::keys::KeySpace;
use switchboard_bus::repo::wire::{fetch_states, Pack};
use switchboard_bus::repo::{FileEntry, Revision};
use zenoh::qos::CongestionControl;

use crate::dlr::Cluster;

/// What `sb-bench config` runs.
pub(crate) struct ConfigBench {
    /// Files in the tree.
    pub files: usize,
    /// Size of each file, in KiB.
    pub file_kib: usize,
    /// Pushes of each kind (the median is printed).
    pub repeat: usize,
}

/// A tree whose every file differs with `seed`: `files` text files of `kib` KiB under `global/`.
fn tree(files: usize, kib: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    (0..files)
        .map(|i| {
            let mut text = String::with_capacity(kib * 1024);
            let mut line = 0u64;
            while text.len() < kib * 1024 {
                text.push_str(&format!("route.{i}.{line} = smsc-{:016x}\n", seed.wrapping_mul(0x9e37_79b9) ^ line));
                line += 1;
            }
            (format!("global/dir{}/file{i}.conf", i % 20), text.into_bytes())
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

struct Pusher<'a> {
    rt: &'a tokio::runtime::Runtime,
    session: zenoh::Session,
    keys: KeySpace,
    parent: Option<(String, u64, BTreeMap<String, FileEntry>)>,
}

impl Pusher<'_> {
    /// Push `files` on top of the last push (carrying the contents it lacks) and wait until
    /// every node applied it: (time to the last node's switch, bytes put).
    fn push(&mut self, files: &BTreeMap<String, Vec<u8>>, nodes: usize) -> Result<(Duration, usize)> {
        let entries: BTreeMap<String, FileEntry> = files.iter().map(|(p, c)| (p.clone(), FileEntry::of(c))).collect();
        let (parents, number, have) = match &self.parent {
            Some((id, n, f)) => (vec![id.clone()], n + 1, f.values().map(|e| e.sha256.clone()).collect()),
            None => (Vec::new(), 1, std::collections::BTreeSet::new()),
        };
        let rev = Revision {
            version: 1,
            number,
            parents,
            author: "bench".into(),
            at_ms: switchboard_bus::status::now_ms(),
            message: String::new(),
            files: entries.clone(),
        };
        let id = rev.id();
        let carry = files.values().filter(|c| !have.contains(&FileEntry::of(c).sha256)).map(Vec::as_slice);
        let body = Pack::new(rev, carry).encode();
        let bytes = body.len();
        let key = self.keys.config_push()?;
        let start = Instant::now();
        self.rt.block_on(async {
            self.session
                .put(key, body)
                .congestion_control(CongestionControl::Block)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        })?;
        let deadline = start + Duration::from_secs(60);
        loop {
            let states = self.rt.block_on(fetch_states(&self.session, &self.keys, Duration::from_secs(2)));
            let applied = states.iter().flatten().filter(|s| s.applied.as_ref().is_some_and(|a| a.id == id)).count();
            if applied == nodes {
                break;
            }
            if let Some(b) = states.iter().flatten().find_map(|s| s.blocked.clone()) {
                bail!("a node did not apply revision {number}: {}", b.why);
            }
            if Instant::now() > deadline {
                bail!("revision {number} applied on {applied} of {nodes} nodes after 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let took = start.elapsed();
        self.parent = Some((id, number, entries));
        Ok((took, bytes))
    }
}

/// Let the kernel write back what earlier steps left dirty (`sync`, not timed), so that each
/// measurement pays for its own writes only.
fn quiet_disk() {
    let _ = std::process::Command::new("sync").status();
}

/// Write `files` into a fresh directory and flush them and their directories: the anchor.
fn write_and_flush(dir: &std::path::Path, files: &BTreeMap<String, Vec<u8>>) -> Result<Duration> {
    let start = Instant::now();
    let mut written = Vec::new();
    for (path, content) in files {
        let to = dir.join(path);
        if let Some(parent) = to.parent() {
            if !written.contains(&parent.to_path_buf()) {
                std::fs::create_dir_all(parent)?;
                written.push(parent.to_path_buf());
            }
        }
        std::fs::write(&to, content)?;
        written.push(to);
    }
    written.push(dir.to_path_buf());
    switchboard_bus::repo::store::sync_files(&written)?;
    Ok(start.elapsed())
}

pub(crate) fn run(b: &ConfigBench) -> Result<()> {
    let cluster = Cluster::start_with(0, 16, false, 1, "[limits]\nenabled = false\n")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let keys = KeySpace::new(&format!("sb/{}", cluster.name))?;
    let session = cluster.client(&rt, false)?;
    let nodes = cluster.nodes.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.block_on(fetch_states(&session, &keys, Duration::from_secs(2))).iter().flatten().count() < nodes {
        if Instant::now() > deadline {
            bail!("the nodes' configuration states did not all answer within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut pusher = Pusher { rt: &rt, session, keys, parent: None };
    let size: usize = tree(b.files, b.file_kib, 0).values().map(Vec::len).sum();
    println!(
        "configuration repository: {nodes} nodes, a tree of {} files, {:.1} MiB; {} pushes of each kind",
        b.files,
        size as f64 / (1 << 20) as f64,
        b.repeat
    );
    let (mut whole, mut whole_bytes) = (Vec::new(), 0);
    let (mut line, mut line_bytes) = (Vec::new(), 0);
    let mut anchors = Vec::new();
    let scratch = tempfile::tempdir()?;
    for r in 0..b.repeat {
        let full = tree(b.files, b.file_kib, r as u64 + 1);
        quiet_disk();
        anchors.push(write_and_flush(&scratch.path().join(format!("t{r}")), &full)?);
        quiet_disk();
        let (t, bytes) = pusher.push(&full, nodes)?;
        whole.push(t);
        quiet_disk();
        whole_bytes = bytes;
        let mut changed = full.clone();
        if let Some(first) = changed.values_mut().next() {
            first.extend_from_slice(format!("route.extra.{r} = smsc-new\n").as_bytes());
        }
        let (t, bytes) = pusher.push(&changed, nodes)?;
        line.push(t);
        line_bytes = bytes;
    }
    let anchor = median(anchors);
    let (w, l) = (median(whole), median(line));
    println!("{:<58} {:>10} {:>14} {:>8}", "", "median", "pushed bytes", "vs anchor");
    println!(
        "{:<58} {:>8.1}ms {:>14} {:>8}",
        "anchor: write the tree's files here and fsync them (one node)",
        anchor.as_secs_f64() * 1e3,
        "-",
        "1.00x"
    );
    let row = |name: &str, t: Duration, bytes: usize| {
        let ratio = t.as_secs_f64() / anchor.as_secs_f64();
        println!("{name:<58} {:>8.1}ms {bytes:>14} {ratio:>7.2}x", t.as_secs_f64() * 1e3);
    };
    row("push of a whole new tree to applied on every node", w, whole_bytes);
    row("push of a one-line change to applied on every node", l, line_bytes);
    Ok(())
}
