//! The cluster's configuration repository: revisions of one directory tree, the same on every node.
//!
//! A [`Revision`] names every file of the tree by path and SHA-256, with a number, its parents,
//! an author, a time and a message; its id is the SHA-256 of its canonical JSON
//! ([`Revision::id`]), so a revision and every file it names can be fetched from any node and
//! checked. Revisions form a graph: one parent normally, several for a revision that settles a
//! conflict. Two revisions with no path between them (made on the two sides of a partition) are
//! both *heads*: a conflict, applied by nobody until `switchboard config resolve` makes one
//! revision whose parents are both ([`dag`]).
//!
//! - [`tree`]: paths, the layers (`global/`, `default/` or the subcluster, the node) and reading
//!   a directory into a tree;
//! - [`dag`]: heads, ancestors and the common ancestor of two revisions;
//! - [`store`]: a node's revisions and file contents on disk;
//! - [`client`]: what tools do: join every node's state, name revisions, push;
//! - [`wire`]: the documents on the bus (a [`Pack`] pushed, a [`NodeState`] answered) and the
//!   queries that fetch them.
//!
//! `docs/config-repository.md` is this module for operators, `docs/protocol.md` for clients.

pub mod client;
pub mod dag;
pub mod store;
pub mod tree;
pub mod wire;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest file a revision may carry.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Most files a revision may carry.
pub const MAX_FILES: usize = 10_000;
/// Largest tree (sum of its files) a revision may carry: a push of a whole tree, base64-encoded,
/// stays under the 64 MiB a zenoh message may have.
pub const MAX_TREE_BYTES: u64 = 40 << 20;
/// Most parents of one revision.
pub const MAX_PARENTS: usize = 16;
/// Longest message or author, in bytes.
pub const MAX_TEXT: usize = 4096;
/// Revisions a node keeps (the newest by number, and every head).
pub const KEEP_REVISIONS: usize = 1000;
/// How far above the highest number a node holds a revision's number may be (its parents not
/// all held there): room for any history, and no push can use up the numbers.
pub const MAX_NUMBER_JUMP: u64 = 1 << 32;

/// The repository's documents or files are not what they must be.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A path that cannot be in the tree.
    #[error("path {path:?}: {why}")]
    Path {
        /// The path.
        path: String,
        /// Why.
        why: &'static str,
    },
    /// A bound of the repository is passed.
    #[error("{0}")]
    TooBig(String),
    /// A document that does not parse or does not validate.
    #[error("{0}")]
    Invalid(String),
    /// Content that does not hash to the name it came under.
    #[error("content under {0} does not hash to it")]
    HashMismatch(String),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// SHA-256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut s = String::with_capacity(64);
    for b in digest.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Whether `s` is a SHA-256 in the form [`sha256_hex`] writes.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A tree: every file by path.
pub type Files = BTreeMap<String, FileEntry>;
/// File contents by SHA-256.
pub type Contents = BTreeMap<String, Vec<u8>>;

/// One file of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// SHA-256 of the content.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

impl FileEntry {
    /// The entry of `content`.
    pub fn of(content: &[u8]) -> Self {
        Self { sha256: sha256_hex(content), size: content.len() as u64 }
    }
}

/// One revision of the repository: the whole tree at one point, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    /// Always 1.
    pub version: u32,
    /// The parents' highest number plus one (1 for the first).
    pub number: u64,
    /// Ids of the revisions it follows: one, several when it settles a conflict, none for the first.
    pub parents: Vec<String>,
    /// Who made it (the certificate identity of the tool that pushed it, or `--author`).
    pub author: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Why (free text).
    pub message: String,
    /// Every file of the tree by path (`global/...`, `default/...`, `<subcluster>/...`, `<node>/...`).
    pub files: BTreeMap<String, FileEntry>,
}

impl Revision {
    /// The canonical JSON of the revision (its fields in order, files sorted by path).
    pub fn canonical(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The revision's id: SHA-256 of [`Self::canonical`].
    pub fn id(&self) -> String {
        sha256_hex(&self.canonical())
    }

    /// Check every field against the repository's rules and bounds.
    pub fn validate(&self) -> Result<(), RepoError> {
        if self.version != 1 {
            return Err(RepoError::Invalid(format!("revision version {} (this build reads 1)", self.version)));
        }
        if self.number == 0 {
            return Err(RepoError::Invalid("revision number 0 (numbers start at 1)".into()));
        }
        if self.parents.len() > MAX_PARENTS {
            return Err(RepoError::TooBig(format!("{} parents (at most {MAX_PARENTS})", self.parents.len())));
        }
        if let Some(p) = self.parents.iter().find(|p| !is_hash(p)) {
            return Err(RepoError::Invalid(format!("parent {p:?} is not a revision id")));
        }
        if self.author.len() > MAX_TEXT || self.message.len() > MAX_TEXT {
            return Err(RepoError::TooBig(format!("author or message longer than {MAX_TEXT} bytes")));
        }
        check_files(&self.files)
    }

    /// The revision without its files, as node states list it.
    pub fn summary(&self) -> Summary {
        Summary {
            id: self.id(),
            number: self.number,
            parents: self.parents.clone(),
            author: self.author.clone(),
            at_ms: self.at_ms,
            message: self.message.clone(),
        }
    }
}

/// Check a revision's files against the repository's bounds (count, paths, sizes).
pub fn check_files(files: &BTreeMap<String, FileEntry>) -> Result<(), RepoError> {
    if files.len() > MAX_FILES {
        return Err(RepoError::TooBig(format!("{} files (at most {MAX_FILES})", files.len())));
    }
    let mut total = 0u64;
    for (path, f) in files {
        tree::check_path(path)?;
        if !is_hash(&f.sha256) {
            return Err(RepoError::Invalid(format!("{path}: {:?} is not a SHA-256", f.sha256)));
        }
        if f.size > MAX_FILE_BYTES {
            return Err(RepoError::TooBig(format!("{path}: {} bytes (at most {MAX_FILE_BYTES})", f.size)));
        }
        total = total
            .checked_add(f.size)
            .filter(|t| *t <= MAX_TREE_BYTES)
            .ok_or_else(|| RepoError::TooBig(format!("the tree is larger than {MAX_TREE_BYTES} bytes")))?;
    }
    Ok(())
}

/// A revision without its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The revision's id.
    pub id: String,
    /// Its number.
    pub number: u64,
    /// Its parents' ids.
    pub parents: Vec<String>,
    /// Who made it.
    pub author: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Why.
    pub message: String,
}

impl Summary {
    /// `12 (3f2a9c01)`: the number and the id's first eight digits, as every output names a revision.
    pub fn label(&self) -> String {
        format!("{} ({})", self.number, short(&self.id))
    }
}

/// The first eight digits of an id.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// What changed from one tree to another, path by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// In the second tree only.
    Added,
    /// In both, with other content.
    Modified,
    /// In the first tree only.
    Removed,
}

/// The paths that differ between two trees, with how.
pub fn changes(from: &BTreeMap<String, FileEntry>, to: &BTreeMap<String, FileEntry>) -> Vec<(String, Change)> {
    let mut out = Vec::new();
    for (path, f) in to {
        match from.get(path) {
            None => out.push((path.clone(), Change::Added)),
            Some(old) if old != f => out.push((path.clone(), Change::Modified)),
            Some(_) => {}
        }
    }
    out.extend(from.keys().filter(|p| !to.contains_key(*p)).map(|p| (p.clone(), Change::Removed)));
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(files: &[(&str, &str)]) -> Revision {
        Revision {
            version: 1,
            number: 1,
            parents: vec![],
            author: "ops".into(),
            at_ms: 1,
            message: "m".into(),
            files: files.iter().map(|(p, c)| (p.to_string(), FileEntry::of(c.as_bytes()))).collect(),
        }
    }

    #[test]
    fn ids_are_the_hash_of_the_canonical_form_and_change_with_any_field() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let a = rev(&[("global/a.conf", "x")]);
        assert!(is_hash(&a.id()));
        let back: Revision = serde_json::from_slice(&a.canonical()).unwrap();
        assert_eq!(back.id(), a.id());
        let mut b = a.clone();
        b.message = "other".into();
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn validation_bounds_every_field() {
        assert!(rev(&[("global/a", "x")]).validate().is_ok());
        assert!(rev(&[("a", "x")]).validate().is_err(), "a file outside every layer");
        let mut r = rev(&[("global/a", "x")]);
        r.parents = vec!["nothex".into()];
        assert!(r.validate().is_err());
        let mut r = rev(&[("global/a", "x")]);
        r.files.get_mut("global/a").unwrap().size = MAX_FILE_BYTES + 1;
        assert!(matches!(r.validate(), Err(RepoError::TooBig(_))));
        let mut r = rev(&[]);
        for i in 0..5 {
            r.files.insert(format!("global/{i}"), FileEntry { sha256: sha256_hex(b""), size: MAX_FILE_BYTES });
        }
        assert!(matches!(r.validate(), Err(RepoError::TooBig(_))), "the tree's total is bounded");
        let mut r = rev(&[]);
        r.number = 0;
        assert!(r.validate().is_err());
    }

    #[test]
    fn changes_list_added_modified_and_removed_paths() {
        let a = rev(&[("global/a", "1"), ("global/b", "2")]).files;
        let b = rev(&[("global/a", "1"), ("global/b", "3"), ("gw1/c", "4")]).files;
        assert_eq!(changes(&a, &b), [("global/b".to_string(), Change::Modified), ("gw1/c".to_string(), Change::Added)]);
        assert_eq!(changes(&b, &a)[1], ("gw1/c".to_string(), Change::Removed));
    }
}
