//! A node's copy of the repository on disk: `revisions/<id>.json` and `objects/<ab>/<sha256>`.
//!
//! A revision is stored only once every file it names is (so a node that holds a revision can
//! hand out all of it), and its document is written only after the contents written for it are
//! on disk ([`sync_files`]). Contents are checked against their hash when read; a damaged file is
//! removed and counts as missing. [`Store::prune`] keeps the newest [`KEEP_REVISIONS`] and every
//! head, and removes the files no kept revision names.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{dag, is_hash, sha256_hex, RepoError, Revision, Summary, KEEP_REVISIONS, MAX_NUMBER_JUMP};

/// A node's revisions and file contents.
pub struct Store {
    root: PathBuf,
    revisions: BTreeMap<String, Revision>,
    summaries: BTreeMap<String, Summary>,
    /// Contents (and their directories) written and not flushed yet.
    unsynced: BTreeSet<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io { path: path.to_path_buf(), source }
}

/// Threads that flush files at once: the file system batches their journal commits, so a
/// thousand files cost a few commits rather than a thousand.
const SYNC_THREADS: usize = 8;

/// Flush `paths` (files or directories) to disk, several at once. Only what was written is
/// flushed: unlike `syncfs`, the cost does not depend on what other programs wrote.
pub fn sync_files(paths: &[PathBuf]) -> Result<(), RepoError> {
    if paths.is_empty() {
        return Ok(());
    }
    let per = paths.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|s| {
        let workers: Vec<_> = paths
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || -> Result<(), RepoError> {
                    for p in chunk {
                        std::fs::File::open(p).and_then(|f| f.sync_all()).map_err(io(p))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|_| Err(RepoError::Invalid("a flushing thread panicked".into()))))
    })
}

/// Write `content` to `path` through a temporary file and a rename (not synced: see
/// [`sync_files`]).
pub fn write_replacing(path: &Path, content: &[u8]) -> Result<(), RepoError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(content).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The bytes of object `hash` under the store at `root`: a revision document or a file
/// content, checked against the hash; `None` if not held. For answering other nodes without
/// holding the [`Store`].
pub fn read_object(root: &Path, hash: &str) -> Option<Vec<u8>> {
    if !is_hash(hash) {
        return None;
    }
    [root.join("revisions").join(format!("{hash}.json")), root.join("objects").join(&hash[..2]).join(hash)]
        .iter()
        .find_map(|p| std::fs::read(p).ok().filter(|b| sha256_hex(b) == hash))
}

impl Store {
    /// Open (or create) the store under `root`. Documents that do not parse, validate or match
    /// their name are removed (they are fetched again from another node).
    pub fn open(root: &Path) -> Result<Self, RepoError> {
        let revs = root.join("revisions");
        std::fs::create_dir_all(&revs).map_err(io(&revs))?;
        std::fs::create_dir_all(root.join("objects")).map_err(io(root))?;
        let mut store = Self {
            root: root.to_path_buf(),
            revisions: BTreeMap::new(),
            summaries: BTreeMap::new(),
            unsynced: BTreeSet::new(),
        };
        for e in std::fs::read_dir(&revs).map_err(io(&revs))? {
            let path = e.map_err(io(&revs))?.path();
            let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Revision>(&b).ok())
                .filter(|r| r.validate().is_ok() && r.id() == id);
            match parsed {
                // A revision whose contents did not all reach the disk (a crash between the two)
                // is dropped too: it is fetched again, with them.
                Some(r) if store.missing_blobs(&r).is_empty() => store.add(r),
                _ => {
                    tracing::warn!(path = %path.display(), "removing a damaged revision document; it is fetched again");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        store.drop_misnumbered(&revs);
        Ok(store)
    }

    /// Remove the revisions that break the numbering rule ([`Store::check_numbering`]) over
    /// what else is held, and those made on top of them: no node would take them (a document
    /// edited by hand, with its id recomputed), and a head of this node's that no other takes
    /// would stand as a conflict only it sees.
    fn drop_misnumbered(&mut self, dir: &Path) {
        let mut order: Vec<(u64, String)> = self.summaries.values().map(|s| (s.number, s.id.clone())).collect();
        order.sort();
        let mut dropped: BTreeSet<String> = BTreeSet::new();
        for (_, id) in order {
            let Some(r) = self.revisions.get(&id) else { continue };
            let why = if let Some(p) = r.parents.iter().find(|p| dropped.contains(*p)) {
                format!("it follows revision {}, removed", super::short(p))
            } else if let Err(e) = self.check_numbering(r) {
                e.to_string()
            } else {
                continue;
            };
            tracing::warn!(revision = r.number, id = %id, "removing a stored revision no node would take: {why}");
            let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
            dropped.insert(id);
        }
        for id in &dropped {
            self.revisions.remove(id);
            self.summaries.remove(id);
        }
    }

    /// Numbers grow by one along the history: a revision's number is its highest parent's plus
    /// one when every parent is held here; otherwise (a parent pruned, or not fetched yet) above
    /// each held parent's. Either way at most [`MAX_NUMBER_JUMP`] above the highest number held,
    /// so that no push (a stranger's, on a bus without TLS) takes numbers where the revision
    /// that settles it could not be numbered.
    pub fn check_numbering(&self, rev: &Revision) -> Result<(), RepoError> {
        let held: Vec<u64> = rev.parents.iter().filter_map(|p| self.summaries.get(p).map(|s| s.number)).collect();
        if let Some(&top) = held.iter().max() {
            if top >= rev.number {
                return Err(RepoError::Invalid(format!(
                    "revision {} follows revision {top}: its number must be higher",
                    rev.number
                )));
            }
            if held.len() == rev.parents.len() && top.checked_add(1) != Some(rev.number) {
                return Err(RepoError::Invalid(format!(
                    "revision {} follows revision {top}: its number must be {}",
                    rev.number,
                    top.saturating_add(1)
                )));
            }
        }
        let own = rev.id();
        let highest = self.summaries.values().filter(|s| s.id != own).map(|s| s.number).max().unwrap_or(0);
        if rev.number > highest.saturating_add(MAX_NUMBER_JUMP) {
            return Err(RepoError::Invalid(format!(
                "revision {}: more than {MAX_NUMBER_JUMP} above the highest revision held ({highest})",
                rev.number
            )));
        }
        Ok(())
    }

    fn add(&mut self, r: Revision) {
        let s = r.summary();
        self.summaries.insert(s.id.clone(), s);
        self.revisions.insert(r.id(), r);
    }

    /// Every revision held, without files.
    pub fn summaries(&self) -> &BTreeMap<String, Summary> {
        &self.summaries
    }

    /// One revision held.
    pub fn revision(&self, id: &str) -> Option<&Revision> {
        self.revisions.get(id)
    }

    /// The revisions no other follows, newest first.
    pub fn heads(&self) -> Vec<&Summary> {
        dag::heads(&self.summaries)
    }

    fn blob_path(&self, hash: &str) -> PathBuf {
        self.root.join("objects").join(&hash[..2]).join(hash)
    }

    /// Whether the content of `hash` is held (not checked).
    pub fn has_blob(&self, hash: &str) -> bool {
        is_hash(hash) && self.blob_path(hash).is_file()
    }

    /// The content of `hash`, checked; `None` if not held (a damaged copy is removed).
    pub fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>, RepoError> {
        if !is_hash(hash) {
            return Ok(None);
        }
        let path = self.blob_path(hash);
        match std::fs::read(&path) {
            Ok(b) if sha256_hex(&b) == hash => Ok(Some(b)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "removing a damaged file content; it is fetched again");
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Path of the content of `hash` if held, for copying it without reading it here.
    pub fn blob_file(&self, hash: &str) -> Option<PathBuf> {
        self.has_blob(hash).then(|| self.blob_path(hash))
    }

    /// Keep `content` (its name is its hash, returned); flushed before the next revision is stored.
    pub fn put_blob(&mut self, content: &[u8]) -> Result<String, RepoError> {
        let hash = sha256_hex(content);
        if self.has_blob(&hash) {
            return Ok(hash);
        }
        let path = self.blob_path(&hash);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        write_replacing(&path, content)?;
        // The content, its shard directory, and `objects/` (which may have a new shard).
        self.unsynced.extend(path.ancestors().take(3).map(Path::to_path_buf));
        Ok(hash)
    }

    /// The files `rev` names whose content is not held.
    pub fn missing_blobs(&self, rev: &Revision) -> BTreeSet<String> {
        rev.files.values().filter(|f| !self.has_blob(&f.sha256)).map(|f| f.sha256.clone()).collect()
    }

    /// Keep `rev` (validated, every file held); `false` if it was already held.
    pub fn insert(&mut self, rev: Revision) -> Result<bool, RepoError> {
        rev.validate()?;
        let id = rev.id();
        if self.revisions.contains_key(&id) {
            return Ok(false);
        }
        if let Some(h) = self.missing_blobs(&rev).into_iter().next() {
            return Err(RepoError::Invalid(format!("revision {} names content {h} that is not held", rev.number)));
        }
        let written: Vec<PathBuf> = std::mem::take(&mut self.unsynced).into_iter().filter(|p| p.exists()).collect();
        sync_files(&written)?;
        write_replacing(&self.root.join("revisions").join(format!("{id}.json")), &rev.canonical())?;
        self.add(rev);
        Ok(true)
    }

    /// Drop revision `id` (its contents stay): a node that finds a content of a revision it holds
    /// damaged forgets the revision, and fetches it again, contents and all, from another node.
    pub fn forget(&mut self, id: &str) -> Result<(), RepoError> {
        if self.revisions.remove(id).is_some() {
            self.summaries.remove(id);
            let path = self.root.join("revisions").join(format!("{id}.json"));
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(())
    }

    /// Drop the oldest revisions beyond [`KEEP_REVISIONS`] (never a head, nor `keep`), then every
    /// content no kept revision names. Returns how many revisions were dropped.
    pub fn prune(&mut self, keep: &str) -> Result<usize, RepoError> {
        if self.revisions.len() <= KEEP_REVISIONS {
            return Ok(0);
        }
        let heads: BTreeSet<String> = self.heads().iter().map(|s| s.id.clone()).collect();
        let mut by_age: Vec<(u64, String)> = self.summaries.values().map(|s| (s.number, s.id.clone())).collect();
        by_age.sort();
        let excess = self.revisions.len() - KEEP_REVISIONS;
        let drop: Vec<String> =
            by_age.into_iter().map(|(_, id)| id).filter(|id| !heads.contains(id) && id != keep).take(excess).collect();
        for id in &drop {
            self.forget(id)?;
        }
        let named: BTreeSet<&str> =
            self.revisions.values().flat_map(|r| r.files.values().map(|f| f.sha256.as_str())).collect();
        let objects = self.root.join("objects");
        for shard in std::fs::read_dir(&objects).map_err(io(&objects))?.flatten() {
            for blob in std::fs::read_dir(shard.path()).map_err(io(&objects))?.flatten() {
                let name = blob.file_name();
                if name.to_str().is_some_and(|n| is_hash(n) && !named.contains(n)) {
                    let _ = std::fs::remove_file(blob.path());
                }
            }
        }
        Ok(drop.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::FileEntry;

    fn rev(n: u64, parents: Vec<String>, files: &[(&str, &str)]) -> Revision {
        Revision {
            version: 1,
            number: n,
            parents,
            author: "ops".into(),
            at_ms: n,
            message: String::new(),
            files: files.iter().map(|(p, c)| (p.to_string(), FileEntry::of(c.as_bytes()))).collect(),
        }
    }

    #[test]
    fn a_revision_is_kept_only_with_its_files_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let r = rev(1, vec![], &[("global/a", "hello")]);
        assert!(s.insert(r.clone()).is_err(), "its file is not held yet");
        s.put_blob(b"hello").unwrap();
        assert!(s.insert(r.clone()).unwrap());
        assert!(!s.insert(r.clone()).unwrap());
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.revision(&r.id()), Some(&r));
        assert_eq!(s.blob(&r.files["global/a"].sha256).unwrap().as_deref(), Some(&b"hello"[..]));
        // A damaged content counts as missing and is removed.
        let path = s.blob_file(&r.files["global/a"].sha256).unwrap();
        std::fs::write(&path, "HELLO").unwrap();
        assert_eq!(s.blob(&r.files["global/a"].sha256).unwrap(), None);
        assert!(!path.exists());
        // A revision whose content went missing is dropped at open (to be fetched again).
        assert!(Store::open(dir.path()).unwrap().summaries().is_empty());
        let mut s = Store::open(dir.path()).unwrap();
        s.put_blob(b"hello").unwrap();
        s.insert(r.clone()).unwrap();
        // A damaged document is removed at open.
        std::fs::write(dir.path().join("revisions").join(format!("{}.json", r.id())), "{").unwrap();
        assert!(Store::open(dir.path()).unwrap().summaries().is_empty());
    }

    /// A revision stored here that breaks the numbering rule (a document edited by hand, its id
    /// recomputed) is removed at open with every revision on top of it: every other node
    /// refuses them, and this node took the forged one for its head.
    #[test]
    fn a_misnumbered_revision_and_those_on_it_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.put_blob(b"x").unwrap();
        let r1 = rev(1, vec![], &[("global/a", "x")]);
        let r2 = rev(2, vec![r1.id()], &[("global/a", "x")]);
        let forged = rev(1000, vec![r2.id()], &[("global/a", "x")]);
        let on_it = rev(1001, vec![forged.id()], &[("global/a", "x")]);
        for r in [&r1, &r2, &forged, &on_it] {
            s.insert(r.clone()).unwrap();
        }
        assert!(s.check_numbering(&forged).is_err());
        let s = Store::open(dir.path()).unwrap();
        let kept: Vec<u64> = s.summaries().values().map(|x| x.number).collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(s.heads()[0].number, 2);
        assert!(!dir.path().join("revisions").join(format!("{}.json", forged.id())).exists());
    }

    #[test]
    fn pruning_keeps_the_newest_and_every_head_and_drops_unnamed_contents() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let mut parent = vec![];
        let mut first = String::new();
        for n in 1..=(KEEP_REVISIONS as u64 + 3) {
            let content = format!("v{n}");
            s.put_blob(content.as_bytes()).unwrap();
            let r = rev(n, parent, &[("global/a", &content)]);
            parent = vec![r.id()];
            if n == 1 {
                first = r.files["global/a"].sha256.clone();
            }
            s.insert(r).unwrap();
        }
        assert_eq!(s.prune("").unwrap(), 3);
        assert_eq!(s.summaries().len(), KEEP_REVISIONS);
        assert!(!s.has_blob(&first));
        assert_eq!(s.heads().len(), 1);
        assert_eq!(s.heads()[0].number, KEEP_REVISIONS as u64 + 3);
    }
}
