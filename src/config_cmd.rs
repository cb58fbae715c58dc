//! `switchboard config push|log|show|diff|rollback|status|resolve`: the cluster's configuration
//! repository (docs/config-repository.md).
//!
//! The command joins the bus as a short-lived peer, reads every node's repository state
//! ([`ClusterRepo`]), and for the commands that make a revision pushes it
//! ([`switchboard_bus::repo::client::push`]) and waits until every node applied it or said why not.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use switchboard_bus::keys::KeySpace;
use switchboard_bus::repo::client::{push, wait_applied, ClusterRepo, NewRevision, Outcome};
use switchboard_bus::repo::tree::LIMITS_FILE;
use switchboard_bus::repo::{changes, short, tree, Change, Contents, FileEntry, Files, Revision, Summary};

use crate::limits_cmd::{open, BusArgs};

/// How long to wait for the nodes' first answers.
pub const PATIENCE: Duration = Duration::from_secs(3);

/// Options of every command that makes a revision.
#[derive(Debug, Args)]
pub struct MakeArgs {
    /// Why (kept in the log).
    #[arg(long, short, default_value = "")]
    pub message: String,
    /// Who makes it. Default: the identity of the TLS certificate, else $USER, else $LOGNAME,
    /// else this process's user in /etc/passwd.
    #[arg(long, value_parser = parse_author)]
    pub author: Option<String>,
    /// How long to wait for every node to apply it.
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_timeout)]
    pub timeout: Duration,
    /// How to reach the bus.
    #[command(flatten)]
    pub bus: BusArgs,
}

/// The `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Publish a directory tree as the next revision; every node applies its files.
    ///
    /// The tree is laid out in layers: `global/` (every node), `default/` (nodes of no named
    /// subcluster), `<subcluster>/`, `<node>/` (one node); a node reads its files in that order, a
    /// later layer winning. Only files that changed travel. `.git` directories are skipped; a file
    /// at the top (in no layer) or a symbolic link is refused. `global/limits.toml` holds the
    /// cluster's limits: when the tree has none, the current one is kept; an empty one removes
    /// every limit.
    ///
    ///   switchboard config push ./cluster-config -m "raise smpp window"
    #[command(verbatim_doc_comment)]
    Push {
        /// The tree.
        dir: PathBuf,
        /// Show what would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Make a revision even when the tree is the head's: nodes that did not apply the head
        /// (a reload that failed for a reason outside the tree, since fixed) apply it as a new
        /// revision.
        #[arg(long)]
        force: bool,
        /// Push only if the head is still this revision (its number, or the start of its id,
        /// 4+ hex digits): a tree prepared on revision 12 is not pushed over a 13 another
        /// operator pushed meanwhile, whose changes it would undo. Without it the tree replaces
        /// whatever the head is.
        #[arg(long, value_name = "REVISION")]
        expect_head: Option<String>,
        /// What every revision-making command takes.
        #[command(flatten)]
        make: MakeArgs,
    },
    /// List the revisions, newest first: number, id, when, who, why, files changed.
    Log {
        /// At most this many.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// How to reach the bus.
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Show a revision's files, or one file's content.
    Show {
        /// The revision: `head`, a number, or the start of an id (4+ hex digits).
        revision: String,
        /// A path in the repository (e.g. `global/limits.toml`): print its content.
        path: Option<String>,
        /// How to reach the bus.
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Show what changed from one revision to another (files, and the lines of text files).
    Diff {
        /// The earlier revision: `head`, a number, or the start of an id (4+ hex digits).
        from: String,
        /// The later revision, named the same way. Default: head.
        #[arg(default_value = "head")]
        to: String,
        /// How to reach the bus.
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Make a new revision whose tree is that of an earlier one (keeping the current
    /// global/limits.toml if that tree has none).
    Rollback {
        /// The revision to go back to: a number, or the start of an id (4+ hex digits).
        revision: String,
        /// What every revision-making command takes.
        #[command(flatten)]
        make: MakeArgs,
    },
    /// Each node's revision, local edits, failed reloads, and conflicts with both sides' changes.
    ///
    /// Exit code: 0 every node applied the one head; 1 a problem is listed (a conflict, a node
    /// behind or blocked, local edits); 2 no node answered (or --config cannot be read).
    Status {
        /// Print the joined states as JSON.
        #[arg(long)]
        json: bool,
        /// How to reach the bus.
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Settle a conflict: one revision that follows every head, with the tree of one of them
    /// (`--take <revision>`) or of a directory (`<dir>`); a tree without global/limits.toml
    /// keeps the newest head's.
    #[command(group(clap::ArgGroup::new("side").required(true).args(["take", "dir"])))]
    Resolve {
        /// Keep this head's tree: the start of its id (4+ hex digits; `config status` lists both).
        #[arg(long)]
        take: Option<String>,
        /// Or push this directory as the settled tree.
        dir: Option<PathBuf>,
        /// What every revision-making command takes.
        #[command(flatten)]
        make: MakeArgs,
    },
}

/// Read a directory into a tree of entries and contents.
pub fn read_tree(dir: &Path) -> Result<(Files, Contents)> {
    // The error names the file or directory it could not read.
    let files = tree::read_dir(dir)?;
    let mut entries = BTreeMap::new();
    let mut contents = BTreeMap::new();
    for (path, bytes) in files {
        let e = FileEntry::of(&bytes);
        contents.insert(e.sha256.clone(), bytes);
        entries.insert(path, e);
    }
    Ok((entries, contents))
}

/// On a bus with TLS, only an admin's certificate may push (docs/security.md): the nodes' policy
/// drops anyone else's push without a word, so say it here instead of waiting for nodes that
/// will never apply it.
pub fn require_admin(bus: &BusArgs) -> Result<()> {
    let Some(tls) = bus.bus_config()?.tls else { return Ok(()) };
    let identity = switchboard_bus::tls::load(&tls, None)?.identity;
    if identity.role != switchboard_bus::tls::IdRole::Admin {
        bail!(
            "{} is the certificate of {identity}: pushing a revision needs an admin's certificate \
             (`switchboard certs issue <name> --role admin`), which the nodes' access policy requires",
            tls.cert.display()
        );
    }
    Ok(())
}

/// `--author`: a name, not empty and on one line.
pub(crate) fn parse_author(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("an author is a name: leave --author out for the certificate's identity or $USER".into());
    }
    if s.chars().any(char::is_control) {
        return Err("an author is one line of text, without control characters".into());
    }
    Ok(s.to_owned())
}

/// An author or a message as printed: control characters (a newline, an escape sequence)
/// written out as escapes, so a revision's text is one line of the output and cannot draw on
/// the terminal.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect::<String>()
        .into()
}

fn author(make: &MakeArgs) -> String {
    if let Some(a) = &make.author {
        return a.clone();
    }
    let tls = make.bus.bus_config().ok().and_then(|c| c.tls);
    if let Some(id) = tls.and_then(|t| switchboard_bus::tls::load(&t, None).ok()).map(|c| c.identity.to_string()) {
        return id;
    }
    named_in(std::env::var("USER").ok(), std::env::var("LOGNAME").ok()).unwrap_or_else(user_of_this_process)
}

/// The author `$USER`, else `$LOGNAME`, names: one that is set to nothing (or spaces) names no
/// one.
fn named_in(user: Option<String>, logname: Option<String>) -> Option<String> {
    [user, logname].into_iter().flatten().find(|name| !name.trim().is_empty())
}

/// The name of this process's user from `/etc/passwd` (a service or a container may set no
/// `$USER`), else `uid <n>`.
fn user_of_this_process() -> String {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else { return "unknown".into() };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == uid.to_string()).then(|| name.to_owned())
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The one head, or an error that says how to settle the conflict.
pub fn single_head(repo: &ClusterRepo) -> Result<Option<&Summary>> {
    match repo.heads().as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => bail!(
            "the repository has {} heads, made apart: {}. Run `switchboard config status` to see both sides, then \
             `switchboard config resolve --take <revision>` or `switchboard config resolve <dir>`",
            many.len(),
            many.iter().map(|s| s.label()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Fail with a clear message when no node answered.
pub fn nodes_or_fail(repo: &ClusterRepo, keys: &KeySpace, bus: &BusArgs) -> Result<()> {
    if repo.states.is_empty() {
        let to = bus.bus_config().map(|c| c.connect.join(", ")).unwrap_or_default();
        bail!(
            "no node answered on {}/config/state/*: is an agent of this cluster running and reachable at {to}? {}{}",
            keys.prefix(),
            crate::limits_cmd::CLUSTER_HINT,
            if repo.errors.is_empty() { String::new() } else { format!(" ({})", repo.errors.join("; ")) }
        );
    }
    Ok(())
}

/// A command's session on the bus and the repository as the nodes answered.
pub struct Conn {
    /// The session.
    pub session: zenoh::Session,
    /// The key space.
    pub keys: KeySpace,
    /// Every node's state, joined.
    pub repo: ClusterRepo,
}

/// The nodes the cluster saw leave and that are not back (their names, and since when), from the
/// processes' own views: a node that is down answers nothing of the repository.
pub(crate) async fn down_nodes(session: &zenoh::Session, keys: &KeySpace) -> BTreeMap<String, NodeSeen> {
    let Ok(snap) = switchboard_bus::status::fetch(session, keys, Duration::from_secs(1)).await else {
        return BTreeMap::new();
    };
    let cluster = switchboard_bus::status::cluster::assemble(&snap);
    cluster
        .nodes
        .into_iter()
        .map(|n| (n.name, if n.alive { NodeSeen::Silent } else { NodeSeen::Down(n.gone_since_ms) }))
        .collect()
}

/// Say, under a push's outcome, each node the cluster knows of that is not among `answered`:
/// one down may run apart from these (a partition), and a push made there meets this one as a
/// conflict once they are linked again; one alive may not be linked to this tool.
pub(crate) async fn say_unanswered(session: &zenoh::Session, keys: &KeySpace, answered: &BTreeSet<String>) {
    for (node, seen) in down_nodes(session, keys).await.into_iter().filter(|(n, _)| !answered.contains(n)) {
        match seen {
            NodeSeen::Down(since) => out!(
                "  {}: it takes this revision when it starts or resumes; if it runs apart from these nodes (a \
                 partition), a revision pushed there meets this one as a conflict when they are linked again",
                down_text(&node, since)
            ),
            NodeSeen::Silent => out!("  {node:<24} {SILENT}"),
        }
    }
}

/// What a node alive on the bus that does not answer may be.
pub(crate) const SILENT: &str = "is on the bus but did not answer: stopped just now, hung, not linked to this tool \
     (with `gossip = false`, give its endpoint with another --connect), or running without [cluster_config]";

/// A node the cluster knows of that did not answer a push.
pub(crate) enum NodeSeen {
    /// Gone (since when, if known).
    Down(Option<u64>),
    /// Still alive on the bus, not answering: stopped or killed just now (its name is held until
    /// the bus lease runs out), or hung.
    Silent,
}

/// `gw3 is down (gone since 12:00:01, 5m ago)`.
pub(crate) fn down_text(node: &str, since: Option<u64>) -> String {
    let now = switchboard_bus::status::now_ms();
    match since {
        Some(at) => format!(
            "{node} is down (gone since {}, {} ago)",
            switchboard_bus::status::cluster::clock(at),
            switchboard_bus::status::cluster::ago(now, at)
        ),
        None => format!("{node} is down"),
    }
}

/// Join the bus and read every node's state; an error when no node answers.
pub async fn connect(bus: &BusArgs) -> Result<Conn> {
    let (session, keys) = open(bus).await?;
    let repo = ClusterRepo::read(&session, &keys, PATIENCE).await;
    nodes_or_fail(&repo, &keys, bus)?;
    Ok(Conn { session, keys, repo })
}

/// Push `files` on top of `parents`, print what happened, and wait for every node.
pub async fn make_revision(
    conn: &Conn,
    make: &MakeArgs,
    parents: Vec<String>,
    first_number: u64,
    files: BTreeMap<String, FileEntry>,
    contents: BTreeMap<String, Vec<u8>>,
    wait: bool,
) -> Result<Revision> {
    require_admin(&make.bus)?;
    let Conn { session, keys, repo } = conn;
    let nodes: BTreeSet<String> = repo.states.keys().cloned().collect();
    let new =
        NewRevision { parents, first_number, author: author(make), message: make.message.clone(), files, contents };
    let (rev, carried) = push(session, keys, repo, new).await.context("pushing the revision")?;
    let id = rev.id();
    let files = match rev.files.len() {
        1 => "1 file".to_owned(),
        n => format!("{n} files"),
    };
    out!("revision {} ({}) pushed: {files}, {carried} carried", rev.number, short(&id));
    if !wait {
        return Ok(rev);
    }
    let outcomes = wait_applied(session, keys, &id, &nodes, make.timeout).await;
    let applied: Vec<Duration> = outcomes.values().filter_map(Outcome::in_place_after).collect();
    match applied.iter().max() {
        Some(last) => out!(
            "applied on {} of {} nodes, the last {} ms after the push",
            applied.len(),
            outcomes.len(),
            last.as_millis()
        ),
        None => out!("applied on 0 of {} nodes", outcomes.len()),
    }
    let mut bad = Vec::new();
    // Who left the bus meanwhile, and since when (a node killed during the push is gone, not slow).
    let down = if outcomes.values().any(|o| matches!(o, Outcome::Gone)) {
        down_nodes(session, keys).await
    } else {
        BTreeMap::new()
    };
    for (node, o) in &outcomes {
        match o {
            Outcome::Applied(t) => out!("  {node:<24} applied after {} ms", t.as_millis()),
            Outcome::Followed { number, id, after } => out!(
                "  {node:<24} applied after {} ms, with revision {number} ({}), pushed on top of it since",
                after.as_millis(),
                short(id)
            ),
            Outcome::Blocked(why) => {
                out!("  {node:<24} NOT applied: {}", why.trim_end().replace('\n', "\n    "));
                bad.push(node.clone());
            }
            Outcome::Storing(files) => {
                out!(
                    "  {node:<24} not applied after {:?}: still writing it ({files} files); it is applied once \
                     written (`switchboard config status` follows it)",
                    make.timeout
                );
                bad.push(node.clone());
            }
            Outcome::Reloading(running) => {
                out!(
                    "  {node:<24} not applied after {:?}: its reload command is still running (for {:.1} s; \
                     [cluster_config] reload_timeout_ms bounds it); `switchboard config status` follows it",
                    make.timeout,
                    running.as_secs_f64()
                );
                bad.push(node.clone());
            }
            Outcome::Gone => {
                let since = match down.get(node) {
                    Some(NodeSeen::Down(since)) => *since,
                    _ => None,
                };
                out!(
                    "  {node:<24} not applied: it left the bus during the push ({}); it takes this revision when \
                     it starts or resumes",
                    down_text(node, since)
                );
                bad.push(node.clone());
            }
            Outcome::Missing => {
                out!("  {node:<24} not applied after {:?} (it catches up when it next syncs)", make.timeout);
                bad.push(node.clone());
            }
        }
    }
    say_unanswered(session, keys, &nodes).await;
    if !bad.is_empty() {
        bail!(
            "revision {} is not applied on {} of {} nodes: {}",
            rev.number,
            bad.len(),
            outcomes.len(),
            bad.join(", ")
        );
    }
    // A push made elsewhere at the same moment follows the same parent, and may reach the nodes
    // just after this one was applied: they then hold two heads and apply neither. Reading the
    // nodes again (over at least two rounds, 300 ms apart) catches it before saying "done".
    // A node still storing another revision of the same number has one (it follows the same
    // parent) on its way.
    let after = ClusterRepo::read(session, keys, PATIENCE).await;
    let heads = after.heads();
    let storing =
        after.states.values().filter_map(|s| s.storing.as_ref()).find(|st| st.number == rev.number && st.id != id);
    if (heads.len() > 1 && heads.iter().any(|h| h.id == id)) || storing.is_some() {
        let mut others: Vec<String> = heads.iter().filter(|h| h.id != id).map(|h| h.label()).collect();
        if let Some(st) = storing.filter(|st| !heads.iter().any(|h| h.id == st.id)) {
            others.push(format!("{} ({})", st.number, short(&st.id)));
        }
        bail!(
            "revision {} was applied, then another push made at the same moment ({}) reached the nodes: two \
             heads, a conflict that no node applies; `switchboard config status` shows it and \
             `switchboard config resolve` settles it",
            rev.number,
            others.join(", ")
        );
    }
    Ok(rev)
}

/// A tree without [`LIMITS_FILE`] keeps `from`'s, and says so: leaving the file out of a push,
/// a rollback or a resolve never drops the limits in force (nodes would go on enforcing them,
/// and a node that starts later would enforce none).
/// Keep the limits file of `from` when the tree has none, then check the tree that would be
/// pushed against the repository's bounds (before anything is printed as a change or a dry run
/// says it would pass).
fn keep_limits(files: &mut BTreeMap<String, FileEntry>, from: Option<&Revision>) -> Result<()> {
    let mut kept = String::new();
    if !files.contains_key(LIMITS_FILE) {
        if let Some((rev, limits)) = from.and_then(|r| Some((r, r.files.get(LIMITS_FILE)?))) {
            kept = format!("{LIMITS_FILE} of revision {}", rev.summary().label());
            out!("keeping {kept} (the tree has none)");
            files.insert(LIMITS_FILE.to_owned(), limits.clone());
        }
    }
    switchboard_bus::repo::check_files(files).map_err(|e| {
        if kept.is_empty() {
            anyhow!("{e}")
        } else {
            anyhow!("{e}, counting the {kept} that is kept")
        }
    })
}

fn when(at_ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms as i64)
        .map_or_else(|| at_ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// At most this many changed files are listed one per line; the rest are counted.
const LISTED_CHANGES: usize = 100;

fn print_changes(from: &BTreeMap<String, FileEntry>, to: &BTreeMap<String, FileEntry>, indent: &str) -> Result<()> {
    let list = changes(from, to);
    if list.is_empty() {
        out!("{indent}no file changed");
    }
    let count = |kind: &Change| list.iter().filter(|(_, c)| c == kind).count();
    let (added, modified, removed) = (count(&Change::Added), count(&Change::Modified), count(&Change::Removed));
    for (path, c) in list.iter().take(LISTED_CHANGES) {
        let mark = match c {
            Change::Added => "+",
            Change::Modified => "~",
            Change::Removed => "-",
        };
        out!("{indent}{mark} {path}");
    }
    if list.len() > LISTED_CHANGES {
        out!(
            "{indent}... and {} more ({} files in all: {added} added, {modified} changed, {removed} removed)",
            list.len() - LISTED_CHANGES,
            list.len()
        );
    }
    Ok(())
}

/// What a new tree `files` does to the cluster's limits, as `limits set` shows it: an older
/// tree made the head again would otherwise undo a `limits set` unseen. The new limits file's
/// content is in `contents`, or else asked of the nodes as a file of revision `held_by`.
async fn print_limits_change(
    conn: &Conn,
    parent: Option<&Revision>,
    files: &Files,
    contents: &Contents,
    held_by: Option<&str>,
) -> Result<()> {
    let Conn { session, keys, repo } = conn;
    let Some(new) = files.get(LIMITS_FILE) else { return Ok(()) };
    let old = parent.and_then(|p| p.files.get(LIMITS_FILE));
    let limits = match (contents.get(&new.sha256), held_by) {
        (Some(bytes), _) => bytes.clone(),
        (None, Some(rev)) => repo.content(session, keys, rev, &new.sha256).await?,
        (None, None) => return Ok(()),
    };
    let text = std::str::from_utf8(&limits).map_err(|_| anyhow!("{LIMITS_FILE} is not UTF-8"))?;
    let specs = switchboard_bus::limits::parse_document(text).map_err(|e| anyhow!("{LIMITS_FILE}: {e}"))?;
    if specs.is_empty() {
        out!("note: {LIMITS_FILE} holds no limit: every cluster-wide limit is removed");
    }
    if old.map(|o| &o.sha256) == Some(&new.sha256) {
        return Ok(());
    }
    let mut was = Vec::new();
    if let (Some(p), Some(old)) = (parent, old) {
        // Only for the listing: a content no node hands over does not stop the revision.
        match repo.content(session, keys, &p.id(), &old.sha256).await {
            Ok(text) => {
                let parsed = std::str::from_utf8(&text).ok().map(switchboard_bus::limits::parse_document);
                was = parsed.and_then(Result::ok).unwrap_or_default();
            }
            Err(e) => {
                out!("note: {LIMITS_FILE} changes; the limits in force could not be read to compare ({e})");
                return Ok(());
            }
        }
    }
    for line in crate::limits_cmd::diff(&was, &specs) {
        out!("limits: {line}");
    }
    Ok(())
}

/// Run one `config` subcommand; returns the exit code.
pub async fn run(cmd: ConfigCommand) -> Result<i32> {
    match cmd {
        ConfigCommand::Push { dir, dry_run, force, expect_head, make } => {
            let (mut files, contents) = read_tree(&dir)?;
            if !dry_run {
                require_admin(&make.bus)?;
            }
            let conn = connect(&make.bus).await?;
            let Conn { session, keys, repo } = &conn;
            let head = single_head(repo)?.cloned();
            if let Some(expected) = expect_head.as_deref() {
                let matches = head.as_ref().is_some_and(|h| {
                    expected.parse::<u64>().is_ok_and(|n| n == h.number)
                        || (expected.len() >= 4 && h.id.starts_with(&expected.to_ascii_lowercase()))
                });
                // A revision the nodes do not hold (a typo, or one of another cluster) was not
                // replaced by a later push.
                if !matches && !repo.names_any(expected) {
                    note!(
                        "error: no node holds a revision {expected}; the head is {}: give --expect-head the revision \
                         your tree was prepared on (`switchboard config log` lists them)",
                        head.as_ref().map_or("none (no revision yet)".to_owned(), |h| h.label()),
                    );
                    return Ok(1);
                }
                if !matches {
                    note!(
                        "error: the head is {}, not {expected}: another revision was pushed since; look at it \
                         (`switchboard config log`, `config show head`), bring your tree up to date, and push \
                         again with --expect-head {}",
                        head.as_ref().map_or("none (no revision yet)".to_owned(), |h| h.label()),
                        head.as_ref().map_or("...".to_owned(), |h| h.number.to_string())
                    );
                    return Ok(1);
                }
            }
            let parent = match &head {
                Some(h) => Some(repo.revision(session, keys, &h.id).await?),
                None => None,
            };
            let empty = BTreeMap::new();
            let before = parent.as_ref().map_or(&empty, |p| &p.files);
            keep_limits(&mut files, parent.as_ref())?;
            print_limits_change(&conn, parent.as_ref(), &files, &contents, None).await?;
            // A layer no node reads (a typo, or a node or subcluster that did not answer).
            // `default/` is read by the nodes in no subcluster.
            let states = repo.states.values();
            let readers: BTreeSet<&str> = std::iter::once(tree::GLOBAL)
                .chain(states.clone().any(|s| s.subcluster.is_none()).then_some(tree::DEFAULT))
                .chain(states.flat_map(|s| std::iter::once(s.node.as_str()).chain(s.subcluster.as_deref())))
                .collect();
            let layers: BTreeSet<&str> = files.keys().filter_map(|p| p.split('/').next()).collect();
            let unread: Vec<&&str> = layers.difference(&readers).collect();
            let down = if unread.is_empty() { BTreeMap::new() } else { down_nodes(session, keys).await };
            for layer in unread {
                match down.get(*layer) {
                    Some(NodeSeen::Down(since)) => {
                        out!(
                            "note: {layer}/ is for {}: it takes this revision when it starts or resumes (if it runs with [cluster_config])",
                            down_text(layer, *since)
                        );
                        continue;
                    }
                    Some(NodeSeen::Silent) => {
                        out!(
                            "note: {layer}/ is for {layer}, which is on the bus but did not answer: stopped just now \
                             or hung (it takes this revision when it answers again), or running without \
                             [cluster_config] (it takes no revision)"
                        );
                        continue;
                    }
                    None => {}
                }
                let read: Vec<String> = readers.iter().map(|r| format!("{r}/")).collect();
                out!(
                    "note: no node that answered reads {layer}/ (they read {}): a typo, or a subcluster whose nodes \
                     are all down or did not answer",
                    read.join(", ")
                );
            }
            out!("on top of revision {}:", head.as_ref().map_or("none (the first)".to_owned(), |h| h.label()));
            print_changes(before, &files, "  ")?;
            if dry_run {
                out!("dry run: nothing pushed");
                return Ok(0);
            }
            if let Some(h) = head.as_ref().filter(|_| !force && parent.as_ref().is_some_and(|p| p.files == files)) {
                out!("nothing changed: no revision made");
                // A node that did not apply the head (its reload failed) does not take it again.
                let behind: Vec<&str> = repo
                    .states
                    .values()
                    .filter(|s| {
                        s.applied.as_ref().is_none_or(|a| a.id != h.id)
                            || s.blocked.as_ref().is_some_and(|b| b.id == h.id)
                            || s.reload.as_ref().is_some_and(|r| r.id == h.id && !r.ok)
                    })
                    .map(|s| s.node.as_str())
                    .collect();
                if behind.is_empty() {
                    return Ok(0);
                }
                out!(
                    "but {} did not apply revision {} (see `switchboard config status`); once the cause is \
                     fixed, `push --force` makes a new revision of this tree for them to apply",
                    behind.join(", "),
                    h.label()
                );
                return Ok(1);
            }
            let first = crate::limits_cmd::first_number(session, keys).await;
            make_revision(
                &conn,
                &make,
                head.map(|h| vec![h.id.clone()]).unwrap_or_default(),
                first,
                files,
                contents,
                true,
            )
            .await?;
            Ok(0)
        }
        ConfigCommand::Log { limit, bus } => {
            let (session, keys) = open(&bus).await?;
            let repo = ClusterRepo::read(&session, &keys, PATIENCE).await;
            nodes_or_fail(&repo, &keys, &bus)?;
            let mut all: Vec<&Summary> = repo.known.values().collect();
            all.sort_by(|a, b| (b.number, &b.id).cmp(&(a.number, &a.id)));
            let heads: BTreeSet<&str> = repo.heads().iter().map(|s| s.id.as_str()).collect();
            if all.is_empty() {
                out!("no revisions yet (`switchboard config push DIR`)");
            }
            for s in all.into_iter().take(limit) {
                let rev = repo.revision(&session, &keys, &s.id).await?;
                let mark = if heads.contains(s.id.as_str()) { "  [head]" } else { "" };
                out!("revision {}  {}  {}  {}{mark}", s.label(), when(s.at_ms), shown(&s.author), shown(&s.message));
                if s.parents.len() > 1 {
                    let labels: Vec<String> = s
                        .parents
                        .iter()
                        .map(|p| repo.known.get(p).map_or(short(p).to_owned(), |x| x.label()))
                        .collect();
                    out!("    settles the conflict of {}", labels.join(" and "));
                }
                // What it changed from its parent; a revision that settles a conflict, from each.
                let indent = if s.parents.len() > 1 { "      " } else { "    " };
                for p in &s.parents {
                    let parent = repo.revision(&session, &keys, p).await;
                    if s.parents.len() > 1 {
                        out!("    from {}:", repo.known.get(p).map_or(short(p).to_owned(), |x| x.label()));
                    }
                    match parent {
                        Ok(parent) => print_changes(&parent.files, &rev.files, indent)?,
                        Err(e) => out!("{indent}(its files cannot be read now: {e})"),
                    }
                }
                if s.parents.is_empty() {
                    print_changes(&BTreeMap::new(), &rev.files, indent)?;
                }
            }
            Ok(0)
        }
        ConfigCommand::Show { revision, path, bus } => {
            let (session, keys) = open(&bus).await?;
            let repo = ClusterRepo::read(&session, &keys, PATIENCE).await;
            nodes_or_fail(&repo, &keys, &bus)?;
            let s = repo.find(&revision).map_err(|e| anyhow!(e))?;
            let rev = repo.revision(&session, &keys, &s.id).await?;
            match path {
                Some(p) => {
                    let f = rev.files.get(&p).ok_or_else(|| anyhow!("revision {} has no file {p}", rev.number))?;
                    let bytes = repo.content(&session, &keys, &s.id, &f.sha256).await?;
                    std::io::stdout().write_all(&bytes)?;
                }
                None => {
                    out!("revision {}  {}  {}  {}", s.label(), when(s.at_ms), shown(&s.author), shown(&s.message));
                    out!("id {}", s.id);
                    for p in &s.parents {
                        out!("parent {p}");
                    }
                    for (path, f) in &rev.files {
                        out!("  {:>10}  {}  {path}", f.size, short(&f.sha256));
                    }
                }
            }
            Ok(0)
        }
        ConfigCommand::Diff { from, to, bus } => {
            let (session, keys) = open(&bus).await?;
            let repo = ClusterRepo::read(&session, &keys, PATIENCE).await;
            nodes_or_fail(&repo, &keys, &bus)?;
            let (a, b) = (repo.find(&from).map_err(|e| anyhow!(e))?, repo.find(&to).map_err(|e| anyhow!(e))?);
            let ra = repo.revision(&session, &keys, &a.id).await?;
            let rb = repo.revision(&session, &keys, &b.id).await?;
            out!("from revision {} to {}:", a.label(), b.label());
            for (path, c) in changes(&ra.files, &rb.files) {
                let old = file_text(&repo, &session, &keys, &ra, &a.id, &path).await?;
                let new = file_text(&repo, &session, &keys, &rb, &b.id, &path).await?;
                let mark = match c {
                    Change::Added => "added",
                    Change::Modified => "modified",
                    Change::Removed => "removed",
                };
                out!("--- {path} ({mark})");
                print_line_diff(old.as_deref().unwrap_or_default(), new.as_deref().unwrap_or_default())?;
            }
            Ok(0)
        }
        ConfigCommand::Rollback { revision, make } => {
            require_admin(&make.bus)?;
            let conn = connect(&make.bus).await?;
            let Conn { session, keys, repo } = &conn;
            let head = single_head(repo)?.cloned().ok_or_else(|| anyhow!("no revisions yet"))?;
            let target = repo.find(&revision).map_err(|e| anyhow!(e))?.clone();
            let mut old = repo.revision(session, keys, &target.id).await?;
            let current = repo.revision(session, keys, &head.id).await?;
            keep_limits(&mut old.files, Some(&current))?;
            if current.files == old.files {
                out!("revision {} has the tree of revision {} already: no revision made", head.label(), target.label());
                return Ok(0);
            }
            let mut make = make;
            if make.message.is_empty() {
                make.message = format!("rollback to revision {}", target.label());
            }
            print_limits_change(&conn, Some(&current), &old.files, &BTreeMap::new(), Some(&target.id)).await?;
            out!("on top of revision {}:", head.label());
            print_changes(&current.files, &old.files, "  ")?;
            make_revision(&conn, &make, vec![head.id], 1, old.files, BTreeMap::new(), true).await?;
            Ok(0)
        }
        ConfigCommand::Status { json, bus } => status(json, &bus).await,
        ConfigCommand::Resolve { take, dir, make } => {
            require_admin(&make.bus)?;
            let conn = connect(&make.bus).await?;
            let Conn { session, keys, repo } = &conn;
            let heads: Vec<Summary> = repo.heads().into_iter().cloned().collect();
            if heads.len() < 2 {
                bail!("there is no conflict to resolve: the repository has {} head", heads.len());
            }
            let (mut files, contents, taken) = match (&take, &dir) {
                (Some(t), _) => {
                    let s = repo.find(t).map_err(|e| anyhow!(e))?;
                    if !heads.iter().any(|h| h.id == s.id) {
                        bail!("revision {} is not one of the heads ({})", s.label(), labels(&heads));
                    }
                    (repo.revision(session, keys, &s.id).await?.files, BTreeMap::new(), Some(s.id.clone()))
                }
                (None, Some(d)) => {
                    let (files, contents) = read_tree(d)?;
                    (files, contents, None)
                }
                (None, None) => bail!("give --take <revision> or a directory"),
            };
            // The limits of the newest head that has them, if the tree has none.
            let mut with_limits = None;
            for h in &heads {
                let rev = repo.revision(session, keys, &h.id).await?;
                if rev.files.contains_key(LIMITS_FILE)
                    && with_limits.as_ref().is_none_or(|w: &Revision| rev.at_ms > w.at_ms)
                {
                    with_limits = Some(rev);
                }
            }
            let kept = !files.contains_key(LIMITS_FILE);
            keep_limits(&mut files, with_limits.as_ref())?;
            let mut make = make;
            if make.message.is_empty() {
                make.message = format!("resolve the conflict of {}", labels(&heads));
            }
            // Each head's side: what the resolution changes there, limits first.
            let limits_of = if kept { with_limits.as_ref().map(Revision::id) } else { taken };
            for h in &heads {
                let side = repo.revision(session, keys, &h.id).await?;
                out!("against revision {}:", h.label());
                print_limits_change(&conn, Some(&side), &files, &contents, limits_of.as_deref()).await?;
                print_changes(&side.files, &files, "  ")?;
            }
            make_revision(&conn, &make, heads.iter().map(|h| h.id.clone()).collect(), 1, files, contents, true).await?;
            Ok(0)
        }
    }
}

/// The content of `path` in `rev` (`None`: not in it).
async fn file_text(
    repo: &ClusterRepo,
    session: &zenoh::Session,
    keys: &KeySpace,
    rev: &Revision,
    id: &str,
    path: &str,
) -> Result<Option<Vec<u8>>> {
    match rev.files.get(path) {
        Some(f) => Ok(Some(repo.content(session, keys, id, &f.sha256).await?)),
        None => Ok(None),
    }
}

fn labels(heads: &[Summary]) -> String {
    heads.iter().map(|h| h.label()).collect::<Vec<_>>().join(" and ")
}

/// `bytes` as text: UTF-8 without a NUL (a NUL makes a file binary, as `diff` and `git` take it).
fn as_text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|t| !t.contains('\0'))
}

/// Lines removed (`-`) and added (`+`) between two texts, by a longest common subsequence on
/// lines (texts over 2,000 lines, or binary: not UTF-8, or holding a NUL, are summarized).
fn print_line_diff(old: &[u8], new: &[u8]) -> Result<()> {
    let (Some(old), Some(new)) = (as_text(old), as_text(new)) else {
        out!("    (binary: {} -> {} bytes)", old.len(), new.len());
        return Ok(());
    };
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    if a.len() > 2000 || b.len() > 2000 {
        out!("    ({} -> {} lines)", a.len(), b.len());
        return Ok(());
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out!("-{}", a[i]);
            i += 1;
        } else {
            out!("+{}", b[j]);
            j += 1;
        }
    }
    Ok(())
}

async fn status(json: bool, bus: &BusArgs) -> Result<i32> {
    let (session, keys) = open(bus).await?;
    let repo = ClusterRepo::read(&session, &keys, PATIENCE).await;
    if let Err(e) = nodes_or_fail(&repo, &keys, bus) {
        note!("error: {e}");
        return Ok(2);
    }
    let heads: Vec<Summary> = repo.heads().into_iter().cloned().collect();
    let mut problems: Vec<String> = Vec::new();
    if heads.len() > 1 {
        problems.push(format!("conflict: {} heads made apart ({})", heads.len(), labels(&heads)));
    }
    for s in repo.states.values() {
        // What a node is doing with a revision, and since when.
        let doing = |what: String, since_ms: u64, then: &str| {
            let ago = switchboard_bus::status::cluster::ago(switchboard_bus::status::now_ms(), since_ms);
            format!("{}: {what} for {ago}: it is applied once {then}", s.node)
        };
        if let Some(st) = &s.storing {
            let what = format!("writing revision {} ({}, {} files)", st.number, short(&st.id), st.files);
            problems.push(doing(what, st.since_ms, "written"));
        }
        if let Some(r) = &s.reloading {
            let what = format!("running the reload command of revision {} ({})", r.number, short(&r.id));
            problems.push(doing(what, r.since_ms, "the reload succeeds"));
        }
        let applied = s.applied.as_ref().map(|a| a.id.as_str());
        if heads.len() == 1 && applied != Some(heads[0].id.as_str()) {
            problems.push(format!(
                "{}: applied {}, the head is {}",
                s.node,
                s.applied.as_ref().map_or("nothing".to_owned(), |a| a.number.to_string()),
                heads[0].label()
            ));
        }
        if let Some(b) = &s.blocked {
            let paths = if b.paths.is_empty() { String::new() } else { format!(" ({})", b.paths.join(", ")) };
            problems.push(format!("{}: revision {} not applied: {}{paths}", s.node, b.number, b.why));
        }
        if let Some(e) = &s.store_error {
            problems.push(format!("{}: revision {} not stored: {}", s.node, e.number, e.why));
        }
        if let Some(r) = s.reload.as_ref().filter(|r| !r.ok && !r.output.is_empty()) {
            problems
                .push(format!("{}: the reload of revision {} ({}) wrote: {}", s.node, r.number, r.status, r.output));
        }
        if !s.local_edits.is_empty() {
            let edits: Vec<String> = s
                .local_edits
                .iter()
                .map(|e| {
                    let how = match e.change {
                        Change::Added => "added",
                        Change::Modified => "modified",
                        Change::Removed => "removed",
                    };
                    format!("{} ({how})", e.path)
                })
                .collect();
            problems.push(format!("{}: local edits in {}: {}", s.node, s.dir, edits.join(", ")));
        }
    }
    problems.extend(repo.errors.iter().map(|e| format!("unreadable answer: {e}")));
    let now = switchboard_bus::status::now_ms();
    for (node, seen) in down_nodes(&session, &keys).await {
        if repo.states.values().any(|s| s.node == node) {
            continue;
        }
        // One alive that does not answer cannot be said to hold the head: hung, not linked to
        // this tool, or keeping no repository (`[cluster_config]` off).
        let NodeSeen::Down(since) = seen else {
            problems.push(format!("{node} {SILENT}"));
            continue;
        };
        let text = format!(
            "{}: it applies the head when it starts or resumes, if it runs with [cluster_config]",
            down_text(&node, since)
        );
        // As in `switchboard status`: a node gone for longer (retired, or stopped on purpose) is
        // said, not a problem.
        let long_gone =
            since.is_some_and(|at| now.saturating_sub(at) >= switchboard_bus::status::cluster::GONE_IS_A_PROBLEM_MS);
        if long_gone {
            note!("note: {text}");
        } else {
            problems.push(text);
        }
    }
    if json {
        let doc = serde_json::json!({
            "heads": heads,
            "nodes": repo.states,
            "problems": problems,
        });
        out!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(if problems.is_empty() { 0 } else { 1 });
    }
    match heads.as_slice() {
        [] => out!("no revisions yet"),
        [h] => out!("head: revision {}  {}  {}  {}", h.label(), when(h.at_ms), shown(&h.author), shown(&h.message)),
        many => {
            out!(
                "CONFLICT: {} heads were made apart (on two sides of a partition, or by two pushes at once)",
                many.len()
            );
            for h in many {
                let base = many
                    .iter()
                    .filter(|o| o.id != h.id)
                    .find_map(|o| switchboard_bus::repo::dag::common_ancestor(&repo.known, &h.id, &o.id))
                    .cloned();
                let side = repo.revision(&session, &keys, &h.id).await?;
                let base_files = match &base {
                    Some(b) => repo.revision(&session, &keys, &b.id).await?.files,
                    None => BTreeMap::new(),
                };
                let holders: Vec<&str> = repo
                    .states
                    .values()
                    .filter(|s| s.heads.iter().any(|x| x.id == h.id))
                    .map(|s| s.node.as_str())
                    .collect();
                out!(
                    "  side {}  {}  {}  {}  (held by {})",
                    h.label(),
                    when(h.at_ms),
                    shown(&h.author),
                    shown(&h.message),
                    if holders.is_empty() { "-".to_owned() } else { holders.join(", ") }
                );
                out!("    changes since {}:", base.as_ref().map_or("the start".to_owned(), |b| b.label()));
                print_changes(&base_files, &side.files, "      ")?;
            }
            out!(
                "settle it with `switchboard config resolve --take <revision>` (keep one side) or \
                 `switchboard config resolve <dir>` (a merged tree)"
            );
        }
    }
    out!("{:<20} {:>15} {:>6}  {:<28} RELOAD", "NODE", "APPLIED", "EDITS", "BLOCKED");
    for s in repo.states.values() {
        // A revision switched in whose reload command runs is applied once that succeeds.
        let reloading = s.reloading.as_ref();
        let reload = match (reloading, s.reload.as_ref()) {
            (Some(r), _) => format!(
                "{} running for {}",
                r.number,
                switchboard_bus::status::cluster::ago(switchboard_bus::status::now_ms(), r.since_ms)
            ),
            (None, Some(r)) => format!("{} {}{}", r.number, r.status, if r.reverted { " (reverted)" } else { "" }),
            (None, None) => "-".to_owned(),
        };
        let applied = match (&s.applied, reloading) {
            (Some(a), Some(r)) if r.id == a.id => format!("reloading {}", a.number),
            // Kept in place after its reload failed (`on_reload_failure = "keep"`): not applied.
            (Some(a), _) if s.blocked.as_ref().is_some_and(|b| b.id == a.id) => format!("in place {}", a.number),
            (Some(a), _) => format!("{} ({})", a.number, short(&a.id)),
            (None, _) => "-".to_owned(),
        };
        out!(
            "{:<20} {:>15} {:>6}  {:<28} {reload}",
            s.node,
            applied,
            s.local_edits.len(),
            s.blocked.as_ref().map_or("-".to_owned(), |b| format!("revision {} ({})", b.number, short(&b.id))),
        );
    }
    if !problems.is_empty() {
        out!("problems:");
        for p in &problems {
            // A reload's output may run over several lines: each under its problem.
            out!("  {}", p.trim_end().replace('\n', "\n    "));
        }
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_user_variable_names_no_author() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(named_in(some("ann"), some("bob")), some("ann"));
        assert_eq!(named_in(some(""), some("bob")), some("bob"));
        assert_eq!(named_in(some(" "), None), None);
        assert_eq!(named_in(None, None), None);
    }

    #[test]
    fn authors_and_messages_print_on_one_line_and_draw_nothing() {
        assert_eq!(shown("raise the window"), "raise the window");
        assert_eq!(shown("multi\nline\u{1b}[31mred"), "multi\\nline\\u{1b}[31mred");
        assert!(parse_author("").is_err() && parse_author("  ").is_err());
        assert!(parse_author("eve\nforged line").unwrap_err().contains("one line"));
        assert_eq!(parse_author("ops"), Ok("ops".into()));
    }

    /// A tree at the file bound passes alone and is refused once the kept limits file is added,
    /// before a dry run could call it good, with the kept file named.
    #[test]
    fn the_kept_limits_file_counts_against_the_bounds() {
        let files = |n: usize| -> BTreeMap<String, FileEntry> {
            (0..n).map(|i| (format!("global/f{i}.conf"), FileEntry::of(b"x"))).collect()
        };
        let rev = Revision {
            version: 1,
            number: 7,
            parents: Vec::new(),
            author: "ops".into(),
            at_ms: 0,
            message: String::new(),
            files: BTreeMap::from([(LIMITS_FILE.to_owned(), FileEntry::of(b"[[limit]]"))]),
        };
        let mut at_bound = files(switchboard_bus::repo::MAX_FILES);
        let error = keep_limits(&mut at_bound, Some(&rev)).unwrap_err().to_string();
        assert!(error.contains("10001 files") && error.contains("global/limits.toml of revision 7 ("), "{error}");
        let mut under = files(switchboard_bus::repo::MAX_FILES - 1);
        keep_limits(&mut under, Some(&rev)).unwrap();
        assert!(under.contains_key(LIMITS_FILE));
        keep_limits(&mut files(switchboard_bus::repo::MAX_FILES), None).unwrap();
    }
}
