//! The repository seen from a tool: every node's state joined, revisions named by number or id,
//! and pushing a new revision.
//!
//! A tool holds nothing: it reads the nodes' states ([`ClusterRepo::read`]), fetches revisions
//! and contents from whichever node holds them, and [`push`]es a [`Pack`] carrying only the
//! contents the new revision's parents do not have.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use zenoh::qos::CongestionControl;
use zenoh::Session;

use super::wire::{fetch_object, fetch_revision, fetch_states, NodeState, Pack};
use super::{dag, is_hash, FileEntry, RepoError, Revision, Summary};
use crate::keys::KeySpace;

/// How long one query waits.
const ASK: Duration = Duration::from_secs(5);

/// Every node's repository state, joined.
pub struct ClusterRepo {
    /// Each node's state, by node name.
    pub states: BTreeMap<String, NodeState>,
    /// Answers that did not parse.
    pub errors: Vec<String>,
    /// Every revision some node holds.
    pub known: BTreeMap<String, Summary>,
}

impl ClusterRepo {
    /// Ask every node, until two rounds in a row are answered by the same nodes (a fresh
    /// session reaches the peers of the first node it links to one by one) or `patience` passes.
    pub async fn read(session: &Session, keys: &KeySpace, patience: Duration) -> Self {
        let deadline = Instant::now() + patience;
        let mut previous: Option<BTreeSet<String>> = None;
        loop {
            let answers = fetch_states(session, keys, ASK).await;
            let mut repo = Self { states: BTreeMap::new(), errors: Vec::new(), known: BTreeMap::new() };
            for a in answers {
                match a {
                    Ok(s) => {
                        for r in &s.revisions {
                            repo.known.entry(r.id.clone()).or_insert_with(|| r.clone());
                        }
                        repo.states.insert(s.node.clone(), s);
                    }
                    Err(e) => repo.errors.push(e),
                }
            }
            let names: BTreeSet<String> = repo.states.keys().cloned().collect();
            if (!names.is_empty() && previous.as_ref() == Some(&names)) || Instant::now() >= deadline {
                return repo;
            }
            previous = Some(names);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The heads of everything the nodes hold, newest first: more than one is a conflict.
    pub fn heads(&self) -> Vec<&Summary> {
        dag::heads(&self.known)
    }

    /// Whether `reference` names a revision some node holds (one, or several: see [`Self::find`]).
    pub fn names_any(&self, reference: &str) -> bool {
        let lower = reference.to_ascii_lowercase();
        match reference {
            "head" => !self.known.is_empty(),
            _ => self.known.values().any(|s| {
                reference.parse::<u64>().is_ok_and(|n| n == s.number)
                    || (reference.len() >= 4 && s.id.starts_with(&lower))
            }),
        }
    }

    /// The revision `reference` names: `head` (the one head), a number (unique), or the start of
    /// an id (at least 4 digits, unique). Digits alone name a number, or the start of an id when
    /// they name no number; both at once is an error that asks for more of the id.
    pub fn find(&self, reference: &str) -> Result<&Summary, String> {
        let by_id = |r: &str| -> Vec<&Summary> {
            let r = r.to_ascii_lowercase();
            self.known.values().filter(|s| s.id.starts_with(&r)).collect()
        };
        let matches: Vec<&Summary> = if reference == "head" {
            self.heads()
        } else if let Ok(n) = reference.parse::<u64>() {
            let by_number: Vec<&Summary> = self.known.values().filter(|s| s.number == n).collect();
            let by_id = if reference.len() >= 4 { by_id(reference) } else { Vec::new() };
            match (by_number.is_empty(), by_id.is_empty()) {
                (false, false) => {
                    return Err(format!(
                        "{reference} is the number of {} and the start of the id of {}: give more digits of the id",
                        by_number.iter().map(|s| s.label()).collect::<Vec<_>>().join(", "),
                        by_id.iter().map(|s| s.label()).collect::<Vec<_>>().join(", ")
                    ))
                }
                (true, _) => by_id,
                (false, true) => by_number,
            }
        } else if reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            if reference.len() < 4 {
                return Err(format!("{reference:?} is too short: give at least 4 hex digits of an id"));
            }
            by_id(reference)
        } else {
            return Err(format!(
                "{reference:?} is not a revision: give `head`, a number, or the start of an id (at least 4 hex digits)"
            ));
        };
        match matches.as_slice() {
            [one] => Ok(one),
            [] if reference == "head" => Err("no revisions yet (`switchboard config push DIR` makes the first)".into()),
            [] => Err(format!("no node holds a revision {reference}")),
            many => Err(format!(
                "{reference} names {} revisions ({}): give the start of an id",
                many.len(),
                many.iter().map(|s| s.label()).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// Nodes that hold revision `id`.
    fn holders(&self, id: &str) -> Vec<&str> {
        self.states.values().filter(|s| s.revisions.iter().any(|r| r.id == id)).map(|s| s.node.as_str()).collect()
    }

    /// Fetch revision `id` from a node that holds it.
    pub async fn revision(&self, session: &Session, keys: &KeySpace, id: &str) -> Result<Revision, RepoError> {
        for node in self.holders(id) {
            if let Some(r) = fetch_revision(session, keys, node, id, ASK).await? {
                return Ok(r);
            }
        }
        Err(RepoError::Invalid(format!(
            "no node answered revision {} (on a bus with TLS, only agents' and admins' certificates may read the \
             repository's revisions)",
            super::short(id)
        )))
    }

    /// Fetch content `sha256` from a node that holds revision `of` (or any node).
    pub async fn content(
        &self,
        session: &Session,
        keys: &KeySpace,
        of: &str,
        sha256: &str,
    ) -> Result<Vec<u8>, RepoError> {
        let mut nodes = self.holders(of);
        nodes.extend(self.states.keys().map(String::as_str));
        for node in nodes {
            if let Some(bytes) = fetch_object(session, keys, node, sha256, ASK).await? {
                return Ok(bytes);
            }
        }
        Err(RepoError::Invalid(format!("no node answered content {}", super::short(sha256))))
    }
}

/// What to push: the new tree and who makes it.
pub struct NewRevision {
    /// Ids of the revisions it follows (the one head; every head to settle a conflict).
    pub parents: Vec<String>,
    /// The number to give a first revision (one that follows nothing): 1 unless revisions of the
    /// limits made before the repository should stay below it.
    pub first_number: u64,
    /// Who makes it.
    pub author: String,
    /// Why.
    pub message: String,
    /// The whole tree.
    pub files: BTreeMap<String, FileEntry>,
    /// Contents at hand (by SHA-256); those the parents lack and that are not here are fetched.
    pub contents: BTreeMap<String, Vec<u8>>,
}

/// Build the revision, put it with the contents its parents lack, and return it.
pub async fn push(
    session: &Session,
    keys: &KeySpace,
    repo: &ClusterRepo,
    new: NewRevision,
) -> Result<(Revision, usize), RepoError> {
    let mut have: BTreeSet<String> = BTreeSet::new();
    // A first revision takes `first_number`; any other its highest parent's number plus one.
    let mut number = if new.parents.is_empty() { new.first_number.max(1) } else { 0 };
    for p in &new.parents {
        if !is_hash(p) {
            return Err(RepoError::Invalid(format!("parent {p:?} is not a revision id")));
        }
        let parent = repo.revision(session, keys, p).await?;
        let next = parent.number.checked_add(1).ok_or_else(|| {
            RepoError::Invalid(format!(
                "parent {} is numbered {}: no number is left after it",
                super::short(p),
                parent.number
            ))
        })?;
        number = number.max(next);
        have.extend(parent.files.values().map(|f| f.sha256.clone()));
    }
    let rev = Revision {
        version: 1,
        number,
        parents: new.parents.clone(),
        author: new.author,
        at_ms: crate::status::now_ms(),
        message: new.message,
        files: new.files,
    };
    rev.validate()?;
    let mut carry: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for f in rev.files.values() {
        if have.contains(&f.sha256) || carry.contains_key(&f.sha256) {
            continue;
        }
        let bytes = match new.contents.get(&f.sha256) {
            Some(b) => b.clone(),
            None => repo.content(session, keys, new.parents.first().map_or("", |p| p.as_str()), &f.sha256).await?,
        };
        carry.insert(f.sha256.clone(), bytes);
    }
    let carried = carry.len();
    let pack = Pack::new(rev.clone(), carry.values().map(Vec::as_slice));
    let key = keys.config_push().map_err(|e| RepoError::Invalid(e.to_string()))?;
    session
        .put(key, pack.encode())
        .congestion_control(CongestionControl::Block)
        .await
        .map_err(|e| RepoError::Invalid(format!("publishing the revision: {e}")))?;
    Ok((rev, carried))
}

/// Where one node stands with a pushed revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to its working directory (and reloaded, if it has a reload command), first seen
    /// this long after the wait began.
    Applied(Duration),
    /// Holds it but did not apply it: why.
    Blocked(String),
    /// Is writing it to its store (it applies it once stored): how many files.
    Storing(usize),
    /// Switched in, its reload command running since this long.
    Reloading(Duration),
    /// Applied a later revision made on top of it (a push made elsewhere at the same moment,
    /// say), first seen this long after the wait began: what was pushed is in place, under that
    /// revision's number and id.
    Followed {
        /// The later revision's number.
        number: u64,
        /// Its id.
        id: String,
        /// When the wait first saw it in place.
        after: Duration,
    },
    /// Does not hold it (yet).
    Missing,
    /// Left the bus while the push waited (its token is gone): it takes the revision when it
    /// starts or resumes.
    Gone,
}

impl Outcome {
    /// When the pushed revision was first seen in place: applied, or followed by one applied.
    pub fn in_place_after(&self) -> Option<Duration> {
        match self {
            Self::Applied(t) | Self::Followed { after: t, .. } => Some(*t),
            _ => None,
        }
    }
}

/// Whether `node`'s liveliness token is on the bus (asked once, within [`ASK`]).
async fn alive(session: &Session, keys: &KeySpace, node: &str) -> bool {
    let Ok(key) = keys.member(crate::keys::Role::Agent, node) else { return false };
    let Ok(replies) = session.liveliness().get(&key).timeout(ASK).await else { return true };
    replies.recv_async().await.is_ok()
}

/// A node whose state has not come for this long is asked whether it is still on the bus.
const GONE_AFTER: Duration = Duration::from_secs(1);

/// Poll the nodes until each has applied revision `id` or says why not, or left the bus, or
/// `timeout` passes.
pub async fn wait_applied(
    session: &Session,
    keys: &KeySpace,
    id: &str,
    nodes: &BTreeSet<String>,
    timeout: Duration,
) -> BTreeMap<String, Outcome> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut first_seen: BTreeMap<String, Duration> = BTreeMap::new();
    // When each node's state last came.
    let mut heard: BTreeMap<String, Instant> = nodes.iter().map(|n| (n.clone(), started)).collect();
    let mut gone: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut out: BTreeMap<String, Outcome> = nodes.iter().map(|n| (n.clone(), Outcome::Missing)).collect();
        // The number of `id` among the revisions a node holds.
        let pushed = |s: &NodeState| s.revisions.iter().find(|r| r.id == id).map_or(0, |r| r.number);
        for s in fetch_states(session, keys, ASK).await.into_iter().flatten() {
            heard.insert(s.node.clone(), Instant::now());
            let holds = s.revisions.iter().any(|r| r.id == id);
            let in_place = s.applied.as_ref().is_some_and(|a| a.id == id);
            // A failed reload is a failure also where the node keeps the revision in place
            // (`on_reload_failure = "keep"`).
            let failed_reload = s.reload.as_ref().filter(|r| r.id == id && !r.ok);
            let output = failed_reload.filter(|r| !r.output.is_empty()).map_or(String::new(), |r| {
                format!("; its output ends: {}", r.output.lines().last().unwrap_or_default())
            });
            let reloading = s.reloading.as_ref().filter(|r| r.id == id);
            // The revision in place, when it is a later one made on top of `id`.
            let known: BTreeMap<String, Summary> = s.revisions.iter().map(|r| (r.id.clone(), r.clone())).collect();
            let followed = s.applied.as_ref().filter(|a| a.id != id && dag::follows(&known, &a.id, id));
            let o = if let Some(r) = reloading {
                let since = crate::status::now_ms().saturating_sub(r.since_ms);
                Outcome::Reloading(Duration::from_millis(since))
            } else if in_place && failed_reload.is_none() {
                Outcome::Applied(*first_seen.entry(s.node.clone()).or_insert_with(|| started.elapsed()))
            } else if let Some(a) = followed {
                let after = *first_seen.entry(s.node.clone()).or_insert_with(|| started.elapsed());
                Outcome::Followed { number: a.number, id: a.id.clone(), after }
            } else if let Some(b) = s.blocked.as_ref().filter(|b| holds && (b.id == id || b.number >= pushed(&s))) {
                // (A reason of an older revision, said while the node still works its way up to
                // this one, is not this one's.)
                let paths = if b.paths.is_empty() { String::new() } else { format!(" ({})", b.paths.join(", ")) };
                Outcome::Blocked(format!("{}{paths}{output}", b.why))
            } else if let Some(r) = failed_reload.filter(|_| in_place) {
                Outcome::Blocked(format!(
                    "the reload command failed ({}); the revision stays in place (on_reload_failure = \"keep\"){output}",
                    r.status
                ))
            } else if let Some(st) = s.storing.as_ref().filter(|st| st.id == id) {
                Outcome::Storing(st.files)
            } else if let Some(e) = s.store_error.as_ref().filter(|e| e.id == id && !holds) {
                Outcome::Blocked(e.why.clone())
            } else {
                Outcome::Missing
            };
            out.insert(s.node, o);
        }
        // A node silent for a while: gone from the bus (killed, stopped), or only slow?
        for (node, at) in &heard {
            if matches!(out.get(node), Some(Outcome::Missing))
                && (gone.contains(node) || (at.elapsed() >= GONE_AFTER && !alive(session, keys, node).await))
            {
                gone.insert(node.clone());
                out.insert(node.clone(), Outcome::Gone);
            }
        }
        let settled = out
            .values()
            .all(|o| matches!(o, Outcome::Applied(_) | Outcome::Followed { .. } | Outcome::Blocked(_) | Outcome::Gone));
        if settled || Instant::now() >= deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(revisions: &[(u64, &str)]) -> ClusterRepo {
        let known = revisions
            .iter()
            .map(|(number, id)| {
                let s = Summary {
                    id: id.to_string(),
                    number: *number,
                    parents: Vec::new(),
                    author: "ops".into(),
                    at_ms: 0,
                    message: String::new(),
                };
                (id.to_string(), s)
            })
            .collect();
        ClusterRepo { states: BTreeMap::new(), errors: Vec::new(), known }
    }

    #[test]
    fn digits_name_a_number_or_else_the_start_of_an_id() {
        let r = repo(&[(15, "4200da6c00"), (2, "1234abcd00"), (1234, "ffff000000")]);
        assert_eq!(r.find("15").map(|s| s.number), Ok(15));
        assert_eq!(r.find("4200").map(|s| s.number), Ok(15), "no revision 4200: the id's start");
        assert_eq!(r.find("4200da").map(|s| s.number), Ok(15));
        let both = r.find("1234").unwrap_err();
        assert!(both.contains("1234 (ffff0000)") && both.contains("2 (1234abcd)"), "{both}");
        assert_eq!(r.find("1234a").map(|s| s.number), Ok(2));
        assert!(r.find("9999").unwrap_err().contains("no node holds"));
        assert!(repo(&[]).find("head").unwrap_err().contains("no revisions yet"));
    }
}
