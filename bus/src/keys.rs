//! The key space, defined once.
//!
//! Every key expression Switchboard uses is built here from a validated prefix (default
//! `sb/<cluster>`) and validated name chunks; nothing else in the code formats keys. The table in
//! `docs/protocol.md` mirrors this module:
//!
//! | key | kind | who |
//! | --- | --- | --- |
//! | `<prefix>/node/<node>` | liveliness token | every node agent |
//! | `<prefix>/collector/<name>` | liveliness token | every collector |
//! | `<prefix>/serves/<service>/<node>` | liveliness token | each node agent: `limits`, `dlr`, or `none` |
//! | `<prefix>/stream/<node>/<kind>/<stream>` | put (sequenced batches) | the node's agent |
//! | `<prefix>/replay/<node>/<kind>/<stream>` | queryable (`from=N;to=M`) | the node's agent |
//! | `<prefix>/head/<node>` | put (JSON [`crate::wire::control::Heads`]) | the node's agent, every second |
//! | `<prefix>/watermark/<collector>/<node>` | put (JSON [`crate::wire::control::Watermarks`]) | each collector |
//! | `<prefix>/counter/<node>` | put (JSON [`crate::limits::DemandReport`]) | each node using limits |
//! | `<prefix>/limits/config/<node>` | queryable (JSON [`crate::limits::revision::History`]) | each node using limits |
//! | `<prefix>/config/push` | put (JSON [`crate::repo::wire::Pack`]) | `switchboard config push` (and `limits set`) |
//! | `<prefix>/config/state/<node>` | queryable (JSON [`crate::repo::wire::NodeState`]) | each node agent |
//! | `<prefix>/config/object/<node>/<sha256>` | queryable (a file content or revision document) | each node agent |
//! | `<prefix>/dlr/id/<connector>/<id>` | queryable (JSON [`crate::dlr::wire::LookupReply`]) | each node holding the record, for clients |
//! | `<prefix>/dlr/at/<node>/<connector>/<id>` | queryable (same as `dlr/id`; `<node>` may be `*`), replies on the node's own key | the agent of `<node>` |
//! | `<prefix>/dlr/ask/<node>` | put (JSON [`crate::dlr::wire::DlrAsk`]) | clients asking `<node>` many lookups |
//! | `<prefix>/dlr/answer/<client>/<node>` | put (JSON [`crate::dlr::wire::DlrAnswer`]) | the asked agent `<node>`, to the client |
//! | `<prefix>/dlr/replica/<node>` | queryable (JSON [`crate::dlr::wire::ReplicaBatch`]) | each node using DLRs |
//! | `<prefix>/dlr/restore/<holder>/<owner>` | queryable (`after=<hex>`; JSON [`crate::dlr::wire::RestorePage`]) | each node using DLRs, for `<owner>` |
//! | `<prefix>/view/<role>/<name>` | queryable (JSON [`crate::mesh::View`]) | every long-running process |
//! | `<prefix>/status/<role>/<name>` | queryable (JSON [`crate::status::ProcessStatus`]) | every long-running process |
//!
//! [`KeySpace::parse_stream`] turns a received key back into a typed [`StreamId`].

use std::fmt;

use zenoh::key_expr::OwnedKeyExpr;

/// A name that cannot be a key chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The empty string.
    #[error("a name may not be empty")]
    Empty,
    /// Contains `/`, `*`, `$`, `?`, `#`, or starts with `@`.
    #[error("a name may not contain '/', '*', '$', '?', '#' or start with '@'")]
    Reserved,
    /// A node's or cluster's name with whitespace or a control character.
    #[error("a node's or cluster's name may not contain whitespace or control characters")]
    Spaces,
    /// A node's or cluster's name with `|`, `;` or `=` (the separators of a query's parameters,
    /// where names travel too: docs/protocol.md, `address_of`).
    #[error("a node's or cluster's name may not contain '|', ';' or '='")]
    Separators,
    /// zenoh rejected the assembled key expression.
    #[error("not a valid key expression: {0}")]
    Invalid(String),
    /// Not a stream written as `<node>/<kind>/<name>`.
    #[error("not a stream: {0:?} (expected <node>/log/<name>)")]
    Stream(String),
}

/// Check a node's or cluster's name: a key chunk ([`check_chunk`]) that also stands alone on a
/// line of the members file and in a log line, without whitespace or control characters.
pub fn check_name(name: &str) -> Result<(), KeyError> {
    check_chunk(name)?;
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyError::Spaces);
    }
    if name.contains(['|', ';', '=']) {
        return Err(KeyError::Separators);
    }
    Ok(())
}

/// Check that `name` can stand as one chunk of a key expression.
pub fn check_chunk(name: &str) -> Result<(), KeyError> {
    if name.is_empty() {
        return Err(KeyError::Empty);
    }
    if name.starts_with('@') || name.bytes().any(|b| matches!(b, b'/' | b'*' | b'$' | b'?' | b'#')) {
        return Err(KeyError::Reserved);
    }
    Ok(())
}

/// The kind of a sequenced stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// Lines of a gateway's log files, as `log_batch` payloads.
    Log,
}

impl StreamKind {
    /// The key chunk of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Log => "log",
        }
    }

    fn from_chunk(s: &str) -> Option<Self> {
        match s {
            "log" => Some(StreamKind::Log),
            _ => None,
        }
    }
}

/// A service an agent may run, and take part in with the other agents that run it: it holds a
/// liveliness token per service it serves ([`KeySpace::serves`]), and only those count in a
/// service's shares (limits) and placement (DLR copies and lookups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Cluster-wide limits (`[limits] enabled`).
    Limits,
    /// DLR records and lookups (`[dlr] enabled`).
    Dlr,
}

impl Service {
    /// The key chunk of this service.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Limits => "limits",
            Service::Dlr => "dlr",
        }
    }
}

/// The service chunk of an agent that serves none ([`KeySpace::serves_none`]).
pub const SERVES_NONE: &str = "none";

/// The role a process announces with its liveliness token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A node agent (one per gateway node).
    Agent,
    /// A collector.
    Collector,
}

impl Role {
    /// The key chunk of this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "node",
            Role::Collector => "collector",
        }
    }

    /// Parse `<role>/<name>` (e.g. `node/gw1`), as tokens and views name a process.
    pub fn parse_member(path: &str) -> Option<(Role, String)> {
        let (role, name) = path.split_once('/')?;
        if check_name(name).is_err() {
            return None;
        }
        Some((Role::from_chunk(role)?, name.to_owned()))
    }

    fn from_chunk(s: &str) -> Option<Self> {
        match s {
            "node" => Some(Role::Agent),
            "collector" => Some(Role::Collector),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of one sequenced stream: `(node, kind, name)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The node that owns the stream.
    pub node: String,
    /// What the stream carries.
    pub kind: StreamKind,
    /// The stream's name within the node (for logs: the source name in the agent config).
    pub name: String,
}

impl StreamId {
    /// The log stream `name` of `node`.
    pub fn log(node: &str, name: &str) -> Self {
        Self { node: node.to_owned(), kind: StreamKind::Log, name: name.to_owned() }
    }

    /// `<kind>/<name>`: how a node's own documents (heads, watermarks) name the stream.
    pub fn local(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.name)
    }

    /// The stream of `node` that one of its documents names `local` (`<kind>/<name>`); `None`
    /// for anything else.
    pub fn parse_local(node: &str, local: &str) -> Option<Self> {
        let (kind, name) = local.split_once('/')?;
        if check_name(node).is_err() || check_chunk(name).is_err() {
            return None;
        }
        Some(Self { node: node.to_owned(), kind: StreamKind::from_chunk(kind)?, name: name.to_owned() })
    }
}

/// `<node>/<kind>/<name>`: how documents naming streams of many nodes (a data file's footer,
/// `/health`, metric labels) write a stream.
impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.node, self.kind.as_str(), self.name)
    }
}

impl std::str::FromStr for StreamId {
    type Err = KeyError;

    /// Parse `<node>/<kind>/<name>`, the form [`fmt::Display`] writes.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::Stream(s.to_owned());
        let (node, local) = s.split_once('/').ok_or_else(bad)?;
        Self::parse_local(node, local).ok_or_else(bad)
    }
}

impl serde::Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The key kinds (below the prefix) that are only put and subscribed to, never queried: no
/// process declares a queryable there ([`crate::refusals`] tells zenoh's interest in their
/// declarations from a query by them).
pub const PUT_ONLY: [&str; 7] = ["stream", "head", "watermark", "counter", "config/push", "dlr/ask", "dlr/answer"];

/// The key space of one cluster: every key expression, built from one validated prefix.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// A key space under `prefix` (e.g. `sb/prod`); every chunk of the prefix is checked.
    pub fn new(prefix: &str) -> Result<Self, KeyError> {
        for chunk in prefix.split('/') {
            check_chunk(chunk)?;
        }
        Ok(Self { prefix: prefix.to_owned() })
    }

    /// The prefix all keys live under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/<pattern>`, for the access policy ([`crate::access`]), which names whole
    /// sections with wildcards (`stream/gw1/**`). The caller checks the names it puts in.
    pub fn pattern(&self, pattern: &str) -> String {
        format!("{}/{pattern}", self.prefix)
    }

    fn build(&self, chunks: &[&str]) -> Result<OwnedKeyExpr, KeyError> {
        let mut s = String::with_capacity(self.prefix.len() + 64);
        s.push_str(&self.prefix);
        for c in chunks {
            s.push('/');
            s.push_str(c);
        }
        OwnedKeyExpr::try_from(s).map_err(|e| KeyError::Invalid(e.to_string()))
    }

    /// `<prefix>/stream/<node>/<kind>/<name>`: where a stream's batches are published.
    pub fn stream(&self, id: &StreamId) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(&id.node)?;
        check_chunk(&id.name)?;
        self.build(&["stream", &id.node, id.kind.as_str(), &id.name])
    }

    /// `<prefix>/stream/*/<kind>/*`: every stream of one kind in the cluster.
    pub fn all_streams(&self, kind: StreamKind) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["stream", "*", kind.as_str(), "*"])
    }

    /// `<prefix>/replay/<node>/<kind>/<name>`: the agent's replay queryable for a stream.
    pub fn replay(&self, id: &StreamId) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(&id.node)?;
        check_chunk(&id.name)?;
        self.build(&["replay", &id.node, id.kind.as_str(), &id.name])
    }

    /// `<prefix>/replay/<node>/<kind>/*`: every replay queryable of one node and kind.
    pub fn replay_all_of(&self, node: &str, kind: StreamKind) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["replay", node, kind.as_str(), "*"])
    }

    /// Parse a key under [`Self::replay`] back into its stream identity.
    pub fn parse_replay(&self, key: &str) -> Option<StreamId> {
        self.parse_under("/replay/", key)
    }

    /// `<prefix>/head/<node>`: where a node announces how far each of its streams has got.
    pub fn head(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["head", node])
    }

    /// `<prefix>/head/*`: every node's heads.
    pub fn all_heads(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["head", "*"])
    }

    /// Parse a key under [`Self::head`] back into the node name.
    pub fn parse_head(&self, key: &str) -> Option<String> {
        self.parse_node_under("/head/", key)
    }

    /// `<prefix>/counter/<node>`: a node's demand per limit key.
    pub fn counter(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["counter", node])
    }

    /// `<prefix>/counter/*`: every node's demand.
    pub fn all_counters(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["counter", "*"])
    }

    /// Parse a key under [`Self::counter`] back into the node name.
    pub fn parse_counter(&self, key: &str) -> Option<String> {
        self.parse_node_under("/counter/", key)
    }

    /// `<prefix>/limits/config/<node>`: queryable; the node's revision history of the limits.
    pub fn limits_config(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["limits", "config", node])
    }

    /// `<prefix>/limits/config/*`: every node's limits history.
    pub fn all_limits_configs(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["limits", "config", "*"])
    }

    /// Parse a key under [`Self::limits_config`] back into the node name.
    pub fn parse_limits_config(&self, key: &str) -> Option<String> {
        self.parse_node_under("/limits/config/", key)
    }

    /// `<prefix>/config/push`: a new revision of the configuration repository with the file
    /// contents its parents lack (JSON [`crate::repo::wire::Pack`]), put by `switchboard config push`.
    pub fn config_push(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["config", "push"])
    }

    /// `<prefix>/config/state/<node>`: queryable; the node's part of the repository
    /// ([`crate::repo::wire::NodeState`]).
    pub fn config_state(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["config", "state", node])
    }

    /// `<prefix>/config/state/*`: every node's repository state.
    pub fn all_config_states(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["config", "state", "*"])
    }

    /// `<prefix>/config/object/<node>/<sha256>`: queryable; a file content or a revision document
    /// the node holds, by its SHA-256.
    pub fn config_object(&self, node: &str, sha256: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        check_chunk(sha256)?;
        self.build(&["config", "object", node, sha256])
    }

    /// `<prefix>/config/object/<node>/*`: every object `node` serves.
    pub fn all_config_objects_of(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["config", "object", node, "*"])
    }

    /// The SHA-256 asked for under [`Self::config_object`].
    pub fn parse_config_object(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/config/object/")?;
        let (_, hash) = rest.split_once('/')?;
        crate::repo::is_hash(hash).then(|| hash.to_owned())
    }

    /// `<prefix>/dlr/id/<connector>/<id chunk>`: the lookup of one message id (canonical, made a
    /// chunk by [`crate::dlr::id::key_chunk`]).
    pub fn dlr_id(&self, connector: &str, canonical_id: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(connector)?;
        self.build(&["dlr", "id", connector, &crate::dlr::id::key_chunk(canonical_id)])
    }

    /// `<prefix>/dlr/id/*/*`: every lookup (what each node answers).
    pub fn all_dlr_ids(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["dlr", "id", "*", "*"])
    }

    /// `<prefix>/dlr/at/<node>/<connector>/<id chunk>`: the lookup of one message id asked of
    /// one node (the one that must hold it, see [`crate::dlr::rendezvous::first_holder`]).
    pub fn dlr_at(&self, node: &str, connector: &str, canonical_id: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        check_chunk(connector)?;
        self.build(&["dlr", "at", node, connector, &crate::dlr::id::key_chunk(canonical_id)])
    }

    /// `<prefix>/dlr/at/<node>/*/*`: every lookup asked of `node`.
    pub fn all_dlr_at(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["dlr", "at", node, "*", "*"])
    }

    /// `<prefix>/dlr/at/*/<connector>/<id chunk>`: the lookup of one message id asked of every
    /// node, each of which replies on its own [`Self::dlr_at`] key.
    pub fn dlr_at_every(&self, connector: &str, canonical_id: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(connector)?;
        self.build(&["dlr", "at", "*", connector, &crate::dlr::id::key_chunk(canonical_id)])
    }

    /// Whether `key` is a lookup under `<prefix>/dlr/at/` (of one node, or of `*`).
    pub fn is_dlr_at(&self, key: &str) -> bool {
        key.strip_prefix(&self.prefix).is_some_and(|rest| rest.starts_with("/dlr/at/"))
    }

    /// The node a [`Self::dlr_at`] key names (`None` for any other key, or a wildcard).
    pub fn parse_dlr_at_node<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/dlr/at/")?;
        let (node, _) = rest.split_once('/')?;
        (check_chunk(node).is_ok()).then_some(node)
    }

    /// `(connector, canonical id)` back from a key under [`Self::dlr_id`] or [`Self::dlr_at`].
    pub fn parse_dlr_id(&self, key: &str) -> Option<(String, String)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/dlr/")?;
        let rest = match rest.strip_prefix("id/") {
            Some(rest) => rest,
            None => rest.strip_prefix("at/")?.split_once('/')?.1,
        };
        let (connector, chunk) = rest.split_once('/')?;
        if connector.is_empty() || chunk.is_empty() || chunk.contains('/') {
            return None;
        }
        Some((connector.to_owned(), crate::dlr::id::from_key_chunk(chunk)?))
    }

    /// `<prefix>/dlr/ask/<node>`: where clients publish lookups for `node` to answer on their
    /// own answer key (the stream form of [`Self::dlr_at`], for clients that ask many).
    pub fn dlr_ask(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["dlr", "ask", node])
    }

    /// `<prefix>/dlr/answer/<client>/<node>`: where `node` publishes its answers to `client`'s
    /// asks.
    pub fn dlr_answer(&self, client: &str, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(client)?;
        check_chunk(node)?;
        self.build(&["dlr", "answer", client, node])
    }

    /// `<prefix>/dlr/answer/<client>/*`: every answer to `client`'s asks (what it subscribes to).
    pub fn dlr_answers(&self, client: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(client)?;
        self.build(&["dlr", "answer", client, "*"])
    }

    /// The node a [`Self::dlr_answer`] key names (`None` for any other key, or a wildcard).
    pub fn parse_dlr_answer_node<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/dlr/answer/")?;
        let (_, node) = rest.split_once('/')?;
        (check_chunk(node).is_ok()).then_some(node)
    }

    /// `<prefix>/dlr/replica/<node>`: queryable; where a node takes copies of other nodes' records.
    pub fn dlr_replica(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["dlr", "replica", node])
    }

    /// `<prefix>/dlr/restore/<holder>/<owner>`: queryable of `holder`; where `owner`, rebuilt
    /// with an empty store, takes back the copies `holder` keeps of its records.
    pub fn dlr_restore(&self, holder: &str, owner: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(holder)?;
        check_chunk(owner)?;
        self.build(&["dlr", "restore", holder, owner])
    }

    /// `<prefix>/dlr/restore/<holder>/*`: every restore asked of `holder`.
    pub fn all_dlr_restores(&self, holder: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(holder)?;
        self.build(&["dlr", "restore", holder, "*"])
    }

    /// The owner a key under [`Self::all_dlr_restores`] of `holder` asks for.
    pub fn parse_dlr_restore(&self, holder: &str, key: &str) -> Option<String> {
        self.parse_node_under(&format!("/dlr/restore/{holder}/"), key)
    }

    /// `<prefix><section><node>` back into the node name.
    fn parse_node_under(&self, section: &str, key: &str) -> Option<String> {
        let node = key.strip_prefix(&self.prefix)?.strip_prefix(section)?;
        (!node.is_empty() && !node.contains('/')).then(|| node.to_owned())
    }

    /// `<prefix>/watermark/<collector>/<node>`: what a collector has committed of a node's streams.
    pub fn watermark(&self, collector: &str, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(collector)?;
        check_chunk(node)?;
        self.build(&["watermark", collector, node])
    }

    /// `<prefix>/watermark/*/<node>`: every collector's watermarks for one node.
    pub fn watermarks_for(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["watermark", "*", node])
    }

    /// Parse a key published under [`Self::watermark`] back into `(collector, node)`.
    pub fn parse_watermark(&self, key: &str) -> Option<(String, String)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/watermark/")?;
        let (collector, node) = rest.split_once('/')?;
        let ok = |c: &str| !c.is_empty() && !c.contains('/');
        (ok(collector) && ok(node)).then(|| (collector.to_owned(), node.to_owned()))
    }

    /// Parse a key published under [`Self::stream`] back into its stream identity.
    pub fn parse_stream(&self, key: &str) -> Option<StreamId> {
        self.parse_under("/stream/", key)
    }

    fn parse_under(&self, section: &str, key: &str) -> Option<StreamId> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(section)?;
        let mut parts = rest.split('/');
        let (node, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || check_name(node).is_err() || check_chunk(name).is_err() {
            return None;
        }
        Some(StreamId { node: node.to_owned(), kind: StreamKind::from_chunk(kind)?, name: name.to_owned() })
    }

    /// `<prefix>/view/<role>/<name>`: the queryable answering which processes one process sees
    /// alive (the mesh check, [`crate::mesh`]).
    pub fn view(&self, role: Role, name: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(name)?;
        self.build(&["view", role.as_str(), name])
    }

    /// `<prefix>/view/*/*`: every process's view queryable.
    pub fn all_views(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["view", "*", "*"])
    }

    /// Parse a view key back into `(role, name)`.
    pub fn parse_view(&self, key: &str) -> Option<(Role, String)> {
        Role::parse_member(key.strip_prefix(&self.prefix)?.strip_prefix("/view/")?)
    }

    /// `<prefix>/status/<role>/<name>`: the queryable answering one process's status document
    /// ([`crate::status::ProcessStatus`]).
    pub fn status(&self, role: Role, name: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(name)?;
        self.build(&["status", role.as_str(), name])
    }

    /// `<prefix>/status/*/*`: every process's status queryable.
    pub fn all_status(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["status", "*", "*"])
    }

    /// Parse a status key back into `(role, name)`.
    pub fn parse_status(&self, key: &str) -> Option<(Role, String)> {
        Role::parse_member(key.strip_prefix(&self.prefix)?.strip_prefix("/status/")?)
    }

    /// `<prefix>/<role>/<name>`: the liveliness token of one process.
    pub fn member(&self, role: Role, name: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(name)?;
        self.build(&[role.as_str(), name])
    }

    /// `<prefix>/*/*`: every liveliness token of the cluster.
    pub fn all_members(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["*", "*"])
    }

    /// Parse a liveliness key back into `(role, name)`.
    pub fn parse_member(&self, key: &str) -> Option<(Role, String)> {
        Role::parse_member(key.strip_prefix(&self.prefix)?.strip_prefix('/')?)
    }

    /// `<prefix>/serves/<service>/<node>`: the token of an agent that serves `service`.
    pub fn serves(&self, service: Service, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["serves", service.as_str(), node])
    }

    /// `<prefix>/serves/none/<node>`: the token of an agent that serves neither service (it
    /// declares what it serves, nothing: see [`crate::Membership::watch_service`]).
    pub fn serves_none(&self, node: &str) -> Result<OwnedKeyExpr, KeyError> {
        check_chunk(node)?;
        self.build(&["serves", SERVES_NONE, node])
    }

    /// `<prefix>/**`: every liveliness token of the cluster, services' included.
    pub fn all_tokens(&self) -> Result<OwnedKeyExpr, KeyError> {
        self.build(&["**"])
    }

    /// Parse a key of [`KeySpace::serves`] or [`KeySpace::serves_none`] back into the service's
    /// chunk (`limits`, `dlr`, `none`) and the agent's name.
    pub fn parse_serves<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/serves/")?;
        let (service, name) = rest.split_once('/')?;
        (!service.is_empty() && !name.is_empty() && !name.contains('/')).then_some((service, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks() -> KeySpace {
        KeySpace::new("sb/test").unwrap()
    }

    #[test]
    fn a_service_token_is_parsed_back() {
        let k = ks();
        let key = k.serves(Service::Dlr, "gw1").unwrap();
        assert_eq!(key.as_str(), "sb/test/serves/dlr/gw1");
        assert_eq!(k.parse_serves(key.as_str()), Some(("dlr", "gw1")));
        assert_eq!(k.parse_serves(k.serves_none("gw2").unwrap().as_str()), Some(("none", "gw2")));
        assert_eq!(k.parse_serves("sb/test/serves/dlr/gw1/x"), None);
        assert_eq!(k.parse_serves("sb/test/node/gw1"), None);
        // Not a member of the cluster's tokens (`<prefix>/*/*`): a different depth.
        assert_eq!(k.parse_member(key.as_str()), None);
    }

    #[test]
    fn node_names_are_key_chunks_without_whitespace() {
        for ok in ["gw1", "gw-1.example", "n_0"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "bad name", "gw1\t", "gw\u{7}", "a/b", "@gw", "a|b", "a;b", "a=b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(crate::tls::Identity::new(crate::tls::IdRole::Agent, "bad name").is_err());
    }

    #[test]
    fn stream_ids_round_trip_through_their_text_forms() {
        let id = StreamId::log("gw1", "app");
        assert_eq!(id.to_string(), "gw1/log/app");
        assert_eq!("gw1/log/app".parse::<StreamId>().unwrap(), id);
        assert_eq!(id.local(), "log/app");
        assert_eq!(StreamId::parse_local("gw1", "log/app"), Some(id.clone()));
        for bad in ["gw1/log", "gw1/metric/app", "gw1/log/a/b", "/log/app", "gw1/log/", "g*/log/app"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad}");
        }
        assert_eq!(StreamId::parse_local("gw1", "app"), None);
        let json = serde_json::to_string(&std::collections::BTreeMap::from([(id.clone(), 1)])).unwrap();
        assert_eq!(json, r#"{"gw1/log/app":1}"#);
        let back: std::collections::BTreeMap<StreamId, u64> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_keys().next(), Some(id));
    }

    #[test]
    fn stream_keys_round_trip() {
        let id = StreamId { node: "gw1".into(), kind: StreamKind::Log, name: "smsc".into() };
        let key = ks().stream(&id).unwrap();
        assert_eq!(key.as_str(), "sb/test/stream/gw1/log/smsc");
        assert_eq!(ks().parse_stream(key.as_str()), Some(id.clone()));
        assert!(ks().all_streams(StreamKind::Log).unwrap().intersects(&key));
        let replay = ks().replay(&id).unwrap();
        assert_eq!(replay.as_str(), "sb/test/replay/gw1/log/smsc");
        assert_eq!(ks().parse_replay(replay.as_str()), Some(id.clone()));
        assert!(ks().replay_all_of("gw1", StreamKind::Log).unwrap().intersects(&replay));
        assert_eq!(ks().parse_head(ks().head("gw1").unwrap().as_str()), Some("gw1".into()));
        assert!(ks().watermarks_for("gw1").unwrap().intersects(&ks().watermark("c1", "gw1").unwrap()));
    }

    #[test]
    fn watermark_keys_round_trip() {
        let k = ks();
        let key = k.watermark("c1", "gw1").unwrap();
        assert_eq!(k.parse_watermark(key.as_str()), Some(("c1".into(), "gw1".into())));
        assert_eq!(k.parse_watermark(k.head("gw1").unwrap().as_str()), None);
    }

    #[test]
    fn dlr_keys_round_trip() {
        let key = ks().dlr_id("smsc-a", "a/b 1").unwrap();
        assert_eq!(key.as_str(), "sb/test/dlr/id/smsc-a/a%2Fb%201");
        assert_eq!(ks().parse_dlr_id(key.as_str()), Some(("smsc-a".into(), "a/b 1".into())));
        assert!(ks().all_dlr_ids().unwrap().intersects(&key));
        assert!(!ks().all_dlr_ids().unwrap().intersects(&ks().dlr_replica("gw1").unwrap()));
        let restore = ks().dlr_restore("gw1", "gw2").unwrap();
        assert!(ks().all_dlr_restores("gw1").unwrap().intersects(&restore));
        assert!(!ks().all_dlr_restores("gw2").unwrap().intersects(&restore));
        assert_eq!(ks().parse_dlr_restore("gw1", restore.as_str()).as_deref(), Some("gw2"));
        assert_eq!(ks().parse_dlr_restore("gw2", restore.as_str()), None);
        assert!(ks().dlr_id("a/b", "1").is_err());
        assert_eq!(ks().parse_dlr_id("sb/test/dlr/id/smsc-a"), None);
        let at = ks().dlr_at("gw2", "smsc-a", "a/b 1").unwrap();
        assert_eq!(at.as_str(), "sb/test/dlr/at/gw2/smsc-a/a%2Fb%201");
        assert_eq!(ks().parse_dlr_id(at.as_str()), Some(("smsc-a".into(), "a/b 1".into())));
        assert!(ks().all_dlr_at("gw2").unwrap().intersects(&at));
        assert!(!ks().all_dlr_at("gw1").unwrap().intersects(&at));
        assert!(!ks().all_dlr_ids().unwrap().intersects(&at));
        assert_eq!(ks().parse_dlr_id("sb/test/dlr/at/gw2/smsc-a"), None);
        assert_eq!(ks().parse_dlr_id("sb/test/dlr/id/smsc-a/%zz"), None);
        // Every node's lookup reaches each node's own queryable, which replies on its own key.
        let every = ks().dlr_at_every("smsc-a", "a/b 1").unwrap();
        assert_eq!(every.as_str(), "sb/test/dlr/at/*/smsc-a/a%2Fb%201");
        assert!(ks().all_dlr_at("gw2").unwrap().intersects(&every) && every.intersects(&at));
        assert_eq!(ks().parse_dlr_id(every.as_str()), Some(("smsc-a".into(), "a/b 1".into())));
        assert_eq!(ks().parse_dlr_at_node(at.as_str()), Some("gw2"));
        assert_eq!(ks().parse_dlr_at_node(every.as_str()), None);
        assert_eq!(ks().parse_dlr_at_node(key.as_str()), None);
        assert!(ks().is_dlr_at(every.as_str()) && ks().is_dlr_at(at.as_str()) && !ks().is_dlr_at(key.as_str()));
        let (ask, answer) = (ks().dlr_ask("gw2").unwrap(), ks().dlr_answer("gw1.c0ffee", "gw2").unwrap());
        assert_eq!((ask.as_str(), answer.as_str()), ("sb/test/dlr/ask/gw2", "sb/test/dlr/answer/gw1.c0ffee/gw2"));
        let answers = ks().dlr_answers("gw1.c0ffee").unwrap();
        assert!(answers.intersects(&answer) && !answers.intersects(&ks().dlr_answer("gw1.beef", "gw2").unwrap()));
        assert_eq!(ks().parse_dlr_answer_node(answer.as_str()), Some("gw2"));
        assert_eq!(ks().parse_dlr_answer_node(answers.as_str()), None);
        assert_eq!(ks().parse_dlr_answer_node("sb/test/dlr/answer/gw1.c0ffee"), None);
        for other in [ks().all_dlr_ids().unwrap(), ks().all_dlr_at("gw2").unwrap()] {
            assert!(!other.intersects(&ask) && !other.intersects(&answer));
        }
        assert!(ks().dlr_answer("a/b", "gw2").is_err() && ks().dlr_answer("**", "gw2").is_err());
        assert!(ks().dlr_answer("gw1.c0ffee", "*").is_err() && ks().dlr_answers("*").is_err());
    }

    #[test]
    fn foreign_and_malformed_keys_do_not_parse() {
        assert_eq!(ks().parse_stream("sb/other/stream/gw1/log/smsc"), None);
        assert_eq!(ks().parse_stream("sb/test/stream/gw1/metric/x"), None);
        assert_eq!(ks().parse_stream("sb/test/stream/gw1/log/a/b"), None);
        assert_eq!(ks().parse_stream("sb/test/stream/g w1/log/app"), None, "a node name no process can have");
        assert_eq!(ks().parse_stream("sb/test/stream/gw|1/log/app"), None);
        assert_eq!(Role::parse_member("node/a b"), None);
        assert_eq!(Role::parse_member("node/a=b"), None);
        assert_eq!(ks().parse_member("sb/test/node"), None);
        assert_eq!(ks().parse_member("sb/test/node/gw1"), Some((Role::Agent, "gw1".into())));
        assert_eq!(ks().parse_member("sb/test/collector/c1"), Some((Role::Collector, "c1".into())));
        assert_eq!(ks().view(Role::Agent, "gw1").unwrap().as_str(), "sb/test/view/node/gw1");
        assert_eq!(ks().parse_view("sb/test/view/collector/c1"), Some((Role::Collector, "c1".into())));
        assert_eq!(ks().parse_view("sb/test/view/collector/c1/x"), None);
    }

    #[test]
    fn names_with_metacharacters_are_refused() {
        for bad in ["", "a/b", "a*", "$x", "q?", "#", "@admin"] {
            assert!(check_chunk(bad).is_err(), "{bad:?}");
        }
        let id = StreamId { node: "gw*".into(), kind: StreamKind::Log, name: "x".into() };
        assert!(ks().stream(&id).is_err());
        assert!(KeySpace::new("sb/**").is_err());
    }
}
