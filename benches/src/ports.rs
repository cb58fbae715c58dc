//! Ports for the processes a bench starts. A port the kernel hands out for `127.0.0.1:0` lies in
//! its ephemeral range, where the outgoing connection of a process already started (a node
//! dialing another) can take it between the choice and the bind of the process it was chosen
//! for; these are chosen below that range, and checked free.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;

/// The lowest port handed out.
const LOWEST: u32 = 10_000;

/// Where the next search starts: each call moves on, so ports of one bench differ.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port free on loopback for TCP and UDP, below the ephemeral range; in the ephemeral range
/// only when nothing below it is free.
pub(crate) fn free_port() -> Result<u16> {
    let below = ephemeral_start().max(LOWEST + 1);
    let span = below - LOWEST;
    // Benches run at once start apart: the search starts at a point given by the process id.
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..span.min(5_000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // In range: LOWEST + (x % span) < below <= 65_535.
        let port = (LOWEST + start.wrapping_add(n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (32,768 where it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .filter(|&p: &u32| p <= 65_535)
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let a = super::free_port().unwrap();
        let b = super::free_port().unwrap();
        assert_ne!(a, b);
        assert!(u32::from(a) < super::ephemeral_start() && u32::from(a) >= super::LOWEST);
        std::net::TcpListener::bind(("127.0.0.1", a)).unwrap();
    }
}
