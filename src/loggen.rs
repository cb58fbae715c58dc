//! Synthetic gateway logs for the demo: what an SMS gateway and a mail transfer agent write.
//!
//! [`GatewayLog`] produces SMS gateway lines in logfmt (submit, delivery report, retry, errors,
//! several operators and accounts) and [`MtaLog`] produces postfix-style RFC 5424 syslog lines
//! (sent, deferred, bounced). Both are deterministic for a seed, so a run can be reproduced.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

/// A small deterministic pseudo-random generator (PCG-style LCG); no dependency needed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407))
    }

    /// Next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u32) -> u32 {
        self.next_u32() % n.max(1)
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u32) as usize]
    }
}

const OPERATORS: &[&str] = &["vodafone-de", "telekom-de", "o2-de", "orange-fr", "sfr-fr", "tim-it"];
const ACCOUNTS: &[&str] = &["acme", "globex", "initech", "umbrella"];
const SMS_ERRORS: &[(&str, &str)] = &[
    ("88", "throttled by SMSC"),
    ("11", "invalid destination address"),
    ("69", "submit_sm rejected: no credit"),
    ("8", "SMSC connection lost"),
];
const DOMAINS: &[&str] = &["example.com", "example.net", "mail.example.org", "corp.example"];

fn ts(now: DateTime<Utc>) -> String {
    now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// SMS gateway log lines (logfmt).
#[derive(Debug)]
pub struct GatewayLog {
    rng: Rng,
    node: String,
    next_id: u64,
}

impl GatewayLog {
    /// A generator for `node`.
    pub fn new(node: &str, seed: u64) -> Self {
        Self { rng: Rng::new(seed), node: node.to_owned(), next_id: 1 }
    }

    /// One line (without newline) at time `now`.
    pub fn line(&mut self, now: DateTime<Utc>) -> String {
        let r = &mut self.rng;
        let op = *r.pick(OPERATORS);
        let account = *r.pick(ACCOUNTS);
        let id = self.next_id;
        self.next_id += 1;
        let msg_id = format!("{}-{id:08x}", self.node);
        let mut s = String::with_capacity(200);
        let t = ts(now);
        match r.below(100) {
            0..=44 => {
                let _ = write!(
                    s,
                    "ts={t} level=info event=submit msg_id={msg_id} operator={op} account={account} dst=+49170{:07} parts={} latency_ms={} msg=\"submit_sm ok\"",
                    r.below(10_000_000),
                    1 + r.below(3),
                    5 + r.below(80)
                );
            }
            45..=84 => {
                let _ = write!(
                    s,
                    "ts={t} level=info event=dlr msg_id={msg_id} operator={op} account={account} status=DELIVRD latency_ms={} msg=\"delivery report\"",
                    200 + r.below(5000)
                );
            }
            85..=93 => {
                let _ = write!(
                    s,
                    "ts={t} level=warn event=retry msg_id={msg_id} operator={op} account={account} attempt={} msg=\"temporary failure, retrying\"",
                    1 + r.below(4)
                );
            }
            94..=96 => {
                let _ = write!(
                    s,
                    "ts={t} level=debug event=enquire_link operator={op} msg=\"enquire_link_resp in {}ms\"",
                    1 + r.below(20)
                );
            }
            _ => {
                let (code, text) = *r.pick(SMS_ERRORS);
                let _ = write!(
                    s,
                    "ts={t} level=error event=submit msg_id={msg_id} operator={op} account={account} code={code} msg=\"{text}\""
                );
            }
        }
        s
    }
}

/// Mail transfer agent log lines (postfix style, RFC 5424 syslog with `mail` facility).
#[derive(Debug)]
pub struct MtaLog {
    rng: Rng,
    host: String,
    next_id: u64,
}

impl MtaLog {
    /// A generator for host `host`.
    pub fn new(host: &str, seed: u64) -> Self {
        Self { rng: Rng::new(seed ^ 0x5eed), host: host.to_owned(), next_id: 0x1000 }
    }

    /// One line (without newline) at time `now`.
    pub fn line(&mut self, now: DateTime<Utc>) -> String {
        let r = &mut self.rng;
        let qid = self.next_id;
        self.next_id += 1;
        let domain = *r.pick(DOMAINS);
        let user = r.below(5000);
        let pid = 1000 + r.below(9000);
        let delay = f64::from(r.below(3000)) / 1000.0;
        let (pri, status) = match r.below(100) {
            0..=89 => (22, "sent (250 2.0.0 OK: queued)"),
            90..=96 => (20, "deferred (connect to mx: Connection timed out)"),
            _ => (19, "bounced (550 5.1.1 user unknown)"),
        };
        format!(
            "<{pri}>1 {} {} postfix/smtp {pid} - - {qid:X}: to=<u{user}@{domain}>, relay=mx.{domain}[192.0.2.{}]:25, delay={delay}, status={status}",
            ts(now),
            self.host,
            1 + r.below(250)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_deterministic_and_varied() {
        let now = Utc::now();
        let a: Vec<String> = {
            let mut g = GatewayLog::new("gw1", 7);
            (0..500).map(|_| g.line(now)).collect()
        };
        let b: Vec<String> = {
            let mut g = GatewayLog::new("gw1", 7);
            (0..500).map(|_| g.line(now)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|l| l.contains("level=error")));
        assert!(a.iter().any(|l| l.contains("event=dlr")));
        let mut m = MtaLog::new("gw1", 7);
        let lines: Vec<String> = (0..500).map(|_| m.line(now)).collect();
        assert!(lines.iter().any(|l| l.starts_with("<19>1 ")));
        assert!(lines.iter().all(|l| !l.contains('\n')));
    }
}
