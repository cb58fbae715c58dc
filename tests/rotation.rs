//! Log rotation under continuous writing, with the agent running and while it is down:
//! rename-and-create and copytruncate. Every written line must be stored exactly once.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(90);

/// Rename-and-create every `every` lines: `app.log` becomes `app.log.<k>`.
fn rename_rotation(every: usize) -> impl FnMut(&Path, usize) + Send + 'static {
    let mut k = 0;
    move |path: &Path, n: usize| {
        if n / every > k {
            k = n / every;
            std::fs::rename(path, path.with_extension(format!("log.{k}"))).unwrap();
        }
    }
}

/// Copytruncate every `every` lines: copy `app.log` to `app.log.<k>`, truncate `app.log`.
fn copytruncate_rotation(every: usize) -> impl FnMut(&Path, usize) + Send + 'static {
    let mut k = 0;
    move |path: &Path, n: usize| {
        if n / every > k {
            k = n / every;
            std::fs::copy(path, path.with_extension(format!("log.{k}"))).unwrap();
            std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(0).unwrap();
        }
    }
}

fn run(rotation: impl FnMut(&Path, usize) + Send + 'static, down_while_writing: bool) {
    let c = Cluster::new();
    let collector = c.start_collector();
    let mut agent = c.start_agent("gw", "plain");
    // The agent holds the first file open before any rotation: a file renamed and deleted
    // before its tailer started is never read (a start slower than the first rotation lost it).
    let file = c.logs_dir("gw").join("app.log");
    std::fs::write(&file, "").unwrap();
    let tailing = wait_until(Duration::from_secs(30), || agent.log_text().contains("tailing file"));
    assert!(tailing, "{}", agent.log_text());
    let w = Writer::start("gw", file, 60, 30_000, rotation);
    if down_while_writing {
        std::thread::sleep(Duration::from_millis(1200));
        agent.stop();
        std::thread::sleep(Duration::from_millis(2500));
        agent = c.start_agent("gw", "plain");
    }
    let n = w.finish();
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= n);
    assert!(ok, "dataset holds {} of {n}\n{}", count_logs(&c.dataset()), agent.log_text());
    std::thread::sleep(Duration::from_millis(600));
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    if let Ok(dst) = std::env::var("SB_KEEP_LOG") {
        let _ = std::fs::copy(c.path().join("agent-gw.log"), dst);
    }
    assert_exactly_once(&rows);
    assert_lines(&rows, "gw", n);
}

#[test]
fn rename_and_create_while_writing() {
    run(rename_rotation(2000), false);
}

#[test]
fn rename_and_create_while_the_agent_is_down() {
    run(rename_rotation(1500), true);
}

#[test]
fn copytruncate_while_writing() {
    run(copytruncate_rotation(2000), false);
}

#[test]
fn copytruncate_while_the_agent_is_down() {
    run(copytruncate_rotation(1500), true);
}

/// Lines the agent journaled that no collector took (none was running), then a copytruncate
/// while the agent is down: the collector pulls them from the agent, which reads them back from
/// the copy (the original no longer holds them).
#[test]
fn unacknowledged_lines_are_replayed_from_the_copy_after_a_copytruncate_while_down() {
    let c = Cluster::new();
    let file = c.logs_dir("gw").join("app.log");
    append(&file, (0..3000).map(|i| numbered("gw", i)));
    let agent = c.start_agent("gw", "plain");
    let journal = c.agent_state("gw").join("journal-app.jsonl");
    let journaled = || std::fs::read_to_string(&journal).map_or(0, |t| t.lines().count());
    assert!(wait_until(Duration::from_secs(20), || journaled() > 0), "nothing journaled\n{}", agent.log_text());
    std::thread::sleep(Duration::from_millis(500));
    agent.kill();
    std::fs::copy(&file, file.with_extension("log.1")).unwrap();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(0).unwrap();
    append(&file, (3000..3500).map(|i| numbered("gw", i)));
    let collector = c.start_collector();
    let agent = c.start_agent("gw", "plain");
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= 3500);
    assert!(ok, "dataset holds {} of 3500\n{}", count_logs(&c.dataset()), agent.log_text());
    std::thread::sleep(Duration::from_millis(600));
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_exactly_once(&rows);
    assert_lines(&rows, "gw", 3500);
}

/// Rename-and-create, then delete the rotated file at once: the agent still has it open and
/// reads it to its end.
fn rename_and_delete_rotation(every: usize) -> impl FnMut(&Path, usize) + Send + 'static {
    let mut k = 0;
    move |path: &Path, n: usize| {
        if n / every > k {
            k = n / every;
            let rotated = path.with_extension(format!("log.{k}"));
            std::fs::rename(path, &rotated).unwrap();
            std::fs::remove_file(&rotated).unwrap();
        }
    }
}

/// Each file lives about 1.5 s (9,000 lines at 6,000 a second), several glob intervals: one
/// that lives less than the time a busy tailer takes to look again is never opened (documented).
#[test]
fn rotated_files_deleted_at_once_are_read_to_their_end() {
    run(rename_and_delete_rotation(9000), false);
}

#[test]
fn file_replaced_while_the_agent_is_down_even_on_the_same_inode() {
    use std::os::unix::fs::MetadataExt;
    let c = Cluster::new();
    let collector = c.start_collector();
    let file = c.logs_dir("gw").join("app.log");
    append(&file, (0..3000).map(|i| numbered("gw", i)));
    let agent = c.start_agent("gw", "plain");
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 3000));
    agent.stop();
    // Replace the file: delete it and write a new one (file systems often hand the freed inode
    // number to the new file; the fingerprint tells them apart).
    let old_ino = std::fs::metadata(&file).unwrap().ino();
    std::fs::remove_file(&file).unwrap();
    append(&file, (3000..3500).map(|i| numbered("gw", i)));
    let reused = std::fs::metadata(&file).unwrap().ino() == old_ino;
    eprintln!("inode reused by the replacement: {reused}");
    let agent = c.start_agent("gw", "plain");
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 3500), "{}", agent.log_text());
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_exactly_once(&rows);
    assert_lines(&rows, "gw", 3500);
}

/// Copytruncate onto rotated names the source already tails, overwritten in place (`cp app.log
/// app.log.1` where `app.log.1` holds an older rotation): the overwritten file is the copy, read
/// from where `app.log` stood, not again from its start.
#[test]
fn copytruncate_over_rotated_files_already_tailed() {
    let mut k = 0;
    run(
        move |path: &Path, n: usize| {
            if n / 1000 > k {
                k = n / 1000;
                std::fs::copy(path, path.with_extension(format!("log.{}", k % 3 + 1))).unwrap();
                std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(0).unwrap();
            }
        },
        false,
    );
}

/// A collector and an agent tailing `app.log`, written in numbered lines step by step.
struct Steps {
    c: Cluster,
    collector: Proc,
    agent: Proc,
    file: std::path::PathBuf,
    written: usize,
    /// Lines read by the agent's earlier runs (its counter starts again with each run).
    read_before: usize,
}

impl Steps {
    fn start() -> Self {
        let c = Cluster::new();
        let collector = c.start_collector();
        let agent = c.start_agent("gw", "plain");
        let file = c.logs_dir("gw").join("app.log");
        Steps { c, collector, agent, file, written: 0, read_before: 0 }
    }

    /// Append the next `n` lines and wait until the agent has read them.
    fn write(&mut self, n: usize) {
        append(&self.file, (self.written..self.written + n).map(|i| numbered("gw", i)));
        self.written += n;
        let read = || self.read_before + lines_read(&self.c, "gw");
        assert!(
            wait_until(DEADLINE, || read() >= self.written),
            "{} of {} lines read\n{}",
            read(),
            self.written,
            self.agent.log_text()
        );
    }

    /// Truncate `app.log` in place, and give the agent the time to find the copies and read the
    /// truncated file again.
    fn truncate(&self) {
        std::fs::OpenOptions::new().write(true).open(&self.file).unwrap().set_len(0).unwrap();
        std::thread::sleep(Duration::from_secs(3));
    }

    /// Stop the agent (SIGTERM) and start it again over its checkpoints.
    fn restart_agent(self) -> Self {
        let Steps { c, collector, agent, file, written, read_before } = self;
        let read_before = read_before + lines_read(&c, "gw");
        agent.stop();
        let agent = c.start_agent("gw", "plain");
        Steps { c, collector, agent, file, written, read_before }
    }

    /// Write 500 more lines, then check that every line written is stored once.
    fn finish(mut self) {
        self.write(500);
        let (c, written) = (&self.c, self.written);
        let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= written);
        assert!(ok, "dataset holds {} of {written}\n{}", count_logs(&c.dataset()), self.agent.log_text());
        stop_and_check_every_line(&self.c, self.agent, self.collector, written);
    }
}

/// Copytruncate with the older copies shifted by `cp` rather than renamed (`cp app.log.2
/// app.log.3; cp app.log.1 app.log.2; cp app.log app.log.1; truncate app.log`, as rotation
/// scripts do), five times so that older copies are overwritten too, each after the agent read
/// what was written: each copy continues from where the file it copies stood, and an
/// overwritten copy is not read again from its start.
#[test]
fn copytruncate_with_older_copies_shifted_by_cp() {
    let mut steps = Steps::start();
    let file = steps.file.clone();
    let numbered_copy = |i: usize| file.with_extension(format!("log.{i}"));
    for _ in 0..5 {
        steps.write(500);
        for i in (1..3).rev() {
            if numbered_copy(i).exists() {
                std::fs::copy(numbered_copy(i), numbered_copy(i + 1)).unwrap();
            }
        }
        std::fs::copy(&file, numbered_copy(1)).unwrap();
        steps.truncate();
    }
    steps.finish();
}

/// Copytruncate whose original grows between the copy and the truncation, with those lines read
/// from the original before it is truncated: the copy, shorter than where the original stood,
/// has nothing left to give and is not read again from its start (it was, every line of it
/// stored twice); the lines after the copy are stored once, from the original.
#[test]
fn copytruncate_with_lines_read_between_the_copy_and_the_truncation() {
    let mut steps = Steps::start();
    let rotated = steps.file.with_extension("log.1");
    for round in 0..3 {
        steps.write(500);
        std::fs::copy(&steps.file, &rotated).unwrap();
        steps.write(200);
        steps.truncate();
        // The agent started again over its checkpoints (lines written after the rotation carry
        // the copy's position into them), the short copy still there: it is known as a copy,
        // not taken for a file truncated while the agent was down.
        if round == 1 {
            steps.write(100);
            steps = steps.restart_agent();
        }
    }
    steps.finish();
}

/// The same while the agent is down: `app.log` copied over `app.log.1` (a rotated file it read
/// before), then truncated and written on. The checkpoint finds `app.log.1` rewritten: it is
/// the copy, read from where `app.log` stood, not again from its start.
#[test]
fn copytruncate_over_a_tailed_rotated_file_while_the_agent_is_down() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let file = c.logs_dir("gw").join("app.log");
    let rotated = file.with_extension("log.1");
    append(&rotated, (0..1000).map(|i| numbered("gw", i)));
    append(&file, (1000..3000).map(|i| numbered("gw", i)));
    let agent = c.start_agent("gw", "plain");
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= 3000);
    assert!(ok, "dataset holds {} of 3000\n{}", count_logs(&c.dataset()), agent.log_text());
    agent.stop();
    append(&file, (3000..3500).map(|i| numbered("gw", i)));
    std::fs::copy(&file, &rotated).unwrap();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(0).unwrap();
    append(&file, (3500..4000).map(|i| numbered("gw", i)));
    let agent = c.start_agent("gw", "plain");
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= 4000);
    assert!(ok, "dataset holds {} of 4000\n{}", count_logs(&c.dataset()), agent.log_text());
    stop_and_check_every_line(&c, agent, collector, 4000);
}

/// Truncations a second apart with no copy in the source's paths: each loses only what the
/// agent had not read when it came (nothing here: the test waits for the reads), not the lines
/// written after the one before.
#[test]
fn truncations_without_a_copy_a_second_apart_lose_nothing_that_was_read() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let agent = c.start_agent("gw", "plain");
    let file = c.logs_dir("gw").join("app.log");
    let mut n = 0;
    for round in 0..4 {
        if round > 0 {
            std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(0).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
        append(&file, (n..n + 100).map(|i| numbered("gw", i)));
        n += 100;
        // Read before the next truncation (lines unread at a truncation without a copy are lost).
        // The first round also waits for the agent's start.
        let within = Duration::from_secs(if round == 0 { 30 } else { 3 });
        let read = wait_until(within, || lines_read(&c, "gw") >= n);
        assert!(read, "the agent read {} of {n} lines within {within:?} of round {round}", lines_read(&c, "gw"));
    }
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= n);
    assert!(ok, "dataset holds {} of {n}\n{}", count_logs(&c.dataset()), agent.log_text());
    stop_and_check_every_line(&c, agent, collector, n);
}

/// No collector alive while the gateway writes, rotates and deletes its logs: the agent reads
/// and journals on (keeping what it read open), and the collector, back, pulls every line.
#[test]
fn files_rotated_and_deleted_while_no_collector_is_alive_lose_nothing() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let agent = c.start_agent("gw", "plain");
    let dir = c.logs_dir("gw");
    append(&dir.join("app.log"), (0..500).map(|i| numbered("gw", i)));
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 500), "{}", agent.log_text());
    collector.stop();
    let mut n = 500;
    // More batches than the agent's queue to the publisher holds (16).
    for round in 0..24 {
        let file = dir.join("app.log");
        append(&file, (n..n + 200).map(|i| numbered("gw", i)));
        n += 200;
        let read = wait_until(Duration::from_secs(10), || lines_read(&c, "gw") >= n);
        // Rotated away and deleted at once: what the agent did not read is gone from the disk.
        let rotated = dir.join(format!("app.log.{round}"));
        std::fs::rename(&file, &rotated).unwrap();
        std::fs::remove_file(&rotated).unwrap();
        assert!(read, "round {round}: the agent read {} of {n} lines with no collector alive", lines_read(&c, "gw"));
    }
    let (_, metrics) = c.http_get("gw", "/metrics");
    assert!(metric(&metrics, "switchboard_agent_held_batches_total").unwrap_or(0.0) > 0.0, "{metrics}");
    let collector = c.start_collector();
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= n);
    assert!(ok, "dataset holds {} of {n}\n{}", count_logs(&c.dataset()), agent.log_text());
    stop_and_check_every_line(&c, agent, collector, n);
}

/// A gateway that stops mid-line before its log is rotated away, or deleted: that last line,
/// never ended, is stored as it is once the file has been gone a while, once, also across a
/// restart of the agent after it was taken.
#[test]
fn a_last_line_never_ended_is_stored_once_its_file_is_rotated_away_or_deleted() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let mut agent = c.start_agent("gw", "plain");
    let dir = c.logs_dir("gw");
    let file = dir.join("app.log");
    let unended = |text: &str| {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(format!("2026-11-22T10:00:00Z INFO {text} never ended").as_bytes()).unwrap();
    };
    append(&file, (0..10).map(|i| numbered("gw", i)));
    unended("rotated-away");
    assert!(wait_until(Duration::from_secs(30), || lines_read(&c, "gw") >= 10), "{}", agent.log_text());
    std::fs::rename(&file, dir.join("app.log.1")).unwrap();
    append(&file, (10..20).map(|i| numbered("gw", i)));
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 21), "{}", agent.log_text());
    // With no collector alive the second one is journaled, and the collector pulls it back
    // (replayed from the file) when it returns.
    collector.stop();
    unended("deleted");
    assert!(wait_until(Duration::from_secs(5), || lines_read(&c, "gw") >= 21), "{}", agent.log_text());
    std::fs::remove_file(&file).unwrap();
    append(&file, (20..30).map(|i| numbered("gw", i)));
    assert!(wait_until(Duration::from_secs(20), || lines_read(&c, "gw") >= 32), "{}", agent.log_text());
    let collector = c.start_collector();
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= 32);
    assert!(ok, "dataset holds {} of 32\n{}", count_logs(&c.dataset()), agent.log_text());
    let replayed = metric(&c.http_get("gw", "/metrics").1, "switchboard_agent_replayed_lines_total");
    assert!(replayed.unwrap_or(0.0) >= 1.0, "nothing was replayed: {replayed:?}");
    agent.stop();
    agent = c.start_agent("gw", "plain");
    append(&file, (30..40).map(|i| numbered("gw", i)));
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 42), "{}", agent.log_text());
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_exactly_once(&rows);
    for text in ["rotated-away", "deleted"] {
        let found: Vec<&Row> = rows.iter().filter(|r| r.message.contains(text)).collect();
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        assert_eq!(found[0].message, format!("{text} never ended"));
    }
    assert_eq!(rows.len(), 42);
}

/// With no collector alive, a source stops reading at `max_unacked_batches` and says so; the
/// files are the buffer, and a collector that comes back gets every line.
#[test]
fn a_source_at_its_unacknowledged_bound_pauses_says_so_and_loses_nothing() {
    let c = Cluster::new();
    let source = format!(
        "[[source]]\nname = \"app\"\npaths = [\"{}/*.log*\"]\nformat = \"plain\"\n",
        c.logs_dir("gw").display()
    );
    let agent = c.start_agent_settings("gw", std::slice::from_ref(&c.endpoint), "", "max_unacked_batches = 3", &source);
    let file = c.logs_dir("gw").join("app.log");
    let mut n = 0;
    let paused = |c: &Cluster| {
        let (_, metrics) = c.http_get("gw", "/metrics");
        metric(&metrics, "switchboard_agent_source_paused{source=\"app\"}")
    };
    // Batches are cut at least 50 ms apart: a few rounds make more than three.
    for _ in 0..6 {
        append(&file, (n..n + 50).map(|i| numbered("gw", i)));
        n += 50;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(wait_until(Duration::from_secs(10), || paused(&c) == Some(1.0)), "paused: {:?}", paused(&c));
    let (_, health) = c.http_get("gw", "/health");
    assert!(health.contains("reading paused: 3 batches wait for a collector"), "{health}");
    let collector = c.start_collector();
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= n);
    assert!(ok, "dataset holds {} of {n}\n{}", count_logs(&c.dataset()), agent.log_text());
    assert!(wait_until(Duration::from_secs(10), || paused(&c) == Some(0.0)), "still paused: {:?}", paused(&c));
    stop_and_check_every_line(&c, agent, collector, n);
}

/// A copy written over an older copy whose lines no collector has acknowledged (`cp app.log
/// app.log.1` while the collector is down, copytruncate twice): those lines are gone from the
/// disk. The agent sends nothing in their place, gives them up after a minute (said and
/// counted at both ends), and the stream goes on: every other line is stored once, under its
/// own number.
#[test]
fn a_copy_written_over_unacknowledged_lines_loses_only_them_and_says_so() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let agent = c.start_agent("gw", "plain");
    let file = c.logs_dir("gw").join("app.log");
    let rotated = file.with_extension("log.1");
    let copytruncate = || {
        std::fs::copy(&file, &rotated).unwrap();
        std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(0).unwrap();
    };
    append(&file, (0..500).map(|i| numbered("gw", i)));
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 500), "{}", agent.log_text());
    collector.stop();
    for (from, to) in [(500, 1000), (1000, 1500)] {
        append(&file, (from..to).map(|i| numbered("gw", i)));
        assert!(wait_until(DEADLINE, || lines_read(&c, "gw") >= to), "{}", agent.log_text());
        copytruncate();
        // The copy found and the truncated file read again before the next round.
        std::thread::sleep(Duration::from_secs(4));
    }
    append(&file, (1500..2000).map(|i| numbered("gw", i)));
    assert!(wait_until(DEADLINE, || lines_read(&c, "gw") >= 2000), "{}", agent.log_text());
    let collector = c.start_collector();
    let lost = || metric(&c.http_get("gw", "/metrics").1, "switchboard_agent_lost_lines_total").unwrap_or(0.0);
    let done = wait_until(Duration::from_secs(180), || lost() >= 500.0 && count_logs(&c.dataset()) >= 1500);
    let given_up = || metric(&c.http_get("collector", "/metrics").1, "switchboard_collector_records_given_up_total");
    assert!(done, "lost {}, dataset {} of 1500\n{}", lost(), count_logs(&c.dataset()), agent.log_text());
    assert_eq!(lost(), 500.0);
    assert!(agent.log_text().contains("500 lines of source app (seq 500 to 999) cannot be sent again and are lost"));
    // The collector hears of it with the agent's next heads.
    wait_until(Duration::from_secs(10), || given_up() == Some(500.0));
    assert_eq!(given_up(), Some(500.0));
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    let mut seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), rows.len(), "a number stored twice");
    assert_eq!(seqs, (0..500).chain(1000..2000).collect::<Vec<i64>>());
    for r in &rows {
        assert!(r.message.contains(&format!("line {:07} ", r.seq)), "seq {} holds another line: {}", r.seq, r.message);
    }
}
