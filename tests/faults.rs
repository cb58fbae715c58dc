//! Nothing lost, nothing doubled, under the faults operators meet: kill -9 of the collector and
//! of agents, a collector outage, a collector hung past the bus lease. Each test writes a known
//! set of lines while the fault happens and checks at the end that the dataset holds each line
//! exactly once, with gap-free sequences.

mod common;

use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(90);

/// Deterministic pseudo-random delays.
fn delays(seed: u64) -> impl Iterator<Item = u64> {
    let mut s = seed;
    std::iter::repeat_with(move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s >> 33
    })
}

#[test]
fn collector_killed_repeatedly_while_agents_write() {
    let c = Cluster::new();
    let mut collector = c.start_collector();
    let agents = [c.start_agent("gw-a", "plain"), c.start_agent("gw-b", "plain")];
    let wa = Writer::start("gw-a", c.logs_dir("gw-a").join("app.log"), 40, usize::MAX, |_, _| {});
    let wb = Writer::start("gw-b", c.logs_dir("gw-b").join("app.log"), 40, usize::MAX, |_, _| {});
    let mut rng = delays(7);
    let mut leftovers = 0;
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(600 + rng.next().unwrap() % 900));
        eprintln!("round {round}: kill -9 collector (pid {})", collector.pid());
        collector.kill();
        leftovers += tmp_files(&c.dataset());
        std::thread::sleep(Duration::from_millis(100 + rng.next().unwrap() % 700));
        collector = c.start_collector();
    }
    std::thread::sleep(Duration::from_millis(500));
    finish_two(&c, [wa, wb], agents, collector, || {});
    assert!(collector_log_mentions(&c, "gap detected"), "the test should have needed a replay");
    eprintln!("uncommitted files left by the kills: {leftovers}");
    assert_eq!(tmp_files(&c.dataset()), 0, "a restarted collector removes what a killed one left");
}

/// `*.parquet.tmp` files below `dir`.
fn tmp_files(dir: &std::path::Path) -> usize {
    switchboard_bus::tables::table_files(dir).unwrap_or_default().iter().filter(|f| !f.committed).count()
}

fn collector_log_mentions(c: &Cluster, what: &str) -> bool {
    std::fs::read_to_string(c.path().join("collector.log")).unwrap_or_default().contains(what)
}

#[test]
fn agent_killed_mid_batch_then_restarted() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let file = c.logs_dir("gw").join("app.log");
    let mut agent = c.start_agent("gw", "plain");
    let w = Writer::start("gw", file.clone(), 200, usize::MAX, |_, _| {});
    let mut rng = delays(11);
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(400 + rng.next().unwrap() % 800));
        eprintln!("round {round}: kill -9 agent");
        agent.kill();
        std::thread::sleep(Duration::from_millis(rng.next().unwrap() % 500));
        agent = c.start_agent("gw", "plain");
    }
    std::thread::sleep(Duration::from_millis(300));
    let n = w.stop();
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= n);
    assert!(ok, "dataset holds {} of {n}\n{}", count_logs(&c.dataset()), agent.log_text());
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_exactly_once(&rows);
    assert_lines(&rows, "gw", n);
}

#[test]
fn collector_down_for_a_while_then_everything_arrives() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let agent = c.start_agent("gw", "plain");
    let w = Writer::start("gw", c.logs_dir("gw").join("app.log"), 50, usize::MAX, |_, _| {});
    std::thread::sleep(Duration::from_millis(800));
    collector.stop();
    // Agents keep writing into their files while no collector is up.
    std::thread::sleep(Duration::from_secs(3));
    let collector = c.start_collector();
    std::thread::sleep(Duration::from_millis(800));
    let n = w.stop();
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= n);
    assert!(ok, "dataset holds {} of {n}\n{}", count_logs(&c.dataset()), agent.log_text());
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_exactly_once(&rows);
    assert_lines(&rows, "gw", n);
}

#[test]
fn collector_hung_past_the_lease_then_resumed() {
    // A hung collector keeps its TCP links open: what the agents published before its lease ran
    // out waits in the kernel and in zenoh's queues, then the agents journal without publishing.
    // On SIGCONT the collector takes that burst, the agents publish again, and the gap between
    // the two is pulled from their journals.
    let c = Cluster::new();
    let collector = c.start_collector();
    let agents = [c.start_agent("gw-a", "plain"), c.start_agent("gw-b", "plain")];
    let wa = Writer::start("gw-a", c.logs_dir("gw-a").join("app.log"), 20, usize::MAX, |_, _| {});
    let wb = Writer::start("gw-b", c.logs_dir("gw-b").join("app.log"), 20, usize::MAX, |_, _| {});
    std::thread::sleep(Duration::from_millis(1500));
    eprintln!("SIGSTOP collector (pid {})", collector.pid());
    common::signal(collector.pid(), "-STOP");
    let seen_gone =
        wait_until(Duration::from_secs(15), || c.http_get("gw-a", "/health").1.contains("no collector is alive"));
    std::thread::sleep(Duration::from_secs(2));
    common::signal(collector.pid(), "-CONT");
    assert!(seen_gone, "gw-a should say no collector is alive\n{}", c.http_get("gw-a", "/health").1);
    std::thread::sleep(Duration::from_millis(1500));
    finish_two(&c, [wa, wb], agents, collector, || {
        let back =
            wait_until(Duration::from_secs(15), || !c.http_get("gw-a", "/health").1.contains("no collector is alive"));
        assert!(back, "gw-a should see the collector again\n{}", c.http_get("gw-a", "/health").1);
    });
}

/// Stop the writers of gw-a and gw-b, wait until the dataset holds every line they wrote, run
/// `before_stop`, stop the processes and check that each line is there exactly once.
fn finish_two(c: &Cluster, [wa, wb]: [Writer; 2], agents: [Proc; 2], collector: Proc, before_stop: impl FnOnce()) {
    let (na, nb) = (wa.stop(), wb.stop());
    let total = na + nb;
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= total);
    assert!(ok, "dataset holds {} of {total}\n{}", count_logs(&c.dataset()), collector.log_text());
    before_stop();
    for a in agents {
        a.stop();
    }
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_exactly_once(&rows);
    assert_lines(&rows, "gw-a", na);
    assert_lines(&rows, "gw-b", nb);
}
