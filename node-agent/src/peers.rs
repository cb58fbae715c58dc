//! Remembering where the cluster's other processes listen, so that a restarted agent finds them
//! while every collector is down.
//!
//! The agents meet through the endpoints in `[bus] connect` (usually the collectors') and
//! zenoh's gossip there. An agent started while every collector is down would see no other
//! agent, and count itself alone (for limit shares, too). Every [`EVERY`] this task reads the
//! endpoints the live processes' status documents name and keeps them in
//! [`PEERS_FILE`](switchboard_bus::config::PEERS_FILE) in the data directory; the agent connects
//! to them at its next start besides its `connect` list.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use switchboard_bus::config::{is_endpoint, read_peers, write_peers, MAX_PEERS, PEERS_FILE};
use switchboard_bus::keys::KeySpace;
use tokio_util::sync::CancellationToken;
use zenoh::Session;

/// How often the endpoints are read again (the first time this long after the start, once the
/// bus has named the others).
const EVERY: Duration = Duration::from_secs(30);
/// The first reading, after the start.
const FIRST: Duration = Duration::from_secs(5);

/// The endpoints remembered in `data_dir` that `connect` and `listen` do not name already, of
/// a protocol they use (a process with TLS takes no `tcp/` endpoint, and a peer's document
/// cannot make this one open a link of a kind its operator did not choose).
pub(crate) fn remembered(data_dir: &std::path::Path, connect: &[String], listen: &[String]) -> Vec<String> {
    read_peers(data_dir)
        .into_iter()
        .filter(|e| same_protocol(e, connect, listen) && !connect.contains(e) && !listen.contains(e))
        .collect()
}

/// Whether `endpoint`'s protocol is one of those of `connect` and `listen`.
fn same_protocol(endpoint: &str, connect: &[String], listen: &[String]) -> bool {
    let proto = |e: &str| e.split_once('/').map(|(p, _)| p.to_owned());
    connect.iter().chain(listen).any(|mine| proto(mine).is_some_and(|p| Some(p) == proto(endpoint)))
}

/// Note the live processes' endpoints (other than `own`) in `data_dir` until `cancel` fires.
pub(crate) async fn remember(
    session: Session,
    keys: KeySpace,
    data_dir: PathBuf,
    own: Vec<String>,
    connect: Vec<String>,
    cancel: CancellationToken,
) {
    let mut wait = FIRST;
    let mut last: BTreeSet<String> = read_peers(&data_dir).into_iter().collect();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = EVERY;
        let Ok(snap) = switchboard_bus::status::fetch(&session, &keys, Duration::from_secs(3)).await else { continue };
        let found: BTreeSet<String> = snap
            .processes
            .iter()
            .filter(|p| snap.live.contains(&format!("{}/{}", p.role, p.name)))
            .flat_map(|p| p.endpoints.iter())
            .filter(|e| is_endpoint(e) && same_protocol(e, &connect, &own) && !own.contains(e))
            .take(MAX_PEERS)
            .cloned()
            .collect();
        // Alone for now (the others down, or cut off): what was known stays known.
        if found.is_empty() || found == last {
            continue;
        }
        match write_peers(&data_dir, &found.iter().cloned().collect::<Vec<_>>()) {
            Ok(()) => tracing::debug!(endpoints = found.len(), "noted the cluster's endpoints in {PEERS_FILE}"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write {PEERS_FILE}: a restart while every collector is down finds no other agent")
            }
        }
        last = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_endpoints_of_the_protocols_this_agent_uses_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let file = "quic/10.0.0.2:7447\ntcp/10.0.0.3:7447\nquic/10.0.0.1:7447\n";
        std::fs::write(dir.path().join(PEERS_FILE), file).unwrap();
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // With TLS (quic/ only): a tcp/ endpoint would fail the start, and the own one is left out.
        let got = remembered(dir.path(), &v(&["quic/10.0.0.9:7447"]), &v(&["quic/10.0.0.1:7447"]));
        assert_eq!(got, v(&["quic/10.0.0.2:7447"]));
        assert_eq!(remembered(dir.path(), &v(&["tcp/10.0.0.9:7447"]), &[]), v(&["tcp/10.0.0.3:7447"]));
        assert!(remembered(dir.path(), &[], &[]).is_empty());
    }
}
