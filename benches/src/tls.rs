//! Mutual TLS against plain TCP, in one run: what the security costs.
//!
//! - End-to-end log lines/s (one agent, acknowledgements on, as `sb-bench logs`), plain and TLS
//!   alternately `--repeat` times, medians; target: TLS at least 90% of plain.
//! - The DLR ask stream (as `sb-bench dlr`'s first row: three node processes, `--records` open
//!   records each, `--rate` lookups/s), each cluster `--repeat` times; target: TLS p99 at most
//!   1.2x plain.
//!
//! With TLS every process also applies the access policy to everything it receives, so its
//! cost is in the figures.

use anyhow::Result;
use switchboard_agent::parse::Format;
use switchboard_bus::tls::{IdRole, Identity};
use switchboard_bus::udp;

use crate::{dlr, logs};

/// The secure transport of this run (`tls` or `quic`), for the benches that build endpoints.
static PROTO: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// `tls` or `quic` as `sb-bench tls --transport` says (default `tls`).
pub(crate) fn proto() -> &'static str {
    PROTO.get().copied().unwrap_or("tls")
}

/// What `sb-bench tls` runs.
pub(crate) struct TlsBench {
    pub(crate) lines: usize,
    pub(crate) repeat: usize,
    pub(crate) records: u64,
    pub(crate) lookups: u64,
    pub(crate) rate: u64,
    pub(crate) transport: &'static str,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Datagrams dropped between two readings (0 where the kernel does not say).
fn drops(before: Option<u64>, after: Option<u64>) -> u64 {
    after.unwrap_or(0).saturating_sub(before.unwrap_or(0))
}

pub(crate) fn run(b: &TlsBench) -> Result<()> {
    let _ = PROTO.set(b.transport);
    println!("secure transport: {}/ (mutual TLS, access policy on)", b.transport);
    match udp::default_receive_buffer() {
        Some(bytes) => println!(
            "UDP receive buffer of a new socket (net.core.rmem_default): {} KiB{}\n",
            bytes / 1024,
            if bytes < udp::RECOMMENDED_BYTES {
                " (below the 4096 KiB docs/security.md recommends for quic/)"
            } else {
                ""
            }
        ),
        None => println!(),
    }
    let opts = logs::LogsBench { lines: b.lines, format: Format::Plain, kv_in_message: false, repeat: b.repeat };
    let certs = tempfile::tempdir()?;
    let ids = [Identity::new(IdRole::Collector, "c")?, Identity::new(IdRole::Agent, "gw0")?];
    switchboard_bus::tls::write_cluster(certs.path(), &ids)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    let (mut plain_drops, mut tls_drops) = (0, 0);
    let (mut plain_first, mut tls_first) = (Vec::new(), Vec::new());
    for _ in 0..b.repeat.max(1) {
        let before = udp::receive_buffer_drops();
        let run = rt.block_on(logs::end_to_end_with(&opts, 1, true, None, |_| {}))?;
        plain.push(run.lines_per_s);
        plain_first.push(run.first_row.as_secs_f64() * 1e3);
        let between = udp::receive_buffer_drops();
        let run = rt.block_on(logs::end_to_end_with(&opts, 1, true, Some(certs.path()), |_| {}))?;
        tls.push(run.lines_per_s);
        tls_first.push(run.first_row.as_secs_f64() * 1e3);
        plain_drops += drops(before, between);
        tls_drops += drops(between, udp::receive_buffer_drops());
    }
    println!("end to end, 1 agent, {} lines, acknowledgements on (median of {}):", b.lines, b.repeat.max(1));
    let (p, t) = (median(plain.clone()), median(tls.clone()));
    println!("  plain TCP   {p:>12.0} lines/s   runs {plain:.0?}");
    println!("  mutual TLS  {t:>12.0} lines/s   runs {tls:.0?}");
    println!("  TLS / plain {:>12.2}   (target at least 0.90)", t / p.max(1.0));
    println!("  first row accepted after the agent started (ms): plain {plain_first:.0?}, TLS {tls_first:.0?}");
    println!("  UDP datagrams dropped for a full receive buffer: plain runs {plain_drops}, TLS runs {tls_drops}");

    println!("\nDLR ask stream, 3 nodes with {} open records each, {} lookups/s:", b.records, b.rate);
    let repeat = u32::try_from(b.repeat.max(1)).unwrap_or(1);
    let before = udp::receive_buffer_drops();
    let plain = dlr::ask_stream(b.records, b.lookups, b.rate, repeat, false)?;
    let plain_unanswered = dlr::take_unanswered();
    let between = udp::receive_buffer_drops();
    let tls = dlr::ask_stream(b.records, b.lookups, b.rate, repeat, true)?;
    let tls_unanswered = dlr::take_unanswered();
    let (plain_drops, tls_drops) = (drops(before, between), drops(between, udp::receive_buffer_drops()));
    let p99 = |runs: &[dlr::Run]| -> Vec<f64> {
        runs.iter().map(|((_, h), _)| h.value_at_quantile(0.99) as f64 / 1e3).collect()
    };
    let p50 = |runs: &[dlr::Run]| -> f64 {
        median(runs.iter().map(|((_, h), _)| h.value_at_quantile(0.5) as f64 / 1e3).collect())
    };
    let (pp, tp) = (p99(&plain), p99(&tls));
    println!("  plain TCP   p50 {:>7.1} µs   p99 {:>7.1} µs (median; runs {pp:.1?})", p50(&plain), median(pp.clone()));
    println!("  mutual TLS  p50 {:>7.1} µs   p99 {:>7.1} µs (median; runs {tp:.1?})", p50(&tls), median(tp.clone()));
    println!("  TLS / plain p99 {:>7.2}   (target at most 1.20)", median(tp) / median(pp).max(0.001));
    println!("  asks unanswered within 2 s (in the latencies at 2 s): plain {plain_unanswered}, TLS {tls_unanswered}");
    println!("  UDP datagrams dropped for a full receive buffer: plain {plain_drops}, TLS {tls_drops}");
    Ok(())
}
