//! Cluster-wide limits with real agent processes on loopback: gateways' demand goes through each
//! agent's Unix socket, every allowed unit is timestamped here, and the cluster's admissions are
//! counted per 1 s window (sliding, 100 ms steps) across nodes.

mod common;

use std::time::{Duration, Instant};

use common::limits::LimitsNode;
use common::limits::{admitted, http_post, window_extremes, Load, Proxy, SocketClient};
use common::{metric, wait_until, Cluster, Proc};

const RATE_1000: &str = "[[limit]]\nkey = \"operator:*\"\nrate = 1000\n";

/// Wait until every named agent answers on `/health`.
/// The tests that measure how close admissions come to a limit run one at a time: on two cores,
/// another test's agents and load beside them delay the share exchange they measure.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn measuring() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed holding it poisons it; the next one measures all the same.
    MEASURING.lock().unwrap_or_else(|p| p.into_inner())
}

fn wait_healthy(c: &Cluster, nodes: &[&str]) {
    for n in nodes {
        assert!(wait_until(Duration::from_secs(15), || c.http_get(n, "/health").0 == 200), "{n} never became healthy");
    }
}

/// Wait until `node`'s `/v1/limits` shows `n` known nodes, all live, on `revision`.
fn wait_for_view(c: &Cluster, node: &str, n: usize, revision: u64) {
    let ok = wait_until(Duration::from_secs(15), || {
        let (code, body) = c.http_get(node, "/v1/limits");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { return false };
        let nodes = v["nodes"].as_object().map_or(0, |m| m.values().filter(|p| p["state"] == "live").count());
        code == 200 && nodes == n && v["revision"] == revision
    });
    assert!(ok, "{node} never saw {n} live nodes on revision {revision}: {:?}", c.http_get(node, "/v1/limits"));
}

/// Three nodes asking once a second each, out of step, under a limit of 5/s with a burst of 1:
/// 3/s in all, well below it. A node that asks now and then must read as asking (its demand is
/// its average between requests), not as idle with the floor share (5 × 0.02 = one request
/// every 10 s), which refused most of them.
#[test]
fn nodes_asking_now_and_then_below_a_small_limit_are_admitted() {
    let _one_at_a_time = measuring();
    let (c, _collector, agents, out) = three_agents_with("[[limit]]\nkey = \"sparse\"\nrate = 5\nburst = 1\n");
    assert!(out.contains("in force on 3 of 3 nodes"), "{out}");
    let mut loads = Vec::new();
    for n in ["a", "b", "c"] {
        loads.push(Load::start(c.socket(n), "sparse", 1));
        std::thread::sleep(Duration::from_millis(330));
    }
    std::thread::sleep(Duration::from_secs(15));
    let (allowed, asked) = stop_loads(loads);
    let (allowed_all, asked_all) = (allowed.iter().sum::<usize>() as u64, asked.iter().sum::<u64>());
    eprintln!("allowed {allowed:?} of asked {asked:?}");
    // The first request of each node may meet a share not yet split by its demand, and on a
    // host running the whole suite reports come late (one node had 9 of 15 so, 38 of 45 in
    // all); as demand read before (idle between requests) 20 of 45 passed.
    assert!(allowed_all * 10 >= asked_all * 7, "allowed {allowed:?} of asked {asked:?}");
    drop(agents);
}

/// A collector and agents a, b and c linked to each other, healthy, with `limits` set and in
/// force on all three: the cluster, the collector, the agents and what `limits set` printed.
fn three_agents_with(limits: &str) -> (Cluster, Proc, [LimitsNode; 3], String) {
    let c = Cluster::new();
    let collector = c.start_collector();
    let a = c.start_limits_agent("a", std::slice::from_ref(&c.endpoint), "", "");
    let b = c.start_limits_agent("b", &[c.endpoint.clone(), a.endpoint()], "", "");
    let cc = c.start_limits_agent("c", &[c.endpoint.clone(), a.endpoint(), b.endpoint()], "", "");
    wait_healthy(&c, &["a", "b", "c"]);
    let out = c.set_limits(&a.endpoint(), limits, "first");
    for n in ["a", "b", "c"] {
        wait_for_view(&c, n, 3, 1);
    }
    (c, collector, [a, b, cc], out)
}

/// Stop every load: what each had admitted and asked for.
fn stop_loads(loads: impl IntoIterator<Item = Load>) -> (Vec<usize>, Vec<u64>) {
    loads
        .into_iter()
        .map(|l| {
            let asked = l.asked.clone();
            let n = l.stop();
            (n, asked.load(std::sync::atomic::Ordering::Relaxed))
        })
        .unzip()
}

#[test]
fn skewed_and_shifting_demand_stays_within_the_limit_and_every_decision_reaches_the_limits_table() {
    let _one_at_a_time = measuring();
    let (c, _collector, [a, b, cc], out) = three_agents_with(RATE_1000);
    assert!(out.contains("in force on 3 of 3 nodes"), "{out}");

    let loads = [
        Load::start(c.socket("a"), "operator:x", 1600),
        Load::start(c.socket("b"), "operator:x", 400),
        Load::start(c.socket("c"), "operator:x", 100),
    ];
    let all: Vec<&Load> = loads.iter().collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    // From idle: every node splits by the same (earlier) demand, so the first second keeps to
    // the limit too (each node counting its own new demand against the others' old would give
    // every node most of the limit for a tick).
    let from_idle = window_extremes(&all, t0, t0 + Duration::from_millis(1500));
    let skewed = window_extremes(&all, t0 + Duration::from_millis(1500), Instant::now());
    // Demand shifts from a to c.
    loads[0].set_rate(100);
    loads[2].set_rate(1600);
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let shifted = window_extremes(&all, t1 + Duration::from_millis(1500), Instant::now());
    let across_shift = window_extremes(&all, t0 + Duration::from_millis(1500), Instant::now());
    let per_node: Vec<usize> =
        loads.iter().map(|l| admitted(&[l], t1 + Duration::from_secs(2), Duration::from_secs(3))).collect();
    let timeline = common::limits::timeline(&all, t0, Instant::now());
    let (allowed, asked) = stop_loads(loads);
    eprintln!("windows (max, min): from idle {from_idle:?}, skewed {skewed:?}, shifted {shifted:?}, across {across_shift:?}; after the shift per node {per_node:?}\nallowed/denied per 250 ms (a b c):\n{timeline}");
    // Across the shift the windows dip while the shares follow demand (a's share is still large
    // while its demand has fallen): 790 of 1000 once in CI, where the steady windows stayed at
    // 982-988. The steady windows keep the tighter floor.
    for (what, (most, least), floor) in
        [("skewed", skewed, 850), ("shifted", shifted, 850), ("across the shift", across_shift, 700)]
    {
        assert!(most <= 1020, "{what}: a 1 s window admitted {most} of a 1000/s limit");
        assert!(least >= floor, "{what}: a 1 s window admitted only {least} of 1000 under demand of 2100/s");
    }
    // 101% (the documented bound); each node counting its fresh demand against the others'
    // older reports admitted 1011-1018 here.
    assert!(from_idle.0 <= 1010, "from idle: a 1 s window admitted {} of a 1000/s limit", from_idle.0);
    assert!(per_node[2] > per_node[0] * 3, "the share followed demand to c: {per_node:?}");

    // Every decision, allowed or denied, is in the limits table once.
    let (total_allowed, total_asked) = (allowed.iter().sum::<usize>() as u64, asked.iter().sum::<u64>());
    let expect = format!("{total_allowed},{}", total_asked - total_allowed);
    let sql =
        "SELECT coalesce(sum(allowed), 0) AS a, coalesce(sum(denied), 0) AS d FROM limits WHERE key = 'operator:x'";
    let mut last = None;
    let ok = wait_until(Duration::from_secs(30), || {
        last = c.query_csv(sql);
        last.as_deref().is_some_and(|t| t.lines().nth(1) == Some(expect.as_str()))
    });
    assert!(ok, "limits table: expected {expect}, got {last:?}");
    let per_node_sql =
        "SELECT node, sum(allowed) AS a FROM limits WHERE key = 'operator:x' GROUP BY node ORDER BY node";
    let table = c.query_csv(per_node_sql).unwrap();
    let want: Vec<String> = ["a", "b", "c"].iter().zip(&allowed).map(|(n, a)| format!("{n},{a}")).collect();
    assert_eq!(table.lines().skip(1).collect::<Vec<_>>(), want);

    let (ok, list) = c.limits_cli(&a.endpoint(), &["list"]);
    assert!(
        ok && list.contains("revision 1, set")
            && list.contains("operator:*")
            && list.matches("revision 1").count() >= 4,
        "{list}"
    );
    let (ok, history) = c.limits_cli(&cc.endpoint(), &["history"]);
    assert!(ok && history.contains("test  first") && history.contains("+ operator:*: 1000/second"), "{history}");
    drop((a, b, cc));
}

/// A collector, agent a linked to it, and agent b linked to both (limits and DLRs on).
fn collector_a_and_b(c: &Cluster) -> (common::Proc, common::limits::LimitsNode, common::limits::LimitsNode) {
    let collector = c.start_collector();
    let a = c.start_limits_agent("a", std::slice::from_ref(&c.endpoint), "", "");
    let b = c.start_limits_agent("b", &[a.endpoint(), c.endpoint.clone()], "", "");
    (collector, a, b)
}

#[test]
fn a_killed_node_frees_its_share_and_its_slots_at_once() {
    let _one_at_a_time = measuring();
    let c = Cluster::new();
    // A third process (the collector) answers a's question whether anyone still sees b: no one
    // does, so b exited (two agents alone could not tell a death from a cut, and would hold).
    let (_collector, a, b) = collector_a_and_b(&c);
    wait_healthy(&c, &["a", "b"]);
    // A node's demand reports begin once it is live: a start is not a refusal.
    for node in ["a", "b"] {
        let (_, text) = c.http_get(node, "/metrics");
        let refused = text.lines().find(|l| l.contains("reason=\"counter_invalid\"")).unwrap_or_default();
        assert!(refused.ends_with(" 0"), "{node}: {refused}");
    }
    c.set_limits(
        &a.endpoint(),
        &format!("{RATE_1000}\n[[limit]]\nkey = \"domain:*\"\nconcurrency = 20\n"),
        "two kinds",
    );
    wait_for_view(&c, "a", 2, 1);
    wait_for_view(&c, "b", 2, 1);

    // Each node takes slots until refused: together they never hold more than 20, b's first use
    // included (it must not start from an equal split while a has grown past its own), and as b
    // keeps asking, its share grows into every slot a does not hold.
    let (mut ca, mut cb) = (SocketClient::connect(&c.socket("a")), SocketClient::connect(&c.socket("b")));
    // a asks across a few coordination ticks, growing past its equal split (b has not used the
    // key), then gives 7 back; b's first use comes right after.
    let (mut held_a, until) = (0, Instant::now() + Duration::from_secs(3));
    while Instant::now() < until && held_a < 20 {
        held_a += usize::from(ca.acquire("domain:example.com"));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(held_a, 20, "a alone grows into the whole limit");
    assert_eq!(ca.request("RELEASE domain:example.com 7"), "OK 7");
    held_a = 13;
    let mut held_b = (0..30).filter(|_| cb.acquire("domain:example.com")).count();
    assert!(held_a + held_b <= 20, "slots held at first: a {held_a}, b {held_b}");
    let mut most = held_a + held_b;
    let all_taken = wait_until(Duration::from_secs(5), || {
        held_b += (0..5).filter(|_| cb.acquire("domain:example.com")).count();
        most = most.max(held_a + held_b);
        held_a + held_b >= 20
    });
    assert!(all_taken && most == 20, "slots held: a {held_a}, b {held_b}");

    let la = Load::start(c.socket("a"), "operator:x", 1000);
    let lb = Load::start(c.socket("b"), "operator:x", 1000);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let before = window_extremes(&[&la, &lb], t0 + Duration::from_secs(1), Instant::now());
    let a_alone_before = admitted(&[&la], t0 + Duration::from_secs(2), Duration::from_secs(1));
    b.proc.unwrap().kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let a_after = admitted(&[&la], killed + Duration::from_secs(1), Duration::from_secs(1));
    let a_after_2 = admitted(&[&la], killed + Duration::from_secs(2), Duration::from_secs(1));
    // b's slots are a's now.
    let freed = wait_until(Duration::from_secs(3), || ca.acquire("domain:example.com"));
    let extra = 1 + (0..30).filter(|_| ca.acquire("domain:example.com")).count();
    let timeline = common::limits::timeline(&[&la, &lb], t0, Instant::now());
    la.stop();
    lb.stop();
    eprintln!("before {before:?}, a alone before {a_alone_before}, a after kill {a_after}, {a_after_2}; slots {held_a}+{held_b}, then a took {extra}\nallowed/denied per 250 ms (a b), b killed at {} ms:\n{timeline}", (killed - t0).as_millis());
    assert!(before.0 <= 1020 && before.1 >= 850, "{before:?}");
    assert!(a_alone_before < 700, "a had about half before: {a_alone_before}");
    assert!(
        a_after >= 900 && (900..=1020).contains(&a_after_2),
        "a took the whole limit within 1 s: {a_after}, {a_after_2}"
    );
    assert!(freed && held_a + extra == 20, "a holds {held_a} + {extra} slots after b's death");
    // `limits list` names the node that is down among the nodes.
    let (ok, list) = c.limits_cli(&a.endpoint(), &["list"]);
    assert!(ok && list.contains("b is down (gone since") && list.contains("when it starts"), "{list}");

    // b comes back (with the limits of its history) while a holds all 20 slots and admits the
    // whole rate: its gateway's first requests, sent the moment its socket is up, take none of
    // the slots, and the two together stay within the rate while b settles in.
    let la = Load::start(c.socket("a"), "operator:x", 1000);
    std::thread::sleep(Duration::from_secs(2));
    let b_port = b.port;
    let back = Instant::now();
    let _b = c.restart_limits_agent("b", b_port, &[a.endpoint()], "", "");
    let lb = Load::start(c.socket("b"), "operator:x", 1000);
    let mut cb = SocketClient::connect(&c.socket("b"));
    let took = (0..30).filter(|_| cb.acquire("domain:example.com")).count();
    std::thread::sleep(Duration::from_secs(1));
    let took_later = (0..30).filter(|_| cb.acquire("domain:example.com")).count();
    assert_eq!((took, took_later), (0, 0), "a restarted b took slots a holds");
    std::thread::sleep(Duration::from_secs(3));
    let rejoined = window_extremes(&[&la, &lb], back, Instant::now());
    la.stop();
    lb.stop();
    eprintln!("while b rejoined: {rejoined:?}");
    assert!(rejoined.0 <= 1020, "over the limit while b rejoined: {rejoined:?}");
    drop(a);
}

#[test]
fn a_partition_keeps_each_side_to_its_share_and_healing_restores_the_split() {
    let _one_at_a_time = measuring();
    let c = Cluster::new();
    let a = c.start_limits_agent("a", &[], "gossip = false", "");
    let proxy = Proxy::start(a.port);
    let b = c.start_limits_agent("b", &[proxy.endpoint()], "gossip = false", "");
    wait_healthy(&c, &["a", "b"]);
    c.set_limits(&a.endpoint(), RATE_1000, "partition test");
    wait_for_view(&c, "a", 2, 1);
    wait_for_view(&c, "b", 2, 1);

    let la = Load::start(c.socket("a"), "operator:x", 1000);
    let lb = Load::start(c.socket("b"), "operator:x", 1000);
    std::thread::sleep(Duration::from_secs(3));
    let cut = Instant::now();
    proxy.cut();
    // The lease is 3 s: after it each side sees the other vanish silently and holds its share.
    let silent = wait_until(Duration::from_secs(8), || {
        let (_, body) = c.http_get("a", "/v1/limits");
        body.contains("\"silent\"")
    });
    // Demand on a doubles while cut off: a still keeps to its share.
    la.set_rate(2000);
    std::thread::sleep(Duration::from_secs(4));
    let during = window_extremes(&[&la, &lb], cut, Instant::now());
    let a_during = admitted(&[&la], Instant::now() - Duration::from_secs(2), Duration::from_secs(1));
    proxy.heal();
    let healed = Instant::now();
    wait_for_view(&c, "a", 2, 1);
    let rejoined = healed.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    let after = window_extremes(&[&la, &lb], healed, Instant::now());
    let settled = window_extremes(&[&la, &lb], Instant::now() - Duration::from_secs(2), Instant::now());
    let a_settled = admitted(&[&la], Instant::now() - Duration::from_secs(1), Duration::from_secs(1));
    let timeline = common::limits::timeline(&[&la, &lb], cut - Duration::from_secs(1), Instant::now());
    la.stop();
    lb.stop();
    eprintln!(
        "during the cut {during:?} (a alone {a_during}), rejoined after {rejoined:?}, after healing {after:?}, settled {settled:?} (a {a_settled})\nallowed/denied per 250 ms (a b) from 1 s before the cut, healed at {} ms:\n{timeline}",
        (healed - cut).as_millis() + 1000
    );
    assert!(silent, "a never marked b silent");
    assert!(during.0 <= 1020, "the cluster stayed within the limit while split: {during:?}");
    assert!(a_during <= 600, "a kept to its share while cut off: {a_during}");
    assert!(after.0 <= 1020, "no overshoot while healing: {after:?}");
    assert!(
        settled.1 >= 850 && a_settled > 550,
        "after healing the split follows demand again: {settled:?}, a {a_settled}"
    );
    drop((a, b));
}

/// Two nodes that met through a collector lose their direct link to a reset (a firewall, a NAT):
/// each sees the other's token go while its reports were arriving, as at an exit, yet both live
/// on. The collector still sees both, so each holds the other's share instead of taking the
/// whole limit, until the mesh check has dialed the link again.
#[test]
fn a_link_reset_between_two_nodes_is_no_exit_and_the_cluster_stays_within_the_limit() {
    let _one_at_a_time = measuring();
    let c = Cluster::new();
    let _collector = c.start_collector();
    let a = c.start_limits_agent("a", std::slice::from_ref(&c.endpoint), "", "");
    let b = c.start_limits_agent("b", std::slice::from_ref(&c.endpoint), "", "");
    wait_healthy(&c, &["a", "b"]);
    c.set_limits(&c.endpoint, RATE_1000, "reset test");
    wait_for_view(&c, "a", 2, 1);
    wait_for_view(&c, "b", 2, 1);
    let pid = |n: &common::limits::LimitsNode| n.proc.as_ref().map_or(0, |p| p.pid());

    let la = Load::start(c.socket("a"), "operator:x", 1000);
    let lb = Load::start(c.socket("b"), "operator:x", 1000);
    std::thread::sleep(Duration::from_secs(3));
    let cut = Instant::now();
    assert!(common::cut_links(pid(&a), pid(&b)) >= 1, "no connection between a and b to reset");
    let held = wait_until(Duration::from_secs(3), || c.http_get("a", "/v1/limits").1.contains("\"silent\""));
    // The mesh check dials the link again within seconds; both are live to each other then.
    wait_for_view(&c, "a", 2, 1);
    wait_for_view(&c, "b", 2, 1);
    let healed = cut.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let through = window_extremes(&[&la, &lb], cut, Instant::now());
    la.stop();
    lb.stop();
    eprintln!("held {held}, healed after {healed:?}, admitted per 1 s window from the cut: {through:?}");
    assert!(held, "a did not hold b's share as a silent node's");
    assert!(through.0 <= 1020, "the cluster went over the limit after the reset: {through:?}");
    assert!(healed < Duration::from_secs(15), "the link came back after {healed:?}");
    drop((a, b));
}

/// Node c is cut off from every other process by links that are closed and refused (a firewall
/// that rejects): a, b and the collector see it go as at an exit and, asking each other, free
/// its share; c, which lost every process at once and can ask nobody, takes no share until it
/// sees them again, so the cluster stays within the limit through the cut.
#[test]
fn a_node_cut_off_from_all_by_closed_links_takes_nothing_and_the_cluster_stays_within_the_limit() {
    let _one_at_a_time = measuring();
    let c = Cluster::new();
    let _collector = c.start_collector();
    let (mut agents, proxies) = the_last_behind_proxies(&c, &["a", "b", "c"]);
    let loads: Vec<Load> = ["a", "b", "c"].iter().map(|n| Load::start(c.socket(n), "operator:x", 1000)).collect();
    std::thread::sleep(Duration::from_secs(3));
    let cut = Instant::now();
    for p in &proxies {
        p.refuse();
    }
    let freed = wait_until(Duration::from_secs(5), || !c.http_get("a", "/v1/limits").1.contains("\"c\""));
    // c says so: `/health` degraded with the reason, its own entry `cut_off` in `/v1/limits`.
    let told = wait_until(Duration::from_secs(5), || {
        let (code, body) = c.http_get("c", "/health");
        code == 200
            && body.contains("may be the one cut off")
            && c.http_get("c", "/v1/limits").1.contains("\"cut_off\"")
    });
    std::thread::sleep(Duration::from_secs(4));
    let refs: Vec<&Load> = loads.iter().collect();
    let during = window_extremes(&refs, cut, Instant::now());
    let c_during = admitted(&refs[2..], Instant::now() - Duration::from_secs(3), Duration::from_secs(3));
    // c's link to the collector comes back first, its links to a and b stay cut: a and b still
    // take c for gone, so c still takes nothing.
    proxies[0].heal();
    let partial_from = Instant::now();
    let sees_collector = wait_until(Duration::from_secs(20), || {
        let (_, body) = c.http_get("c", "/health");
        body.contains("\"collectors_alive\":[\"")
    });
    assert!(sees_collector, "c never linked to the collector again: {:?}", c.http_get("c", "/health"));
    std::thread::sleep(Duration::from_secs(3));
    let still = c.http_get("c", "/v1/limits").1;
    let c_partial = admitted(&refs[2..], Instant::now() - Duration::from_secs(2), Duration::from_secs(2));
    for p in &proxies[1..] {
        p.heal();
    }
    let healed = Instant::now();
    let partial = window_extremes(&refs, partial_from, healed);
    eprintln!("c seeing the collector alone: {c_partial} in 2 s; windows {partial:?}; {still}");
    let (back, after, c_after, timeline) = after_healing(&c, loads, &["a", "b", "c"], cut, healed);
    let said = agents[2].proc.as_ref().unwrap().log_text();
    eprintln!(
        "a freed c's share: {freed}; during the cut {during:?} (c in its last 3 s: {c_during}); back {back} after \
         healing; after {after:?} (c {c_after})\nallowed/denied per 250 ms (a b c) from 1 s before the cut, healed at \
         {} ms:\n{timeline}",
        (healed - cut).as_millis() + 1000
    );
    assert!(freed, "a, b and the collector should take c for exited");
    assert!(said.contains("it may be the one cut off"), "{said}");
    assert!(told, "c's /health and /v1/limits say it is cut off: {:?}", c.http_get("c", "/health"));
    assert!(
        still.contains("\"cut_off\"") && c_partial <= 10,
        "c, seeing the collector alone: {c_partial} in 2 s, {still}"
    );
    assert!(partial.0 <= 1020, "over the limit while c saw the collector alone: {partial:?}");
    assert!(during.0 <= 1020, "the cluster went over the limit while c was cut off: {during:?}");
    assert!(c_during <= 10, "c admitted {c_during} in 3 s while cut off");
    assert!(back, "the links came back");
    assert!(after.0 <= 1020, "no overshoot after healing: {after:?}");
    assert!(c_after > 150, "c takes its share again once it sees the others: {c_after}");
    agents.clear();
}

/// After the links were healed at `healed`: whether the first and last of `nodes` see all of
/// them live again within 20 s; then, 3 s on, the 1 s window extremes since healing, what the
/// last node admitted in the last second, and the timeline from a second before `cut`; the
/// loads (one per node, in order) stopped.
fn after_healing(
    c: &Cluster,
    loads: Vec<Load>,
    nodes: &[&str],
    cut: Instant,
    healed: Instant,
) -> (bool, (usize, usize), usize, String) {
    let ends = [nodes[0], nodes[nodes.len() - 1]];
    let back = wait_until(Duration::from_secs(20), || {
        ends.iter().all(|n| c.http_get(n, "/v1/limits").1.matches("\"live\"").count() == nodes.len())
    });
    std::thread::sleep(Duration::from_secs(3));
    let refs: Vec<&Load> = loads.iter().collect();
    let after = window_extremes(&refs, healed, Instant::now());
    let last = admitted(&refs[refs.len() - 1..], Instant::now() - Duration::from_secs(1), Duration::from_secs(1));
    let timeline = common::limits::timeline(&refs, cut - Duration::from_secs(1), Instant::now());
    drop(refs);
    for l in loads {
        l.stop();
    }
    (back, after, last, timeline)
}

/// Agents `names` with the collector of `c`, the last reaching every other process through a
/// proxy of its own (none of them dials it, gossip off), `RATE_1000` in force on all: the
/// agents and the last one's proxies (the collector's first).
fn the_last_behind_proxies(c: &Cluster, names: &[&str]) -> (Vec<LimitsNode>, Vec<Proxy>) {
    let Some((last, first)) = names.split_last() else { return (Vec::new(), Vec::new()) };
    let mut agents: Vec<LimitsNode> = Vec::new();
    for n in first {
        let mut links = vec![c.endpoint.clone()];
        links.extend(agents.iter().map(LimitsNode::endpoint));
        agents.push(c.start_limits_agent(n, &links, "gossip = false", ""));
    }
    let collector_port: u16 = c.endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap();
    let ports = std::iter::once(collector_port).chain(agents.iter().map(|a| a.port));
    let proxies: Vec<Proxy> = ports.map(Proxy::start).collect();
    let via: Vec<String> = proxies.iter().map(Proxy::endpoint).collect();
    agents.push(c.start_limits_agent(last, &via, "gossip = false", ""));
    wait_healthy(c, names);
    c.set_limits(&agents[0].endpoint(), RATE_1000, "cut-off test");
    for n in names {
        wait_for_view(c, n, names.len(), 1);
    }
    (agents, proxies)
}

/// Two agents and a collector, b cut off from both by closed links: a asks the collector, which
/// does not see b either, and takes the whole limit; b, which lost both other processes at once
/// and can ask nobody, takes nothing until it sees a again.
#[test]
fn of_two_agents_with_a_collector_the_one_cut_off_takes_nothing() {
    let _one_at_a_time = measuring();
    let c = Cluster::new();
    let _collector = c.start_collector();
    let (mut agents, proxies) = the_last_behind_proxies(&c, &["a", "b"]);
    let loads: Vec<Load> = ["a", "b"].iter().map(|n| Load::start(c.socket(n), "operator:x", 1000)).collect();
    let refs: Vec<&Load> = loads.iter().collect();
    std::thread::sleep(Duration::from_secs(3));
    let cut = Instant::now();
    for p in &proxies {
        p.refuse();
    }
    let freed = wait_until(Duration::from_secs(5), || !c.http_get("a", "/v1/limits").1.contains("\"b\""));
    let told = wait_until(Duration::from_secs(5), || c.http_get("b", "/v1/limits").1.contains("\"cut_off\""));
    std::thread::sleep(Duration::from_secs(4));
    let during = window_extremes(&refs, cut, Instant::now());
    let a_during = admitted(&refs[..1], Instant::now() - Duration::from_secs(3), Duration::from_secs(3));
    let b_during = admitted(&refs[1..], Instant::now() - Duration::from_secs(3), Duration::from_secs(3));
    for p in &proxies {
        p.heal();
    }
    let healed = Instant::now();
    let (back, after, b_after, timeline) = after_healing(&c, loads, &["a", "b"], cut, healed);
    eprintln!(
        "a freed b's share: {freed}; during the cut {during:?} (a {a_during}, b {b_during} in the last 3 s); back \
         {back}; after {after:?} (b {b_after} in 1 s)\nallowed/denied per 250 ms (a b) from 1 s before the cut:\n\
         {timeline}"
    );
    assert!(freed, "a and the collector should take b for exited");
    assert!(told, "b's /v1/limits says it is cut off: {:?}", c.http_get("b", "/v1/limits"));
    assert!(during.0 <= 1020, "the cluster went over the limit while b was cut off: {during:?}");
    assert!(b_during <= 10, "b admitted {b_during} in 3 s while cut off");
    assert!(a_during >= 2000, "a takes the whole limit: {a_during} in 3 s");
    assert!(back, "the links came back");
    assert!(after.0 <= 1020, "no overshoot after healing: {after:?}");
    assert!(b_after > 150, "b takes its share again once it sees a: {b_after}");
    agents.clear();
}

#[test]
fn a_limit_changed_under_traffic_applies_everywhere_and_the_api_explains_bad_requests() {
    let _one_at_a_time = measuring();
    let c = Cluster::new();
    let a = c.start_limits_agent("a", &[], "", "");
    let b = c.start_limits_agent("b", &[a.endpoint()], "", "");
    let file = |rate: u64| {
        format!(
            "[[limit]]\nkey = \"operator:*\"\nrate = {rate}\n\n[[limit]]\nkey = \"customer:*\"\nrate = 1\nper = \"hour\"\n\n[[limit]]\nkey = \"domain:*\"\nconcurrency = 2\n"
        )
    };
    wait_healthy(&c, &["a", "b"]);
    c.set_limits(&a.endpoint(), &file(1000), "start");
    wait_for_view(&c, "b", 2, 1);
    let la = Load::start(c.socket("a"), "operator:x", 1500);
    let lb = Load::start(c.socket("b"), "operator:x", 1500);
    std::thread::sleep(Duration::from_secs(3));
    let before = window_extremes(&[&la, &lb], Instant::now() - Duration::from_secs(2), Instant::now());
    let out = c.set_limits(&b.endpoint(), &file(2000), "raise for the campaign");
    assert!(out.contains("~ operator:*: 1000/second -> 2000/second") && out.contains("in force on 2 of 2"), "{out}");
    let changed = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let after = window_extremes(&[&la, &lb], changed + Duration::from_secs(1), Instant::now());
    let timeline = common::limits::timeline(&[&la, &lb], changed - Duration::from_secs(3), Instant::now());
    la.stop();
    lb.stop();
    eprintln!("before {before:?}, after {after:?}\nallowed/denied per 250 ms (a b), changed at 3000 ms:\n{timeline}");
    assert!(before.0 <= 1020 && before.1 >= 850, "{before:?}");
    assert!(after.0 <= 2040 && after.1 >= 1700, "{after:?}");
    let (_, history) = c.limits_cli(&a.endpoint(), &["history"]);
    assert!(
        history.contains("revision 1") && history.contains("revision 2") && history.contains("raise for the campaign"),
        "{history}"
    );

    // A node that joins later takes the current revision; restarted alone, it keeps it.
    let late = c.start_limits_agent("late", &[a.endpoint()], "", "");
    wait_for_view(&c, "late", 3, 2);
    late.proc.unwrap().stop();
    let alone = c.restart_limits_agent("late", late.port, &[], "", "[dlr]\nenabled = false");
    wait_for_view(&c, "late", 1, 2);
    // a forgets the node that left (once no other process still sees it) before the checks
    // below: while one is in question a new key's first use takes no slot.
    let forgotten = wait_until(Duration::from_secs(5), || {
        let v: serde_json::Value = serde_json::from_str(&c.http_get("a", "/v1/limits").1).unwrap_or_default();
        v["nodes"].as_object().is_some_and(|n| n.len() == 2)
    });
    assert!(forgotten, "{:?}", c.http_get("a", "/v1/limits"));
    // Its DLR routes say that DLRs are off there, not an empty 404.
    let (code, body) = c.http_get("late", "/v1/dlr/resolve");
    assert!(code == 404 && body.contains("DLRs are off on this node"), "{code} {body}");

    // The HTTP API.
    let port = c.http_port("a");
    let (code, _, body) = http_post(port, "/v1/limits/acquire", r#"{"key": "customer:acme"}"#);
    assert_eq!((code, body.as_str()), (200, r#"{"allowed":true,"limited":true}"#));
    let (code, head, body) = http_post(port, "/v1/limits/acquire", r#"{"key": "customer:acme", "n": 1}"#);
    assert_eq!(code, 429, "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after:") && body.contains("retry_after_ms"), "{head}\n{body}");
    // Whole microseconds, as on the socket: at most three decimals.
    let wait: serde_json::Value = serde_json::from_str(&body).unwrap();
    let decimals = wait["retry_after_ms"].to_string().split('.').nth(1).map_or(0, str::len);
    assert!(decimals <= 3, "{body}");
    // More than ever passes at once (customer:* has a burst of 1) is refused as such, not told to wait.
    let (code, head, body) = http_post(port, "/v1/limits/acquire", r#"{"key": "customer:acme", "n": 2}"#);
    assert!(code == 400 && body.contains(r#""most":1"#) && body.contains("never pass"), "{code} {body}");
    assert!(!head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    let (code, _, body) = http_post(port, "/v1/limits/acquire", r#"{"key": "unlisted:x"}"#);
    assert_eq!((code, body.as_str()), (200, r#"{"allowed":true,"limited":false}"#));
    let (code, _, body) = http_post(port, "/v1/slots/acquire", r#"{"key": "domain:d"}"#);
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = http_post(port, "/v1/slots/release", r#"{"key": "domain:d"}"#);
    assert_eq!((code, body.as_str()), (200, r#"{"released":1}"#));
    let (code, _, body) = http_post(port, "/v1/slots/release", r#"{"key": "domain:d"}"#);
    assert!(code == 409 && body.contains("not held"), "{code} {body}");
    // A rate key holds no slots: the answer says so rather than "not held".
    let (code, _, body) = http_post(port, "/v1/slots/release", r#"{"key": "operator:x"}"#);
    assert!(code == 409 && body.contains("no concurrency limit applies"), "{code} {body}");
    // More slots than the whole cluster's limit (domain:* holds 2) would never pass: 400.
    let (code, head, body) = http_post(port, "/v1/slots/acquire", r#"{"key": "domain:d", "n": 3}"#);
    assert!(code == 400 && body.contains("2 slots") && body.contains("never pass"), "{code} {body}");
    assert!(!head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    // An unknown path and a wrong method get JSON errors, as every other error.
    let (code, body) = c.http_get("a", "/v1/nothing/here");
    assert!(code == 404 && body.contains(r#""error":"no such endpoint: /v1/nothing/here""#), "{code} {body}");
    let (code, body) = c.http_get("a", "/v1/limits/acquire");
    assert!(code == 405 && body.contains("GET is not allowed on /v1/limits/acquire"), "{code} {body}");
    // `limits list` whose reader went away (`| head`) stops quietly, without a panic.
    let mut list = std::process::Command::new(common::BIN)
        .args(["limits", "list", "--connect", &a.endpoint(), "--cluster", &c.cluster])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(list.stdout.take());
    let out = list.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", out.status);
    for (bad, says) in [
        (r#"{"key": 5}"#, "expected"),
        ("not json", "expected"),
        (r#"{"key": "x", "n": 0}"#, "n must be"),
        // Past 64 bits, a fraction or a negative: the range, not the JSON reader's type error.
        (r#"{"key": "x", "n": 18446744073709551616}"#, "whole number from 1 to"),
        (r#"{"key": "x", "n": 1.5}"#, "whole number from 1 to"),
        (r#"{"key": "x", "n": -1}"#, "whole number from 1 to"),
        (r#"{"key": ""}"#, "key must be"),
        (r#"{"key": "x", "extra": 1}"#, "unknown field"),
        (r#"["x", 1]"#, "not a JSON object"),
    ] {
        let (code, _, body) = http_post(port, "/v1/limits/acquire", bad);
        assert!(code == 400 && body.contains(says), "{bad}: {code} {body}");
    }
    let mut s = SocketClient::connect(&c.socket("a"));
    assert_eq!(s.request("PING"), "PONG");
    assert_eq!(s.request("PING extra"), "ERR PING takes no argument");
    assert!(s.request(" PING").starts_with("ERR a request starts with its verb, not with whitespace"));
    assert!(s.request("ACQUIRE").starts_with("ERR missing key"));
    assert!(s.request("TAKE x").starts_with("ERR unknown request"));
    assert_eq!(s.request("RELEASE domain:never 1"), "OK 0");
    assert!(
        s.request("RELEASE customer:acme").starts_with("CONFLICT no concurrency limit applies to \"customer:acme\""),
        "a release of a rate key is a mistake the answer names"
    );
    assert!(s.request("ACQUIRE customer:acme 2").starts_with("ERR n 2 is more than this node lets pass at once"));
    // Both slots of domain:w held on a: b, which holds none, is told to wait for the next
    // exchange (interval_ms, 50 here), not to retry at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = 0;
    while held < 2 && Instant::now() < deadline {
        if s.request("ACQUIRE domain:w") == "OK" {
            held += 1;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(held, 2, "a never held both slots of domain:w");
    let mut on_b = SocketClient::connect(&c.socket("b"));
    assert_eq!(on_b.request("ACQUIRE domain:w"), "DENY 50.000");
    assert_eq!(s.request("RELEASE domain:w 2"), "OK 2");
    let (_, metrics) = c.http_get("a", "/metrics");
    // Five over HTTP, two on the socket; the unknown verb and the leading space are the gateway
    // socket's.
    assert!(metric(&metrics, "switchboard_agent_limits_bad_requests_total").unwrap_or(0.0) >= 7.0, "{metrics}");
    assert_eq!(metric(&metrics, "switchboard_agent_gateway_unknown_requests_total"), Some(2.0), "{metrics}");
    assert_eq!(metric(&metrics, "switchboard_agent_limits_revision"), Some(2.0));
    drop((a, b, alone));
}

/// An agent that runs without limits and without DLRs (`enabled = false`) is alive on the bus
/// but takes part in neither: the others split the limits and place records among themselves.
/// (Before, a node with both off was given a share of every limit, which nobody could use, and
/// was chosen to hold copies and answer lookups it could never hold.)
#[test]
fn an_agent_without_limits_or_dlrs_takes_no_share_and_holds_nothing() {
    let _one_at_a_time = measuring();
    let c = Cluster::new();
    let (_collector, a, _b) = collector_a_and_b(&c);
    let _off =
        c.start_limits_agent("off", &[a.endpoint(), c.endpoint.clone()], "", "enabled = false\n[dlr]\nenabled = false");
    wait_healthy(&c, &["a", "b", "off"]);
    c.set_limits(&a.endpoint(), &format!("{RATE_1000}\n[[limit]]\nkey = \"domain:*\"\nconcurrency = 20\n"), "limits");
    wait_for_view(&c, "a", 2, 1);
    let (_, view) = c.http_get("a", "/v1/limits");
    assert!(!view.contains("\"off\""), "a splits the limits with a node that has none: {view}");

    // a grows into every slot b does not use, with no share held back for the node without limits.
    let mut ca = SocketClient::connect(&c.socket("a"));
    let (mut held, until) = (0, Instant::now() + Duration::from_secs(3));
    while Instant::now() < until && held < 20 {
        held += usize::from(ca.acquire("domain:example.com"));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(held, 20, "a could take {held} of 20 slots");

    // DLRs: records and their copies live on a and b; a miss is a miss, not "unavailable".
    let post = |node: &str, path: &str, body: serde_json::Value| http_post(c.http_port(node), path, &body.to_string());
    let records: Vec<serde_json::Value> =
        (0..50).map(|i| serde_json::json!({"connector": "dec", "msg_id": format!("{}", 1000 + i)})).collect();
    let (code, _, body) = post("a", "/v1/dlr/register", serde_json::json!({ "records": records }));
    assert_eq!(code, 201, "{}", &body[..body.len().min(300)]);
    for id in 0..40 {
        let (code, _, body) =
            post("a", "/v1/dlr/resolve", serde_json::json!({"connector": "dec", "msg_id": format!("{}", 5000 + id)}));
        assert_eq!(code, 404, "an id nobody registered: {body}");
    }
    let dlr_of_a = || serde_json::from_str::<serde_json::Value>(&c.http_get("a", "/v1/dlr").1).unwrap();
    let settled = wait_until(Duration::from_secs(10), || {
        let dlr = dlr_of_a();
        dlr["live_nodes"] == serde_json::json!(["a", "b"]) && dlr["replica_queue"] == 0
    });
    let dlr = dlr_of_a();
    assert!(settled, "{dlr:#}");
    assert_eq!(dlr["live_nodes"], serde_json::json!(["a", "b"]), "{dlr:#}");
    assert_eq!(dlr["counters"]["replica_failures"], 0, "{dlr:#}");
    assert_eq!(dlr["replica_queue"], 0, "{dlr:#}");
}

/// A node rebuilt with an empty data_dir holds no limits until the cluster hands it its
/// configuration: meanwhile it refuses every key (it cannot tell a limited one), here for the
/// first seconds while its links are refused, and then it keeps to its share. (It answered
/// `limited: false` and admitted everything before: 41/s under a limit of 5/s for 12 s in a
/// manual run with a long history to catch up.)
#[test]
fn a_node_rebuilt_empty_refuses_every_key_until_it_has_the_clusters_limits() {
    let _one_at_a_time = measuring();
    let c = Cluster::new();
    let _collector = c.start_collector();
    let (mut agents, proxies) = the_last_behind_proxies(&c, &["a", "b", "c"]);
    c.set_limits(&agents[0].endpoint(), "[[limit]]\nkey = \"op:*\"\nrate = 5\n", "rebuild test");
    wait_for_view(&c, "c", 3, 2);
    let old = agents.pop().unwrap();
    let port = old.port;
    drop(old);
    std::fs::remove_dir_all(c.agent_state("c")).unwrap();
    for p in &proxies {
        p.refuse();
    }
    let via: Vec<String> = proxies.iter().map(Proxy::endpoint).collect();
    let rebuilt = c.restart_limits_agent("c", port, &via, "gossip = false", "");
    let up = wait_until(Duration::from_secs(15), || c.http_get("c", "/health").0 != 0);
    assert!(up, "c never answered");
    let ask = |(answers, unlimited, allowed): (usize, usize, usize), secs: u64| {
        let (mut answers, mut unlimited, mut allowed) = (answers, unlimited, allowed);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            let (code, _, body) = http_post(c.http_port("c"), "/v1/limits/acquire", r#"{"key": "op:x"}"#);
            answers += usize::from(code == 200 || code == 429);
            unlimited += usize::from(body.contains("\"limited\":false"));
            allowed += usize::from(body.contains("\"allowed\":true"));
            std::thread::sleep(Duration::from_millis(20));
        }
        (answers, unlimited, allowed)
    };
    // Cut off from all at its start: nothing known, nothing admitted.
    let cut = ask((0, 0, 0), 4);
    for p in &proxies {
        p.heal();
    }
    let healed = ask((0, 0, 0), 6);
    let said = rebuilt.proc.as_ref().map(Proc::log_text).unwrap_or_default();
    eprintln!("cut off: {cut:?}, healed: {healed:?} (answers, unlimited, allowed)");
    assert!(cut.0 >= 20 && healed.0 >= 20, "{cut:?} {healed:?}");
    assert_eq!((cut.1, cut.2), (0, 0), "answered as unlimited before it had the limits\n{said}");
    assert_eq!(healed.1, 0, "answered as unlimited after healing\n{said}");
    assert!(healed.2 > 0 && healed.2 <= 5 * 6 + 5, "admitted {healed:?} in 6 s under a limit of 5/s\n{said}");
    assert!(said.contains("no limits held here yet"), "{said}");
    drop((agents, rebuilt));
}
