//! Bus configuration: how a process joins the cluster's zenoh bus.
//!
//! [`BusConfig`] is the `[bus]` table of every Switchboard config file (agent, collector). It names
//! the cluster and this process, picks the zenoh mode and endpoints, and is turned into a zenoh
//! session by [`crate::session::open`]. Every field has a documented default, unknown fields are
//! rejected, and [`BusConfig::validate`] runs before a session is opened. [`read_file`] reads a
//! process's whole config file and [`FileError`] says what is wrong with one.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keys::{check_chunk, check_name, KeyError};

/// Largest message a process takes from the bus (a log batch, a replica batch, a reply), in
/// bytes: 64 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How this process takes part in the zenoh bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A full peer: connects to the endpoints it is given and accepts connections on `listen`.
    #[default]
    Peer,
    /// A client of one or more zenoh routers (or peers) named in `connect`; never accepts
    /// connections. Use this for large clusters behind routers.
    Client,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Peer => "peer",
            Mode::Client => "client",
        }
    }
}

/// The `[bus]` table: cluster identity and zenoh session settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Name of the cluster; all key expressions live under `sb/<cluster>` unless `prefix` is set.
    /// Default: `"default"`.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Name of this process on the bus (a node agent uses the gateway node's name). Must be
    /// unique in the cluster among processes of the same role. Default: the host name.
    #[serde(default = "default_node")]
    pub node: String,
    /// Key expression prefix for every Switchboard key. Default: `sb/<cluster>`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `peer` (default) or `client`.
    #[serde(default)]
    pub mode: Mode,
    /// zenoh endpoints to accept connections on, e.g. `["tcp/0.0.0.0:7447"]`. Default: none for
    /// command-line tools; an agent or collector in `peer` mode that names none listens on the
    /// local address it uses to reach its first `connect` endpoint, on a free port
    /// ([`BusConfig::effective_listen`]), so that the peers it meets through gossip can connect to
    /// it: zenoh peers do not route for each other, so every agent must be reachable by the others.
    #[serde(default)]
    pub listen: Vec<String>,
    /// zenoh endpoints to connect to, e.g. `["tcp/10.0.0.5:7447"]`. Default: none.
    #[serde(default)]
    pub connect: Vec<String>,
    /// Find peers by UDP multicast scouting on the local network. Default: `false`: production
    /// clusters name their endpoints, and a test or demo on loopback must not send multicast.
    #[serde(default)]
    pub scouting: bool,
    /// Learn the other peers' endpoints from the peers this process connects to, and connect to
    /// them (zenoh gossip), so that naming one seed endpoint is enough. Default: `true`. Turn it
    /// off where every link must go exactly where `connect` says.
    #[serde(default = "yes")]
    pub gossip: bool,
    /// zenoh lease in milliseconds: a peer that stops answering (hung, or cut off by the network)
    /// is dropped, and its liveliness token vanishes, after this long. Default: `3000` (zenoh's
    /// own default of 10 s is too slow to hand a dead node's share of a limit to the others).
    /// A process that exits or is killed is seen within milliseconds whatever the lease.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Mutual TLS (`[bus.tls]`: `ca`, `cert`, `key`, `members`; docs/security.md). With it, every
    /// endpoint must be `tls/...` (TLS over TCP) or `quic/...` and the access policy is in force.
    /// Default: none (plain TCP, for a lab; the process warns).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Compress what this process sends on a link with LZ4, batch by batch, where the process at
    /// the other end also offers it (zenoh's own negotiation: a client that does not is spoken
    /// to uncompressed). Default: on when an endpoint of this process is `quic/`, where every
    /// byte saved is a share of a datagram QUIC need not encrypt, send and acknowledge; off on
    /// `tcp/` and `tls/`, where on one host it costs more than it saves. Turn it on for a link
    /// short of bandwidth (docs/architecture.md, Decisions).
    #[serde(default)]
    pub compression: Option<bool>,
}

fn yes() -> bool {
    true
}

fn default_lease_ms() -> u64 {
    3000
}

fn default_cluster() -> String {
    "default".to_owned()
}

fn default_node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| sanitize_name(h.trim()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

/// Replace characters that may not appear in a key chunk (`/ * $ ? #` and whitespace) by `_`.
pub fn sanitize_name(name: &str) -> String {
    name.chars().map(|c| if matches!(c, '/' | '*' | '$' | '?' | '#') || c.is_whitespace() { '_' } else { c }).collect()
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            cluster: default_cluster(),
            node: default_node(),
            prefix: None,
            mode: Mode::default(),
            listen: Vec::new(),
            connect: Vec::new(),
            scouting: false,
            gossip: true,
            lease_ms: default_lease_ms(),
            tls: None,
            compression: None,
        }
    }
}

/// A process's config file that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML or not the expected fields.
    #[error("invalid config {path}: {source}{hint}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: Box<toml::de::Error>,
        /// What the mistake likely is, when it is a common one (or empty).
        hint: String,
    },
    /// A semantic problem.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// The `[bus]` table is not usable.
    #[error("invalid [bus] config: {0}")]
    Bus(#[from] ConfigError),
    /// A semantic problem ([`FileError::Invalid`] or [`FileError::Bus`]) found in a file.
    #[error("invalid config {path}: {reason}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Read, parse and check the TOML config file at `path`; what `check` refuses names the file.
pub fn load_file<T: DeserializeOwned>(
    path: &Path,
    check: impl FnOnce(&T) -> Result<(), FileError>,
) -> Result<T, FileError> {
    let config = read_file(path)?;
    check(&config).map_err(|e| match e {
        FileError::Invalid(reason) => FileError::InFile { path: path.to_owned(), reason },
        FileError::Bus(e) => FileError::InFile { path: path.to_owned(), reason: format!("[bus] {e}") },
        other => other,
    })?;
    Ok(config)
}

/// Read and parse the TOML config file at `path` (the caller validates what it means).
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|source| {
        let hint = parse_hint(&source.to_string());
        FileError::Parse { path: path.to_owned(), source: Box::new(source), hint }
    })
}

/// A hint for a common mistake behind a parse error: a table that repeats written with single
/// brackets, another process's config.
fn parse_hint(error: &str) -> String {
    if error.contains("invalid type: map, expected a sequence") {
        return "hint: a table that can repeat is written with double brackets, one per item: [[source]], [[limit]], \
                [[logs.promote]], [[dlr.connector]]"
            .to_owned();
    }
    for (table, process) in [("agent", "an agent"), ("collector", "a collector")] {
        if error.contains(&format!("unknown field `{table}`")) {
            return format!("hint: [{table}] is {process}'s table: is this {process}'s config file?");
        }
    }
    String::new()
}

/// A `[bus]` table that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cluster or node name cannot be part of a key expression.
    #[error("invalid {what} {value:?}: {source}")]
    Name {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why it is not valid.
        source: KeyError,
    },
    /// The prefix is not a valid zenoh key expression without wildcards.
    #[error("invalid prefix {0:?}: it must be a key expression like `sb/prod` without wildcards")]
    Prefix(String),
    /// Client mode without anything to connect to.
    #[error("mode = \"client\" needs at least one `connect` endpoint")]
    ClientWithoutConnect,
    /// A lease too short to survive ordinary scheduling delays.
    #[error("lease_ms = {0}: use at least 500 ms")]
    Lease(u64),
    /// An endpoint that is not `<proto>/<address>`.
    #[error("invalid endpoint {0:?}: expected `<protocol>/<address>`, e.g. `tcp/127.0.0.1:7447`")]
    Endpoint(String),
    /// An endpoint of a protocol this build does not speak.
    #[error("endpoint {0:?}: unknown protocol; use tcp/, tls/ or quic/ (tls/ and quic/ with [bus.tls])")]
    Protocol(String),
    /// An endpoint without a usable `:<port>`.
    #[error(
        "endpoint {0:?}: expected `<host>:<port>` after the protocol, with a port from 1 to 65535 \
         (0 in `listen`: any free port)"
    )]
    Port(String),
    /// A `tls/` endpoint without `[bus.tls]`.
    #[error("endpoint {0:?} needs certificates but [bus.tls] is not set (ca, cert, key; see docs/security.md)")]
    TlsEndpoint(String),
    /// A plain endpoint while `[bus.tls]` is set: it would bypass the access policy.
    #[error("endpoint {0:?} is not TLS but [bus.tls] is set: use tls/<host>:<port> (or quic/) for every endpoint")]
    PlainEndpoint(String),
}

impl BusConfig {
    /// The key prefix in force: `prefix`, or `sb/<cluster>`.
    pub fn effective_prefix(&self) -> String {
        self.prefix.clone().unwrap_or_else(|| format!("sb/{}", self.cluster))
    }

    /// The endpoints a long-running process listens on: `listen`, or, for a peer that names none,
    /// `<proto>/<local address>:<a free port>` where the local address is the one this host uses
    /// to reach the first `connect` endpoint (found with a route lookup; nothing is sent) and the
    /// protocol is that endpoint's. Empty when neither is given or the endpoint cannot be resolved.
    pub fn effective_listen(&self) -> Vec<String> {
        if !self.listen.is_empty() || self.mode != Mode::Peer {
            return self.listen.clone();
        }
        self.connect.first().and_then(|e| local_endpoint_towards(e)).into_iter().collect()
    }

    /// A warning for a process that names neither a `listen` nor a `connect` endpoint: nothing
    /// can reach it and it reaches nothing (multicast scouting aside).
    pub fn unreachable_warning(&self) -> Option<&'static str> {
        (self.listen.is_empty() && self.connect.is_empty() && !self.scouting).then_some(
            "[bus] names no `listen` or `connect` endpoint: no other process can reach this one, nor it them (set \
             `listen`, e.g. [\"tcp/0.0.0.0:7447\"], or `connect`)",
        )
    }

    /// Check names, prefix and endpoints; called before a session is opened.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name(&self.cluster).map_err(|source| ConfigError::Name {
            what: "cluster name",
            value: self.cluster.clone(),
            source,
        })?;
        check_name(&self.node).map_err(|source| ConfigError::Name {
            what: "node name",
            value: self.node.clone(),
            source,
        })?;
        let prefix = self.effective_prefix();
        if prefix.split('/').any(|c| check_chunk(c).is_err()) {
            return Err(ConfigError::Prefix(prefix));
        }
        if self.lease_ms < 500 {
            return Err(ConfigError::Lease(self.lease_ms));
        }
        if self.mode == Mode::Client && self.connect.is_empty() {
            return Err(ConfigError::ClientWithoutConnect);
        }
        let listen = self.listen.iter().map(|e| (e, true));
        for (e, listening) in listen.chain(self.connect.iter().map(|e| (e, false))) {
            let secure = check_endpoint(e, listening)?;
            if secure && self.tls.is_none() {
                return Err(ConfigError::TlsEndpoint(e.clone()));
            }
            if !secure && self.tls.is_some() {
                return Err(ConfigError::PlainEndpoint(e.clone()));
            }
        }
        Ok(())
    }

    /// Whether this process offers LZ4 on its links: `compression`, by default on `quic/` only.
    pub fn compresses(&self) -> bool {
        self.compression.unwrap_or_else(|| self.listen.iter().chain(&self.connect).any(|e| e.starts_with("quic/")))
    }

    /// The zenoh configuration for this bus config, as a JSON5 document zenoh understands.
    pub(crate) fn zenoh_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode.as_str(),
            "listen": { "endpoints": self.listen },
            // Reconnect fast (100 ms, backing off to 1 s): a restarted collector or agent is
            // back on the bus within a second, not after zenoh's default 4 s back-off.
            "connect": {
                "endpoints": self.connect,
                "retry": { "period_init_ms": 100, "period_max_ms": 1000, "period_increase_factor": 2.0 },
            },
            "scouting": {
                // How long opening a session waits for its first connections.
                "delay": 200,
                "multicast": { "enabled": self.scouting },
                "gossip": { "enabled": self.gossip },
            },
            // Keep-alives four times per lease, as zenoh does by default. A message larger than
            // MAX_MESSAGE_BYTES is dropped by the receiver before it is reassembled (zenoh's
            // default, 1 GiB, would let any peer make a process hold that much).
            "transport": {
                "link": {
                    "tx": { "lease": self.lease_ms, "keep_alive": 4 },
                    "rx": { "max_message_size": MAX_MESSAGE_BYTES },
                },
                // A compressed batch is inflated into a buffer of the link's batch size (64 KiB):
                // a peer cannot make it larger.
                "unicast": { "compression": { "enabled": self.compresses() } },
            },
        })
    }
}

/// The first of `settings` (`("table.key", value)`) whose value is 0, as an error text that
/// names it: for settings that must be at least 1.
pub fn first_zero(settings: &[(&str, u64)]) -> Result<(), String> {
    match settings.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => Err(format!("{key} = 0: it must be at least 1")),
        None => Ok(()),
    }
}

/// Check that `program`, the first word of setting `key` (a command such as a reload or a
/// notify hook), names an executable file: a path as given, a bare name through `PATH` (as the
/// command is started). The error names the setting and why.
pub fn check_program(key: &str, program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.is_empty() {
        return Err(format!("{key}: the program may not be empty"));
    }
    if !program.contains('/') {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| executable(&d.join(program))));
        return if found { Ok(()) } else { Err(format!("{key}: program {program:?} not found in PATH")) };
    }
    match std::fs::metadata(program) {
        Err(_) => Err(format!("{key}: program {program:?} not found")),
        Ok(_) if !executable(Path::new(program)) => Err(format!("{key}: {program:?} is not an executable file")),
        Ok(_) => Ok(()),
    }
}

/// Replace the file at `path` with `bytes` whole or not at all: write a temporary file beside
/// it, sync it, rename it over `path` and sync the directory (so the rename outlives a power
/// loss). A crash leaves the old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Check that directory setting `key` (`path`) is a directory this process may write in, or
/// can be made one: the nearest part of it that exists must be a directory it may write in,
/// which it tries by making and removing an empty directory there (permission bits do not
/// stop root, but a read-only or special file system such as `/proc` does). Nothing is left
/// behind; the error names the setting.
pub fn check_dir(key: &str, path: &Path) -> Result<(), String> {
    use rustix::fs::{access, Access};
    let mut at = Some(path);
    while let Some(p) = at {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                let unwritable = |e: &dyn std::fmt::Display| {
                    format!("{key} = {:?}: {} is not writable by this process: {e}", path.display(), p.display())
                };
                access(p, Access::WRITE_OK | Access::EXEC_OK).map_err(|e| unwritable(&e))?;
                let probe = p.join(format!(".switchboard-check-{}", std::process::id()));
                std::fs::create_dir(&probe).map_err(|e| {
                    format!("{key} = {:?}: cannot make a directory in {}: {e}", path.display(), p.display())
                })?;
                return std::fs::remove_dir(&probe).map_err(|e| unwritable(&e));
            }
            Ok(_) => return Err(format!("{key} = {:?}: {} is not a directory", path.display(), p.display())),
            Err(_) => at = p.parent().filter(|parent| !parent.as_os_str().is_empty()),
        }
    }
    Ok(())
}

/// The link protocols this build speaks: plain TCP, and TLS or QUIC (both with certificates).
pub const PROTOCOLS: [&str; 3] = ["tcp", "tls", "quic"];

/// Check that `endpoint` is `<protocol>/<host>:<port>` (zenoh's `?metadata` and `#config`
/// suffixes allowed) with a protocol of [`PROTOCOLS`] and a port of 1-65535, or 0 (any free port)
/// where `listening`; true for a protocol that needs certificates.
pub fn check_endpoint(endpoint: &str, listening: bool) -> Result<bool, ConfigError> {
    let bad = || ConfigError::Endpoint(endpoint.to_owned());
    let (proto, address) = endpoint_parts(endpoint).ok_or_else(bad)?;
    if proto.is_empty() || address.is_empty() {
        return Err(bad());
    }
    if !PROTOCOLS.contains(&proto) {
        return Err(ConfigError::Protocol(endpoint.to_owned()));
    }
    let port = match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && host != "[]" => port.parse::<u16>().ok(),
        _ => None,
    };
    match port {
        Some(0) if !listening => Err(ConfigError::Port(endpoint.to_owned())),
        Some(_) => Ok(proto != "tcp"),
        None => Err(ConfigError::Port(endpoint.to_owned())),
    }
}

/// An endpoint's protocol and address: `tcp/10.0.0.9:7447?x#y` is `("tcp", "10.0.0.9:7447")`
/// (zenoh's `?metadata` and `#config` suffixes left out); `None` without a `/`.
pub fn endpoint_parts(endpoint: &str) -> Option<(&str, &str)> {
    let (proto, rest) = endpoint.split_once('/')?;
    Some((proto, rest.split(['?', '#']).next().unwrap_or_default()))
}

/// `<proto>/<ip>:<port>` for the local address that reaches `endpoint` (`<proto>/<host>:<port>`)
/// and a port free there now (of UDP for `quic/` and `udp/`, of TCP otherwise), so that the
/// endpoint can be written down for tools ([`LISTENING_FILE`]).
fn local_endpoint_towards(endpoint: &str) -> Option<String> {
    use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
    let (proto, addr) = endpoint_parts(endpoint)?;
    let remote = addr.to_socket_addrs().ok()?.next()?;
    // A connected UDP socket only asks the routing table which source address it would use.
    let socket = UdpSocket::bind(if remote.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).ok()?;
    socket.connect(remote).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    let here = SocketAddr::new(ip, 0);
    let port = match proto {
        "quic" | "udp" => UdpSocket::bind(here).and_then(|s| s.local_addr()),
        _ => TcpListener::bind(here).and_then(|s| s.local_addr()),
    }
    .map_or(0, |a| a.port());
    Some(format!("{proto}/{}", SocketAddr::new(ip, port)))
}

/// The file in a long-running process's data directory that names the endpoints it listens on,
/// one per line, written at start: with a `listen` the process chose itself, a tool given the
/// process's config file (`switchboard status --config`) reaches it there.
pub const LISTENING_FILE: &str = "bus.listen";

/// The file in an agent's data directory that names the endpoints of the cluster's other
/// processes as last seen, one per line: the agent connects to them at its next start besides
/// its `connect` list, so that it finds the others while every collector is down.
pub const PEERS_FILE: &str = "bus.peers";

/// Most endpoints [`PEERS_FILE`] keeps.
pub const MAX_PEERS: usize = 64;

/// Write [`LISTENING_FILE`] in `dir` (replacing it whole).
pub fn write_listening(dir: &std::path::Path, endpoints: &[String]) -> std::io::Result<()> {
    write_endpoints(&dir.join(LISTENING_FILE), endpoints)
}

/// The endpoints [`LISTENING_FILE`] in `dir` names (none if it is absent or unreadable); at most
/// 16, each up to 256 bytes.
pub fn read_listening(dir: &std::path::Path) -> Vec<String> {
    read_endpoints(&dir.join(LISTENING_FILE), 16)
}

/// Write [`PEERS_FILE`] in `dir` (replacing it whole).
pub fn write_peers(dir: &std::path::Path, endpoints: &[String]) -> std::io::Result<()> {
    write_endpoints(&dir.join(PEERS_FILE), endpoints)
}

/// The endpoints [`PEERS_FILE`] in `dir` names that are endpoints (none if it is absent); at most
/// [`MAX_PEERS`].
pub fn read_peers(dir: &std::path::Path) -> Vec<String> {
    read_endpoints(&dir.join(PEERS_FILE), MAX_PEERS).into_iter().filter(|e| is_endpoint(e)).collect()
}

fn write_endpoints(path: &std::path::Path, endpoints: &[String]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, endpoints.iter().map(|e| format!("{e}\n")).collect::<String>())?;
    std::fs::rename(tmp, path)
}

fn read_endpoints(path: &std::path::Path, most: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&text[..text.len().min(most * 260)])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.len() <= 256)
        .take(most)
        .map(str::to_owned)
        .collect()
}

/// Whether `e` is `<proto>/<host>:<port>` with a protocol the bus speaks.
pub fn is_endpoint(e: &str) -> bool {
    let Some((proto, addr)) = e.split_once('/') else { return false };
    let addr = addr.split(['#', '?']).next().unwrap_or_default();
    matches!(proto, "tcp" | "tls" | "quic")
        && e.len() <= 256
        && addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// The endpoints other processes can reach this one at: its listen endpoints, an unspecified
/// address (`0.0.0.0`, `[::]`) replaced by the address of the interface towards its first
/// `connect` endpoint (left out when there is none).
pub fn advertised(listen: &[String], connect: &[String]) -> Vec<String> {
    use std::net::SocketAddr;
    listen
        .iter()
        .filter_map(|e| {
            let (proto, rest) = e.split_once('/')?;
            // A host name is kept as written.
            let Ok(addr) = rest.split(['#', '?']).next()?.parse::<SocketAddr>() else { return Some(e.clone()) };
            if !addr.ip().is_unspecified() {
                return Some(e.clone());
            }
            let towards = local_endpoint_towards(connect.first()?)?;
            let ip = towards.split_once('/')?.1.parse::<SocketAddr>().ok()?.ip();
            Some(format!("{proto}/{}", SocketAddr::new(ip, addr.port())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's effective uid, from `/proc/self/status`.
    fn effective_uid() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
        uid.split_whitespace().nth(1).and_then(|u| u.parse().ok()).unwrap_or(0)
    }

    #[test]
    fn a_directory_setting_under_a_file_or_on_a_file_system_that_takes_none_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.log");
        std::fs::write(&file, "x").unwrap();
        assert!(check_dir("agent.data_dir", &dir.path().join("new/deeper")).is_ok());
        assert!(check_dir("agent.data_dir", dir.path()).is_ok());
        let err = check_dir("agent.data_dir", &file.join("sub")).unwrap_err();
        assert!(err.contains("agent.data_dir") && err.contains("app.log is not a directory"), "{err}");
        assert!(check_dir("agent.data_dir", &file).is_err());
        assert!(!dir.path().join("new").exists(), "nothing is made");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing is left behind");
        // A file system where even root makes nothing.
        if Path::new("/proc/self").is_dir() {
            let err = check_dir("agent.data_dir", Path::new("/proc/switchboard-nope")).unwrap_err();
            assert!(err.contains("cannot make a directory in /proc") || err.contains("/proc is not writable"), "{err}");
        }
        // (Run as root, the tests cannot see a directory they may not write in.)
        if effective_uid() != 0 {
            let locked = dir.path().join("locked");
            std::fs::create_dir(&locked).unwrap();
            std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
            let err = check_dir("agent.data_dir", &locked.join("sub")).unwrap_err();
            assert!(err.contains("is not writable"), "{err}");
        }
    }

    #[test]
    fn endpoints_others_can_reach_and_remembered_ones_are_checked() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let connect = v(&["tcp/127.0.0.1:7447"]);
        assert_eq!(
            advertised(&v(&["tcp/10.0.0.5:7450", "quic/gw1.example:7447"]), &connect),
            v(&["tcp/10.0.0.5:7450", "quic/gw1.example:7447"])
        );
        assert_eq!(
            advertised(&v(&["tcp/0.0.0.0:7450"]), &connect),
            v(&["tcp/127.0.0.1:7450"]),
            "the interface towards the cluster"
        );
        assert!(advertised(&v(&["tcp/0.0.0.0:7450"]), &[]).is_empty(), "no way to tell which address");
        for good in ["tcp/127.0.0.1:7447", "quic/[::1]:7447", "tls/gw1.example:7447"] {
            assert!(is_endpoint(good), "{good}");
        }
        for bad in ["udp/1.2.3.4:5", "tcp/1.2.3.4", "tcp/:7447", "tcp/a:70000", "garbage"] {
            assert!(!is_endpoint(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PEERS_FILE), "tcp/127.0.0.1:1\nnot one\n\nquic/10.0.0.1:2\n").unwrap();
        assert_eq!(read_peers(dir.path()), v(&["tcp/127.0.0.1:1", "quic/10.0.0.1:2"]));
    }

    #[test]
    fn compression_is_on_with_quic_unless_set() {
        let tls = "[tls]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\n";
        let enabled = |toml_text: &str| {
            let c: BusConfig = toml::from_str(toml_text).unwrap();
            c.zenoh_json()["transport"]["unicast"]["compression"]["enabled"].as_bool()
        };
        assert_eq!(enabled(""), Some(false));
        assert_eq!(enabled(&format!("connect = [\"tls/10.0.0.9:7447\"]\n{tls}")), Some(false));
        assert_eq!(enabled(&format!("connect = [\"quic/10.0.0.9:7447\"]\n{tls}")), Some(true));
        assert_eq!(enabled(&format!("listen = [\"quic/0.0.0.0:7447\"]\n{tls}")), Some(true));
        assert_eq!(enabled(&format!("compression = false\nconnect = [\"quic/10.0.0.9:7447\"]\n{tls}")), Some(false));
        assert_eq!(enabled("compression = true"), Some(true));
    }

    #[test]
    fn defaults_fill_an_empty_table() {
        let c: BusConfig = toml::from_str("").unwrap();
        assert_eq!(c.cluster, "default");
        assert_eq!(c.effective_prefix(), "sb/default");
        assert_eq!(c.mode, Mode::Peer);
        assert!(!c.scouting);
        assert!(!c.node.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = toml::from_str::<BusConfig>("clustre = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_names_and_endpoints_are_rejected() {
        let mut c = BusConfig { node: "a/b".into(), ..BusConfig::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Name { .. })));
        c.node = "n1".into();
        c.connect = vec!["127.0.0.1:7447".into()];
        assert!(matches!(c.validate(), Err(ConfigError::Endpoint(_))));
        c.connect.clear();
        c.mode = Mode::Client;
        assert!(matches!(c.validate(), Err(ConfigError::ClientWithoutConnect)));
        c.mode = Mode::Peer;
        c.prefix = Some("sb/**".into());
        assert!(matches!(c.validate(), Err(ConfigError::Prefix(_))));
    }

    #[test]
    fn an_endpoint_needs_a_known_protocol_and_a_port() {
        for (e, listening) in [
            ("tcp/127.0.0.1:7447", false),
            ("tcp/[::1]:7447", false),
            ("tcp/gw1.example:7447#iface=eth0", false),
            ("tcp/0.0.0.0:0", true),
            ("tls/gw1:7447?prio=1", false),
        ] {
            assert!(check_endpoint(e, listening).is_ok(), "{e}");
        }
        for e in ["foo://bar", "udp/127.0.0.1:7447", "unixsock-stream//tmp/s"] {
            assert!(matches!(check_endpoint(e, false), Err(ConfigError::Protocol(_))), "{e}");
        }
        for (e, listening) in [
            ("tcp/127.0.0.1:99999", false),
            ("tcp/127.0.0.1", true),
            ("tcp/:7447", false),
            ("tcp/127.0.0.1:0", false),
            ("tcp/127.0.0.1:x", true),
        ] {
            assert!(matches!(check_endpoint(e, listening), Err(ConfigError::Port(_))), "{e}");
        }
        assert_eq!(check_endpoint("quic/h:1", false).ok(), Some(true));
        assert_eq!(check_endpoint("tcp/h:1", false).ok(), Some(false));
    }

    #[test]
    fn a_peer_listens_where_it_reaches_its_first_endpoint() {
        let mut c = BusConfig { connect: vec!["tcp/127.0.0.1:7447".into()], ..BusConfig::default() };
        let chosen = c.effective_listen();
        let port = chosen[0].strip_prefix("tcp/127.0.0.1:").and_then(|p| p.parse::<u16>().ok());
        assert!(chosen.len() == 1 && port.is_some_and(|p| p > 0), "a free port is chosen: {chosen:?}");
        let dir = tempfile::tempdir().unwrap();
        assert!(read_listening(dir.path()).is_empty());
        write_listening(dir.path(), &chosen).unwrap();
        assert_eq!(read_listening(dir.path()), chosen);
        c.listen = vec!["tcp/127.0.0.1:9000".into()];
        assert_eq!(c.effective_listen(), vec!["tcp/127.0.0.1:9000".to_owned()]);
        c.listen.clear();
        c.mode = Mode::Client;
        assert!(c.effective_listen().is_empty());
        c.mode = Mode::Peer;
        c.connect = vec!["tcp/[::1]:7447".into()];
        // An IPv6 loopback may be absent in a container; when present it is used.
        assert!(c.effective_listen().iter().all(|e| e.starts_with("tcp/[::1]:") && !e.ends_with(":0")));
        c.connect.clear();
        assert!(c.effective_listen().is_empty());
    }

    #[test]
    fn sanitize_replaces_key_metacharacters() {
        assert_eq!(sanitize_name("gw 1/a*b"), "gw_1_a_b");
    }
}
