//! Two nodes with real zenoh sessions on loopback share one limit of 1000/s: with skewed demand
//! (4000/s and 400/s) the pair admits what the limit allows, no more, and when one node leaves
//! its share goes to the other within a fraction of a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_agent::limits::coord;
use switchboard_bus::config::BusConfig;
use switchboard_bus::keys::{KeySpace, Role};
use switchboard_bus::limits::{LimitSpec, Limiter, Per};
use switchboard_bus::session::{announce, open};
use switchboard_bus::Membership;
use tokio_util::sync::CancellationToken;

fn bus(node: &str, listen: Option<&str>, connect: Option<&str>) -> BusConfig {
    BusConfig {
        cluster: "ltest".into(),
        node: node.into(),
        listen: listen.into_iter().map(str::to_owned).collect(),
        connect: connect.into_iter().map(str::to_owned).collect(),
        ..BusConfig::default()
    }
}

/// Ask for one unit every `every` until `stop`; record when each was allowed.
fn load(
    l: Arc<Limiter>,
    every: Duration,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Instant>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if l.try_acquire("operator:x", 1).is_allowed() {
                out.lock().unwrap().push(Instant::now());
            }
            next += every;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    })
}

fn count(v: &Mutex<Vec<Instant>>, from: Instant, to: Instant) -> usize {
    v.lock().unwrap().iter().filter(|t| **t >= from && **t < to).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_limit_by_demand_and_a_leaver_frees_its_share() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ep = format!("tcp/127.0.0.1:{port}");
    let keys = KeySpace::new("sb/ltest").unwrap();
    let spec = || {
        vec![LimitSpec {
            key: "operator:*".into(),
            rate: Some(1000),
            per: Some(Per::Second),
            concurrency: None,
            burst: None,
        }]
    };
    let cancel = CancellationToken::new();
    let cancel_b = CancellationToken::new();

    let sa = open(&bus("a", Some(&ep), None), None).await.unwrap();
    let sb = open(&bus("b", None, Some(&ep)), None).await.unwrap();
    let _ta = announce(&sa, &keys, Role::Agent, "a").await.unwrap();
    let tb = announce(&sb, &keys, Role::Agent, "b").await.unwrap();
    let ma = Membership::watch(&sa, &keys, None, cancel.clone()).await.unwrap();
    let mb = Membership::watch(&sb, &keys, None, cancel_b.clone()).await.unwrap();
    let (la, lb) = (Arc::new(Limiter::new(spec()).unwrap()), Arc::new(Limiter::new(spec()).unwrap()));
    let settings = coord::CoordSettings { interval: Duration::from_millis(50), ..Default::default() };
    let (va, _) = tokio::sync::watch::channel(Default::default());
    let (vb, _) = tokio::sync::watch::channel(Default::default());
    tokio::spawn(coord::run(
        sa.clone(),
        keys.clone(),
        "a".into(),
        la.clone(),
        ma.clone(),
        ma.clone(),
        settings,
        va,
        cancel.clone(),
    ));
    tokio::spawn(coord::run(
        sb.clone(),
        keys.clone(),
        "b".into(),
        lb.clone(),
        mb.clone(),
        mb,
        settings,
        vb,
        cancel_b.clone(),
    ));
    // Both see each other before the load starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ma.live_of(Role::Agent).len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;

    let (stop_a, stop_b) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (got_a, got_b) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let t0 = Instant::now();
    let ha = load(la.clone(), Duration::from_micros(250), stop_a.clone(), got_a.clone());
    let hb = load(lb.clone(), Duration::from_micros(2500), stop_b.clone(), got_b.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Steady state, seconds 1 to 3: within the limit, and the limit used.
    let (from, to) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(3));
    let (a, b) = (count(&got_a, from, to), count(&got_b, from, to));
    eprintln!("seconds 1-3: a {a}, b {b}, total {} of 2000", a + b);
    assert!(a + b <= 2_040, "over the limit: {}", a + b);
    assert!(a + b >= 1_900, "limit under-used: {}", a + b);
    assert!(a > 4 * b, "shares follow demand: a {a}, b {b}");

    // b leaves: its share goes to a.
    stop_b.store(true, Ordering::Relaxed);
    hb.join().unwrap();
    let left = Instant::now();
    cancel_b.cancel();
    // As an agent stops: its tasks end (the coordination says it is leaving), then its token.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tb);
    sb.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_a.store(true, Ordering::Relaxed);
    ha.join().unwrap();
    let alone = count(&got_a, left + Duration::from_millis(500), left + Duration::from_millis(1500));
    eprintln!("a alone, 0.5-1.5 s after b left: {alone} of 1000");
    assert!((950..=1_020).contains(&alone), "a should take the whole limit: {alone}");
    cancel.cancel();
    sa.close().await.unwrap();
}
