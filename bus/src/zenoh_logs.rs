//! zenoh's log lines that Switchboard says better itself (or that say nothing wrong), as a
//! `tracing` filter every process and tool of the project adds to its own.

/// The filter directives that leave out zenoh's lines below, unless the user asks for zenoh's
/// logs (a filter that names zenoh replaces them):
/// - a peer whose `connect` endpoints are not all up within the scouting delay (agents start
///   before their collector, reconnects are retried);
/// - "Skipping name verification" of a QUIC or TLS server: peers are known by their
///   certificate's identity, not by host name (docs/security.md);
/// - access control warning of a link with several network interfaces: the policy names no
///   interface;
/// - a QUIC or TLS link not accepted: a long-running process's refusal counter logs it instead,
///   at a rate limit when a peer's certificate was refused (`tls_handshake`), as zenoh would
///   otherwise;
/// - a query whose answer from one peer did not come in time (`Didn't receive final reply ...
///   Timeout`), or came after it (`Query not found`, `Received ReplyData for unknown Query`): a
///   hung process, which the mesh check and the status name, and whose lookups the DLR service
///   counts as unanswered;
/// - a link that failed while it was being set up (`Error syncing transport with peer`,
///   `Received a close message ... in response to an OpenSyn`), at ERROR although a process that
///   comes back from a pause meets it every time: the mesh check names a peer that stays
///   unreachable, and a failed dial of `connect` is counted and logged;
/// - zenoh's bookkeeping of the key ids a peer declared on a link that is being reset
///   (`Resource N remapped. Remapping unsupported!`), at ERROR although nothing is lost.
pub fn quiet() -> String {
    use crate::refusals::{ZENOH_ACCESS_CONTROL, ZENOH_QUIC_ACCEPT, ZENOH_TLS_ACCEPT};
    format!(
        "zenoh::net::runtime::orchestrator=error,zenoh_link_commons::quic::utils=error,zenoh_link_tls::utils=error,\
         zenoh::net::routing::dispatcher::queries=error,zenoh::api::session=error,\
         zenoh::net::routing::dispatcher::resource=off,\
         zenoh_transport::unicast::universal::transport=off,zenoh_transport::unicast::establishment::open=off,\
         {ZENOH_ACCESS_CONTROL}=error,{ZENOH_QUIC_ACCEPT}=error,{ZENOH_TLS_ACCEPT}=error"
    )
}
