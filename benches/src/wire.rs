//! Wire format: `log_batch` as Arrow IPC against JSON lines, per row, for the same parsed records.
//!
//! Times encoding and decoding of 8192-row batches of ~150-byte gateway lines (parsed with
//! key=value extraction, so each row carries fields), and the bytes per row on the wire. JSON
//! lines (one object per record, `serde_json`) is the anchor: what a shipper without a schema
//! would send. The collector also needs columns for Parquet; Arrow arrives as columns, JSON must
//! be decoded into records first, so its decode figure is a lower bound of its cost.

use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use switchboard_agent::parse::{self, Format, ParseContext};
use switchboard_bus::wire::log_batch::{self, LogBatchBuilder, LogRow};

use crate::logs::line;

#[derive(Serialize, Deserialize)]
struct JsonRecord {
    seq: u64,
    ts: i64,
    observed_ts: i64,
    file: String,
    offset: u64,
    level: Option<String>,
    message: String,
    fields: Vec<(String, String)>,
}

/// Run the wire bench over `rows` rows.
pub(crate) fn run(rows: usize) -> Result<()> {
    const BATCH: usize = 8192;
    let ctx = ParseContext { now_micros: 1_795_000_000_000_000, kv_in_message: true };
    let lines: Vec<String> = (0..BATCH).map(line).collect();
    let parsed: Vec<_> = lines.iter().map(|l| parse::parse(Format::Plain, l, &ctx)).collect();
    let rounds = rows.div_ceil(BATCH);

    // Arrow IPC: build + encode, then decode.
    let mut payload = Vec::new();
    let t = Instant::now();
    for _ in 0..rounds {
        let mut b = LogBatchBuilder::new();
        for (i, p) in parsed.iter().enumerate() {
            let row = LogRow {
                seq: i as u64,
                ts_micros: p.ts_micros.unwrap_or(0),
                observed_micros: ctx.now_micros,
                file: "/var/log/gw/smsc.log",
                offset: i as u64 * 150,
                level: p.level.map(|l| l.as_str()),
                message: &p.message,
                raw: None,
                truncated: false,
            };
            b.append(&row, &p.fields);
        }
        payload = log_batch::encode(&b.finish()?)?;
    }
    let arrow_enc = (rounds * BATCH) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        n += log_batch::decode(&payload)?.num_rows();
    }
    let arrow_dec = n as f64 / t.elapsed().as_secs_f64();
    let arrow_bytes = payload.len() as f64 / BATCH as f64;

    // JSON lines.
    let mut text = Vec::new();
    let t = Instant::now();
    for _ in 0..rounds {
        text.clear();
        for (i, p) in parsed.iter().enumerate() {
            let r = JsonRecord {
                seq: i as u64,
                ts: p.ts_micros.unwrap_or(0),
                observed_ts: ctx.now_micros,
                file: "/var/log/gw/smsc.log".into(),
                offset: i as u64 * 150,
                level: p.level.map(|l| l.as_str().to_owned()),
                message: p.message.to_string(),
                fields: p.fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
            serde_json::to_writer(&mut text, &r)?;
            text.push(b'\n');
        }
    }
    let json_enc = (rounds * BATCH) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        for l in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let _r: JsonRecord = serde_json::from_slice(l)?;
            n += 1;
        }
    }
    let json_dec = n as f64 / t.elapsed().as_secs_f64();
    let json_bytes = text.len() as f64 / BATCH as f64;

    println!("== wire: log_batch (Arrow IPC) vs JSON lines, {rows} rows in batches of {BATCH} ==");
    println!("{:<22} {:>14} {:>14} {:>10}", "format", "encode rows/s", "decode rows/s", "bytes/row");
    println!("{:<22} {:>14.0} {:>14.0} {:>10.1}", "Arrow IPC (log_batch)", arrow_enc, arrow_dec, arrow_bytes);
    println!("{:<22} {:>14.0} {:>14.0} {:>10.1}", "JSON lines (anchor)", json_enc, json_dec, json_bytes);
    println!(
        "{:<22} {:>14.2} {:>14.2} {:>10.2}",
        "ratio Arrow/JSON",
        arrow_enc / json_enc,
        arrow_dec / json_dec,
        arrow_bytes / json_bytes
    );
    Ok(())
}
