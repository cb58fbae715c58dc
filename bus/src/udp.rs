//! The kernel's UDP receive buffers, on which `quic/` links depend: the size a socket gets, a
//! warning at start when it is too small, and the datagrams dropped because a buffer was full.
//!
//! zenoh's QUIC link does not size its UDP sockets, so each gets `net.core.rmem_default`
//! (208 KiB on most Linux systems). A burst of log batches fills that in well under a
//! millisecond; the kernel then drops datagrams and QUIC resends them after its loss timer, which
//! shows as stalls of the log pipeline and a heavy tail of DLR lookups (docs/security.md, "UDP
//! buffers for QUIC"). Linux only: elsewhere nothing is read and nothing is rendered.

use crate::http::Metrics;

/// The default receive buffer a `quic/` link should get: with it the TLS bench dropped no
/// datagram (docs/security.md).
pub const RECOMMENDED_BYTES: u64 = 4 << 20;

const RMEM_DEFAULT: &str = "/proc/sys/net/core/rmem_default";

/// `net.core.rmem_default`, the receive buffer a new UDP socket gets, when readable.
pub fn default_receive_buffer() -> Option<u64> {
    std::fs::read_to_string(RMEM_DEFAULT).ok()?.trim().parse().ok()
}

/// Datagrams the kernel dropped for a full receive buffer, over IPv4 and IPv6, for every process
/// of this network namespace (`RcvbufErrors` of `/proc/net/snmp` and `/proc/net/snmp6`).
pub fn receive_buffer_drops() -> Option<u64> {
    let v4 = std::fs::read_to_string("/proc/net/snmp").ok().and_then(|t| snmp_rcvbuf_errors(&t));
    let v6 = std::fs::read_to_string("/proc/net/snmp6").ok().and_then(|t| snmp6_rcvbuf_errors(&t));
    match (v4, v6) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

/// `RcvbufErrors` of the `Udp:` table of `/proc/net/snmp` (a line of names, then one of values).
fn snmp_rcvbuf_errors(text: &str) -> Option<u64> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `Udp6RcvbufErrors` of `/proc/net/snmp6` (one `name value` per line).
fn snmp6_rcvbuf_errors(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == "Udp6RcvbufErrors").then(|| it.next()?.parse().ok())?
    })
}

/// Warn when `endpoints` include a `quic/` one and new UDP sockets get less than
/// [`RECOMMENDED_BYTES`].
pub fn warn_if_small<'a>(endpoints: impl IntoIterator<Item = &'a String>) {
    if !endpoints.into_iter().any(|e| e.starts_with("quic/")) {
        return;
    }
    if let Some(bytes) = default_receive_buffer().filter(|b| *b < RECOMMENDED_BYTES) {
        tracing::warn!(
            rmem_default = bytes,
            "bus: quic/ links get UDP receive buffers of {} KiB (net.core.rmem_default): bursts \
             overflow them and QUIC resends after a stall; set net.core.rmem_default and \
             net.core.rmem_max to {} (docs/security.md, \"UDP buffers for QUIC\")",
            bytes / 1024,
            RECOMMENDED_BYTES
        );
    }
}

/// `switchboard_host_udp_receive_buffer_errors_total`, when the kernel says.
pub fn render(m: &mut Metrics) {
    if let Some(drops) = receive_buffer_drops() {
        m.counter(
            "switchboard_host_udp_receive_buffer_errors_total",
            "UDP datagrams the kernel dropped because a socket's receive buffer was full, for every \
             process of this host's network namespace (quic/ links resend them after a stall; \
             docs/security.md).",
            drops,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_are_read_from_both_tables() {
        let v4 = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                  Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                  Udp: 3425885 172 2204 3428396 2204 0\n\
                  UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                  UdpLite: 0 0 0 0 9 0\n";
        assert_eq!(snmp_rcvbuf_errors(v4), Some(2204));
        assert_eq!(snmp6_rcvbuf_errors("Udp6InDatagrams 5\nUdp6RcvbufErrors    17\nUdp6SndbufErrors 1\n"), Some(17));
        assert_eq!(snmp_rcvbuf_errors("Udp: InDatagrams\nUdp: 1\n"), None);
        assert_eq!(snmp_rcvbuf_errors("garbage"), None);
        assert_eq!(snmp6_rcvbuf_errors("Udp6RcvbufErrors x\n"), None);
    }
}
