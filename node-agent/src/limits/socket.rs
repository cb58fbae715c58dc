//! The limits API as a line protocol on a Unix socket: the low-latency option.
//!
//! One request per line, one answer per line, in order; requests may be pipelined.
//!
//! | request | answers |
//! | --- | --- |
//! | `ACQUIRE <key> [n]` | `OK`, `UNLIMITED`, or `DENY <retry_after_ms>` |
//! | `RELEASE <key> [n]` | `OK <released>` (fewer than `n`: the rest were not held) |
//! | `PING` | `PONG` |
//!
//! `ACQUIRE` takes slots of a concurrency key and units of a rate key. Keys may not contain
//! whitespace here (use HTTP for such keys); `n` defaults to 1. Anything else is answered with
//! `ERR <reason>` and counted; the connection stays usable. Lines over 4 KiB close it.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchboard_bus::limits::Decision;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::{check_request, LimitsService};

/// Longest request line.
const MAX_LINE: usize = 4096;

/// Bind the socket at `path`, replacing a stale one left by a previous run, with mode 0660 and,
/// if given, the group `group` (a name or a number): the agent's user and that group may connect,
/// nobody else.
pub fn bind(path: &Path, group: Option<&str>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    if let Some(group) = group {
        std::os::unix::fs::chown(path, None, Some(gid_of(group)?))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// The id of group `group`: a number, or a name looked up in `/etc/group`.
fn gid_of(group: &str) -> std::io::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no group named {group:?} in /etc/group"))
        })
}

/// Accept connections until `cancel` fires, then remove the socket file.
pub async fn serve(listener: UnixListener, path: PathBuf, service: Arc<LimitsService>, cancel: CancellationToken) {
    tracing::info!(socket = %path.display(), "limits API on the Unix socket");
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "limits socket accept failed");
                    continue;
                }
            },
        };
        tokio::spawn(connection(stream, service.clone(), cancel.clone()));
    }
    let _ = std::fs::remove_file(&path);
}

async fn connection(stream: UnixStream, service: Arc<LimitsService>, cancel: CancellationToken) {
    let (read, write) = stream.into_split();
    answer_requests(read, write, &*service, &cancel).await;
}

/// What a connection does with its request lines.
trait LineService {
    /// Append the answer to one request line to `out`.
    fn answer_line(&self, line: &[u8], out: &mut Vec<u8>);
    /// A line over [`MAX_LINE`] bytes arrived; it is refused and the connection closed.
    fn refuse_long_line(&self);
}

impl LineService for LimitsService {
    fn answer_line(&self, line: &[u8], out: &mut Vec<u8>) {
        self.stats.socket_requests.fetch_add(1, Ordering::Relaxed);
        answer(self, line, out);
    }

    fn refuse_long_line(&self) {
        self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Answer every request line read from `read` on `write`, in order, until the peer closes, a
/// line is too long or `cancel` fires.
///
/// Answers wait in `out` only while the next request line is already complete in the read
/// buffer (so a pipelined burst is answered with one write); before waiting for more bytes from
/// the gateway, everything answered so far is written. A buffer that ends in the middle of a
/// line therefore never holds back the answers to the lines before it.
async fn answer_requests<R, W, S>(read: R, mut write: W, service: &S, cancel: &CancellationToken)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: LineService + ?Sized,
{
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(128);
    let mut out = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = tokio::select! {
            _ = cancel.cancelled() => return,
            n = read_line(&mut reader, &mut line) => n,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => {
                service.refuse_long_line();
                // The answers to the lines before it go first.
                out.extend_from_slice(b"ERR line too long\n");
                let _ = write.write_all(&out).await;
                return;
            }
            Ok(_) => {}
        }
        service.answer_line(&line, &mut out);
        if memchr::memchr(b'\n', reader.buffer()).is_none() {
            if write.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// Read one line of at most `MAX_LINE + 1` bytes (longer ones are refused by the caller).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut limited = reader.take(MAX_LINE as u64 + 1);
    limited.read_until(b'\n', line).await
}

/// Append the answer to one request line to `out`.
pub fn answer(service: &LimitsService, line: &[u8], out: &mut Vec<u8>) {
    use std::io::Write as _;
    let reply = match parse(line) {
        Ok(Request::Ping) => {
            out.extend_from_slice(b"PONG\n");
            return;
        }
        Ok(Request::Acquire(key, n)) => match service.acquire(key, n) {
            Decision::Allowed => writeln!(out, "OK"),
            Decision::Unlimited => writeln!(out, "UNLIMITED"),
            Decision::Denied { retry_after } => writeln!(out, "DENY {:.3}", retry_after.as_secs_f64() * 1000.0),
        },
        Ok(Request::Release(key, n)) => writeln!(out, "OK {}", service.release(key, n)),
        Err(reason) => {
            service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            writeln!(out, "ERR {reason}")
        }
    };
    debug_assert!(reply.is_ok(), "writing to a Vec cannot fail");
}

#[derive(Debug, PartialEq, Eq)]
enum Request<'a> {
    Acquire(&'a str, u64),
    Release(&'a str, u64),
    Ping,
}

fn parse<'a>(line: &'a [u8]) -> Result<Request<'a>, String> {
    let line = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
    let mut words = line.split_ascii_whitespace();
    let verb = words.next().ok_or("empty request; expected ACQUIRE, RELEASE or PING")?;
    let (key, n) = (words.next(), words.next());
    if words.next().is_some() {
        return Err("too many words; expected `<VERB> <key> [n]`".into());
    }
    let units = |n: Option<&str>| -> Result<u64, String> {
        n.map_or(Ok(1), |s| s.parse::<u64>().map_err(|_| format!("n must be a whole number, got {s:?}")))
    };
    let keyed = |key: Option<&'a str>, n: u64| -> Result<&'a str, String> {
        let key = key.ok_or("missing key")?;
        check_request(key, n).map_err(|e| e.to_string())?;
        Ok(key)
    };
    match verb {
        "ACQUIRE" => {
            let n = units(n)?;
            Ok(Request::Acquire(keyed(key, n)?, n))
        }
        "RELEASE" => {
            let n = units(n)?;
            Ok(Request::Release(keyed(key, n)?, n))
        }
        "PING" if key.is_none() => Ok(Request::Ping),
        other => Err(format!("unknown request {other:?}; expected ACQUIRE, RELEASE or PING")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_explained() {
        assert_eq!(parse(b"ACQUIRE operator:x\n"), Ok(Request::Acquire("operator:x", 1)));
        assert_eq!(parse(b"ACQUIRE operator:x 5\r\n"), Ok(Request::Acquire("operator:x", 5)));
        assert_eq!(parse(b"RELEASE d 2\n"), Ok(Request::Release("d", 2)));
        assert_eq!(parse(b"PING\n"), Ok(Request::Ping));
        for (bad, says) in [
            (&b"\n"[..], "empty"),
            (b"acquire x\n", "unknown request"),
            (b"ACQUIRE\n", "missing key"),
            (b"ACQUIRE x y\n", "whole number"),
            (b"ACQUIRE x 0\n", "between 1"),
            (b"ACQUIRE x 1 2\n", "too many"),
            (b"ACQUIRE \xff\n", "UTF-8"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    /// Answers like the limits service, but from the request alone (no limiter): `PONG`,
    /// `ACQ <key> <n>`, `REL <key> <n>` or `ERR <reason>`, so the order of answers shows.
    struct Echo;

    impl LineService for Echo {
        fn answer_line(&self, line: &[u8], out: &mut Vec<u8>) {
            let answer = match parse(line) {
                Ok(Request::Ping) => "PONG".to_owned(),
                Ok(Request::Acquire(key, n)) => format!("ACQ {key} {n}"),
                Ok(Request::Release(key, n)) => format!("REL {key} {n}"),
                Err(reason) => format!("ERR {reason}"),
            };
            out.extend_from_slice(answer.as_bytes());
            out.push(b'\n');
        }

        fn refuse_long_line(&self) {}
    }

    /// A connection served by [`Echo`]: the gateway's end of the socket and the serving task.
    fn echo_connection() -> (UnixStream, tokio::task::JoinHandle<()>) {
        let (gateway, agent) = UnixStream::pair().unwrap();
        let served = tokio::spawn(async move {
            let (read, write) = agent.into_split();
            answer_requests(read, write, &Echo, &CancellationToken::new()).await;
        });
        (gateway, served)
    }

    /// Read exactly `expected` from `gateway`, failing after a second.
    async fn expect_answers(gateway: &mut UnixStream, expected: &[u8], context: &str) {
        let mut got = vec![0u8; expected.len()];
        let read = tokio::time::timeout(std::time::Duration::from_secs(1), gateway.read_exact(&mut got)).await;
        assert!(read.is_ok(), "{context}: no answer within 1 s; expected {:?}", String::from_utf8_lossy(expected));
        read.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(expected), "{context}");
    }

    #[tokio::test]
    async fn every_complete_line_is_answered_wherever_the_bytes_are_split() {
        let requests: &[u8] = b"PING\nACQUIRE operator:a 2\nRELEASE domain:b\nPING\r\nbogus\nACQUIRE k\n";
        let unknown = format!("ERR {}", parse(b"bogus\n").unwrap_err());
        let answers: Vec<String> = ["PONG", "ACQ operator:a 2", "REL domain:b 1", "PONG", &unknown, "ACQ k 1"]
            .iter()
            .map(|a| format!("{a}\n"))
            .collect();
        for split in 0..=requests.len() {
            let (mut gateway, served) = echo_connection();
            let (first, rest) = requests.split_at(split);
            let complete = first.iter().filter(|b| **b == b'\n').count();
            gateway.write_all(first).await.unwrap();
            let before = answers[..complete].concat();
            expect_answers(&mut gateway, before.as_bytes(), &format!("after the first {split} bytes")).await;
            gateway.write_all(rest).await.unwrap();
            let after = answers[complete..].concat();
            expect_answers(&mut gateway, after.as_bytes(), &format!("after the rest (split at {split})")).await;
            gateway.shutdown().await.unwrap();
            let mut tail = Vec::new();
            gateway.read_to_end(&mut tail).await.unwrap();
            assert!(tail.is_empty(), "split at {split}: unexpected answers {:?}", String::from_utf8_lossy(&tail));
            served.await.unwrap();
        }
    }

    #[tokio::test]
    async fn answers_before_an_over_long_line_are_sent_before_the_connection_closes() {
        let (mut gateway, served) = echo_connection();
        let mut requests = b"PING\nPING\n".to_vec();
        requests.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        gateway.write_all(&requests).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(1), gateway.read_to_end(&mut got)).await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&got), "PONG\nPONG\nERR line too long\n");
        served.await.unwrap();
    }
}
