//! The repository's documents on the bus, and the queries that fetch them.
//!
//! - `<prefix>/config/push` carries a [`Pack`]: one revision and, base64-encoded, the contents
//!   its parents do not have (a one-line change carries one file);
//! - `<prefix>/config/state/<node>` answers a [`NodeState`]: what the node holds and applied;
//! - `<prefix>/config/object/<node>/<sha256>` answers the bytes whose SHA-256 that is: a file's
//!   content, or a revision's canonical document (its id). The asker checks the hash, so an
//!   object may come from any node.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zenoh::Session;

use super::{is_hash, sha256_hex, Change, RepoError, Revision, Summary, MAX_TREE_BYTES};
use crate::keys::KeySpace;

/// Largest push document: the largest tree, base64-encoded, and its revision.
pub const MAX_PACK_BYTES: usize = (MAX_TREE_BYTES as usize / 3 + 1) * 4 + (4 << 20);
/// Largest state document read from one node.
pub const MAX_STATE_BYTES: usize = 8 << 20;
/// Most state documents one ask reads (a peer without TLS could answer under many names).
pub const MAX_STATES: usize = 10_000;

/// A pushed revision with the contents its parents lack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    /// The revision.
    pub revision: Revision,
    /// Contents by SHA-256, base64 (standard alphabet, padded).
    #[serde(default)]
    pub contents: BTreeMap<String, String>,
}

impl Pack {
    /// A pack of `revision` carrying `contents`.
    pub fn new<'a>(revision: Revision, contents: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        let contents = contents.into_iter().map(|c| (sha256_hex(c), b64.encode(c))).collect();
        Self { revision, contents }
    }

    /// The JSON document.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse and check a pack: the revision validates, every content is named by it and hashes to
    /// its name. Returns the revision and the contents.
    pub fn decode(bytes: &[u8]) -> Result<(Revision, Vec<Vec<u8>>), RepoError> {
        if bytes.len() > MAX_PACK_BYTES {
            return Err(RepoError::TooBig(format!("a push of {} bytes (at most {MAX_PACK_BYTES})", bytes.len())));
        }
        let pack: Pack =
            serde_json::from_slice(bytes).map_err(|e| RepoError::Invalid(format!("not a push document: {e}")))?;
        pack.revision.validate()?;
        let named: std::collections::BTreeSet<&str> = pack.revision.files.values().map(|f| f.sha256.as_str()).collect();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::with_capacity(pack.contents.len());
        for (hash, text) in &pack.contents {
            if !named.contains(hash.as_str()) {
                return Err(RepoError::Invalid(format!("content {hash} is not a file of the revision")));
            }
            let content = b64.decode(text).map_err(|e| RepoError::Invalid(format!("content {hash}: {e}")))?;
            if sha256_hex(&content) != *hash {
                return Err(RepoError::HashMismatch(hash.clone()));
            }
            out.push(content);
        }
        Ok((pack.revision, out))
    }
}

/// The revision a node applied to its working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Its id.
    pub id: String,
    /// Its number.
    pub number: u64,
    /// When the node switched to it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A file of the working directory that differs from what the node wrote there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEdit {
    /// Its path in the working directory.
    pub path: String,
    /// How it differs.
    pub change: Change,
}

/// Why a node does not apply the revision the repository's head names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The revision not applied.
    pub id: String,
    /// Its number.
    pub number: u64,
    /// Why, in words.
    pub why: String,
    /// The paths concerned (local edits it would overwrite), if any.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// What the gateway's reload command did after the last switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// The revision switched to.
    pub id: String,
    /// Its number.
    pub number: u64,
    /// Whether the command exited 0 in time.
    pub ok: bool,
    /// `exit 0`, `exit 3`, `killed by signal 9`, `timed out after 30s`, `cannot start: ...`.
    pub status: String,
    /// The end of what it wrote (stdout and stderr, at most 2 KiB).
    pub output: String,
    /// Whether the node switched back to the revision before (the default after a failure).
    pub reverted: bool,
    /// When it finished, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// One node's part of the repository, as it answers on `<prefix>/config/state/<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Always 1.
    pub version: u32,
    /// The node.
    pub node: String,
    /// Its subcluster (`None`: the default one).
    pub subcluster: Option<String>,
    /// Its working directory.
    pub dir: String,
    /// The revision in its working directory.
    pub applied: Option<Applied>,
    /// The revisions it holds that no other follows, newest first: more than one is a conflict.
    pub heads: Vec<Summary>,
    /// Every revision it holds, newest first.
    pub revisions: Vec<Summary>,
    /// Files of the working directory changed by hand.
    pub local_edits: Vec<LocalEdit>,
    /// Why the head is not applied, if it is not.
    pub blocked: Option<Blocked>,
    /// The last reload.
    pub reload: Option<ReloadOutcome>,
    /// A pushed revision it is storing now (a large tree takes seconds to write and flush).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storing: Option<Storing>,
    /// The revision whose reload command is running now (switched in; applied once the reload
    /// succeeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloading: Option<Reloading>,
    /// The revision it could not store last (a write of its own failed: a full disk,
    /// permissions), and why, until it stores one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<Blocked>,
}

/// A revision switched in whose reload command is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloading {
    /// The revision's id.
    pub id: String,
    /// Its number.
    pub number: u64,
    /// When the reload command started, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// A pushed revision a node is writing to its store; it applies it once stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storing {
    /// The revision's id.
    pub id: String,
    /// Its number.
    pub number: u64,
    /// Its files.
    pub files: usize,
    /// When the node began storing it, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// Ask every node for its state; one per node that answered in time, with a parse error for
/// those whose answer is not a state.
pub async fn fetch_states(session: &Session, keys: &KeySpace, timeout: Duration) -> Vec<Result<NodeState, String>> {
    let Ok(all) = keys.all_config_states() else { return Vec::new() };
    let Ok(replies) = session.get(all).timeout(timeout).await else { return Vec::new() };
    let mut out = Vec::new();
    while let Ok(reply) = replies.recv_async().await {
        if out.len() >= MAX_STATES {
            out.push(Err(format!("more than {MAX_STATES} answers: the rest is left out")));
            break;
        }
        let Ok(sample) = reply.result() else { continue };
        let bytes = sample.payload().to_bytes();
        let key = sample.key_expr().as_str().to_owned();
        if bytes.len() > MAX_STATE_BYTES {
            out.push(Err(format!("{key}: an answer of {} bytes (at most {MAX_STATE_BYTES})", bytes.len())));
            continue;
        }
        out.push(serde_json::from_slice::<NodeState>(&bytes).map_err(|e| format!("{key}: {e}")));
    }
    out
}

/// Fetch the object `sha256` from `node`; `None` if it did not answer it. An answer that does
/// not hash to its name is an error.
pub async fn fetch_object(
    session: &Session,
    keys: &KeySpace,
    node: &str,
    sha256: &str,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, RepoError> {
    if !is_hash(sha256) {
        return Err(RepoError::Invalid(format!("{sha256:?} is not a SHA-256")));
    }
    let key = keys.config_object(node, sha256).map_err(|e| RepoError::Invalid(e.to_string()))?;
    let replies =
        session.get(key).timeout(timeout).await.map_err(|e| RepoError::Invalid(format!("asking {node}: {e}")))?;
    while let Ok(reply) = replies.recv_async().await {
        let Ok(sample) = reply.result() else { continue };
        let bytes = sample.payload().to_bytes().into_owned();
        if sha256_hex(&bytes) != sha256 {
            return Err(RepoError::HashMismatch(format!("{sha256} from {node}")));
        }
        return Ok(Some(bytes));
    }
    Ok(None)
}

/// Fetch the revision `id` from `node` and check it.
pub async fn fetch_revision(
    session: &Session,
    keys: &KeySpace,
    node: &str,
    id: &str,
    timeout: Duration,
) -> Result<Option<Revision>, RepoError> {
    let Some(bytes) = fetch_object(session, keys, node, id, timeout).await? else { return Ok(None) };
    let rev: Revision =
        serde_json::from_slice(&bytes).map_err(|e| RepoError::Invalid(format!("revision {id} from {node}: {e}")))?;
    rev.validate()?;
    if rev.id() != id {
        return Err(RepoError::HashMismatch(id.to_owned()));
    }
    Ok(Some(rev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::FileEntry;

    #[test]
    fn a_pack_carries_only_named_contents_that_hash_right() {
        let rev = Revision {
            version: 1,
            number: 1,
            parents: vec![],
            author: "ops".into(),
            at_ms: 1,
            message: String::new(),
            files: [("global/a".to_string(), FileEntry::of(b"hello"))].into(),
        };
        let pack = Pack::new(rev.clone(), [&b"hello"[..]]);
        let (back, contents) = Pack::decode(&pack.encode()).unwrap();
        assert_eq!(back, rev);
        assert_eq!(contents, [b"hello".to_vec()]);
        let stray = Pack::new(rev.clone(), [&b"other"[..]]);
        assert!(Pack::decode(&stray.encode()).is_err());
        let mut forged = Pack::new(rev, [&b"hello"[..]]);
        let text = forged.contents.values_mut().next().unwrap();
        *text = base64::engine::general_purpose::STANDARD.encode(b"HELLO");
        assert!(matches!(Pack::decode(&forged.encode()), Err(RepoError::HashMismatch(_))));
        assert!(Pack::decode(b"{}").is_err());
    }
}
