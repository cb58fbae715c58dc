//! The working directory: a symbolic link switched atomically between materialized trees.
//!
//! Each applied revision is written as a whole tree in `<dir>.revisions/r<number>-<short id>/` (short id: the first 8 hex digits; files
//! the revision did not change are hard links to the current tree's), flushed (what was written,
//! [`sync_files`]), then `<dir>` is pointed at it by creating a new link and renaming it
//! over the old one: a reader that resolves `<dir>` once sees one revision, whole. Every tree
//! holds `.switchboard-revision` (`<number> <id>`). What Switchboard wrote is kept as a
//! [`Manifest`]; [`WorkTree::scan`] compares the tree on disk with it to find local edits (size
//! and modification time first, the hash only when they differ).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use switchboard_bus::repo::store::sync_files;
use switchboard_bus::repo::wire::LocalEdit;
use switchboard_bus::repo::{sha256_hex, Change, RepoError};

pub use switchboard_bus::repo::tree::REVISION_FILE;

/// What Switchboard wrote at one path of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// SHA-256 of the revision's content for this path.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// Modification time of the file as written, in nanoseconds (`None`: a local edit was
    /// carried over, so the file is hashed at every scan).
    pub mtime_ns: Option<u128>,
}

/// Path (inside the tree) → what was written there.
pub type Manifest = BTreeMap<String, Written>;

/// One file of a new tree: the repository's hash and size for it (`None`: a file made here that
/// the repository does not have), and where its bytes come from.
pub type Planned = (Option<(String, u64)>, Source);

/// Where one file of a new tree comes from.
pub enum Source {
    /// A content of the store (a file).
    Content(PathBuf),
    /// The current tree's file at the same path (a local edit carried over).
    Local,
    /// The current tree's file at the same path, unchanged and unedited: hard-linked into the new
    /// tree rather than copied (copied where a link cannot be made).
    Unchanged,
    /// No file: removed by hand and left alone by the revision. The manifest keeps it, so the
    /// removal is still reported (and a revision that changes the file is still blocked).
    Absent,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io { path: path.to_path_buf(), source }
}

fn mtime_ns(meta: &std::fs::Metadata) -> Option<u128> {
    meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos())
}

/// Check that `link` can be the working directory (it ends in a UTF-8 name and is not a file or
/// directory of someone else's); its name. Touches nothing.
pub fn check_link(link: &Path) -> Result<&str, RepoError> {
    let name = link.file_name().and_then(|n| n.to_str()).ok_or_else(|| RepoError::Path {
        path: link.display().to_string(),
        why: "the working directory must end in a UTF-8 name",
    })?;
    if std::fs::symlink_metadata(link).is_ok_and(|m| !m.file_type().is_symlink()) {
        return Err(RepoError::Invalid(format!(
            "{} exists and is not a link Switchboard made: move it away (and push its files in layers, e.g. \
             under global/, with `switchboard config push`) or set cluster_config.dir elsewhere",
            link.display()
        )));
    }
    Ok(name)
}

/// The working directory of one node.
pub struct WorkTree {
    link: PathBuf,
    trees: PathBuf,
}

impl WorkTree {
    /// The working directory at `link`; refuses a `link` that exists and is not a symbolic link
    /// (a directory an operator made must not be replaced).
    pub fn open(link: &Path) -> Result<Self, RepoError> {
        let name = check_link(link)?;
        let trees = link.with_file_name(format!("{name}.revisions"));
        std::fs::create_dir_all(&trees).map_err(io(&trees))?;
        Ok(Self { link: link.to_path_buf(), trees })
    }

    /// The link.
    pub fn link(&self) -> &Path {
        &self.link
    }

    /// The tree the link points at, if any.
    pub fn current(&self) -> Option<PathBuf> {
        let target = std::fs::read_link(&self.link).ok()?;
        let full = if target.is_absolute() { target } else { self.link.parent()?.join(target) };
        full.is_dir().then_some(full)
    }

    /// The name of the tree the link points at.
    pub fn current_name(&self) -> Option<String> {
        self.current()?.file_name()?.to_str().map(str::to_owned)
    }

    /// Whether tree `name` is there (whatever the link points at).
    pub fn has_tree(&self, name: &str) -> bool {
        self.trees.join(name).is_dir()
    }

    /// The files of tree `tree` that differ from `manifest`; `None` when the link does not point
    /// at that tree (re-pointed by hand: whatever it points at is not read, and the link is put
    /// back at its next look).
    pub fn scan(&self, tree: &str, manifest: &Manifest) -> Result<Option<Vec<LocalEdit>>, RepoError> {
        let root = self.trees.join(tree);
        let points_at = |p: &Path| std::fs::canonicalize(p).ok();
        if points_at(&self.link).is_none_or(|at| Some(at) != points_at(&root)) {
            return Ok(None);
        }
        let mut edits = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = vec![(root.clone(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for e in entries.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
                let path = format!("{prefix}{name}");
                let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
                if meta.is_dir() {
                    stack.push((e.path(), format!("{path}/")));
                    continue;
                }
                if path == REVISION_FILE {
                    continue;
                }
                seen.insert(path.clone());
                let Some(w) = manifest.get(&path) else {
                    edits.push(LocalEdit { path, change: Change::Added });
                    continue;
                };
                if meta.len() == w.size && w.mtime_ns.is_some() && mtime_ns(&meta) == w.mtime_ns {
                    continue;
                }
                let same = meta.is_file() && std::fs::read(e.path()).is_ok_and(|b| sha256_hex(&b) == w.sha256);
                if !same {
                    edits.push(LocalEdit { path, change: Change::Modified });
                }
            }
        }
        edits.extend(
            manifest
                .keys()
                .filter(|p| !seen.contains(*p))
                .map(|p| LocalEdit { path: p.clone(), change: Change::Removed }),
        );
        edits.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Some(edits))
    }

    /// SHA-256 of the current tree's file at `path` (`None`: no such file).
    pub fn local_hash(&self, path: &str) -> Option<String> {
        std::fs::read(self.current()?.join(path)).ok().map(|b| sha256_hex(&b))
    }

    /// Write a new tree `name` holding `files` (path → (the revision's content hash and size, or
    /// `None` for a file the repository does not have; where the bytes come from)) and the revision
    /// file; flushed before it returns. Returns what was written for the repository's files.
    pub fn build(
        &self,
        name: &str,
        revision_line: &str,
        files: &BTreeMap<String, Planned>,
    ) -> Result<Manifest, RepoError> {
        let building = self.trees.join(format!("{name}.building"));
        let done = self.trees.join(name);
        for stale in [&building, &done] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(io(stale))?;
            }
        }
        std::fs::create_dir_all(&building).map_err(io(&building))?;
        let built = self.fill(&building, &done, revision_line, files);
        if built.is_err() {
            // Half a tree helps nobody, and no later pruning would find it.
            let _ = std::fs::remove_dir_all(&building);
        }
        built
    }

    /// [`build`](Self::build) in `building`, renamed to `done` once complete.
    fn fill(
        &self,
        building: &Path,
        done: &Path,
        revision_line: &str,
        files: &BTreeMap<String, Planned>,
    ) -> Result<Manifest, RepoError> {
        let building = building.to_path_buf();
        let current = self.current();
        let mut manifest = Manifest::new();
        // Files copied, and every directory of the tree: what must reach the disk.
        let mut written: Vec<PathBuf> = Vec::new();
        let mut dirs: std::collections::BTreeSet<PathBuf> = [building.clone()].into();
        for (path, (entry, source)) in files {
            if let (Source::Absent, Some((sha256, size))) = (source, entry) {
                manifest.insert(path.clone(), Written { sha256: sha256.clone(), size: *size, mtime_ns: None });
                continue;
            }
            let to = building.join(path);
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                dirs.insert(dir.to_path_buf());
            }
            let (from, carried) = match (source, &current) {
                (Source::Content(p), _) => (p.clone(), false),
                (Source::Local | Source::Unchanged, Some(c)) => (c.join(path), matches!(source, Source::Local)),
                (Source::Absent, _) => continue,
                (_, None) => return Err(RepoError::Invalid(format!("{path}: no current tree to take it from"))),
            };
            let linked = matches!(source, Source::Unchanged) && std::fs::hard_link(&from, &to).is_ok();
            if let (Source::Content(_), Some((sha256, _))) = (source, entry) {
                // From the store: checked on the way, so a damaged content never reaches the tree.
                let bytes = std::fs::read(&from).map_err(io(&from))?;
                if sha256_hex(&bytes) != *sha256 {
                    return Err(RepoError::HashMismatch(sha256.clone()));
                }
                std::fs::write(&to, bytes).map_err(io(&to))?;
                written.push(to.clone());
            } else if !linked {
                std::fs::copy(&from, &to).map_err(io(&from))?;
                written.push(to.clone());
            }
            let meta = std::fs::metadata(&to).map_err(io(&to))?;
            if let Some((sha256, size)) = entry {
                let mtime = if carried { None } else { mtime_ns(&meta) };
                manifest.insert(path.clone(), Written { sha256: sha256.clone(), size: *size, mtime_ns: mtime });
            }
        }
        std::fs::write(building.join(REVISION_FILE), revision_line).map_err(io(&building))?;
        written.push(building.join(REVISION_FILE));
        // Nested directories too: a parent may only have been created implicitly.
        for d in dirs.clone() {
            dirs.extend(d.ancestors().take_while(|a| a.starts_with(&building)).map(Path::to_path_buf));
        }
        written.extend(dirs);
        sync_files(&written)?;
        std::fs::rename(&building, done).map_err(io(done))?;
        sync_files(std::slice::from_ref(&self.trees))?;
        Ok(manifest)
    }

    /// Point the link at tree `name`, atomically.
    pub fn switch(&self, name: &str) -> Result<(), RepoError> {
        let dir_name = self.trees.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let target = PathBuf::from(dir_name).join(name);
        let tmp = self.link.with_file_name(format!(
            ".{}.switching",
            self.link.file_name().and_then(|n| n.to_str()).unwrap_or_default()
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.link).map_err(io(&self.link))?;
        if let Some(parent) = self.link.parent() {
            std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io(parent))?;
        }
        Ok(())
    }

    /// Remove trees beyond the `keep` newest, never one named in `protect`.
    pub fn prune(&self, keep: usize, protect: &[&str]) {
        let Ok(entries) = std::fs::read_dir(&self.trees) else { return };
        let mut trees: Vec<(std::time::SystemTime, PathBuf, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let at = e.metadata().ok()?.modified().ok()?;
                Some((at, e.path(), name))
            })
            .collect();
        trees.sort_by_key(|t| std::cmp::Reverse(t.0));
        for (_, path, name) in trees.into_iter().skip(keep) {
            if !protect.contains(&name.as_str()) {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an old configuration tree");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(dir: &Path, text: &str) -> Planned {
        let p = dir.join(sha256_hex(text.as_bytes()));
        std::fs::write(&p, text).unwrap();
        (Some((sha256_hex(text.as_bytes()), text.len() as u64)), Source::Content(p))
    }

    #[test]
    fn trees_switch_atomically_and_local_edits_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let wt = WorkTree::open(&dir.path().join("etc/current")).unwrap();
        assert_eq!(wt.current(), None);
        let files = BTreeMap::from([
            ("a.conf".to_string(), content(&blobs, "a1")),
            ("sub/b.conf".to_string(), content(&blobs, "b1")),
        ]);
        let manifest = wt.build("r1-x", "1 x\n", &files).unwrap();
        wt.switch("r1-x").unwrap();
        assert_eq!(std::fs::read_to_string(wt.link().join("sub/b.conf")).unwrap(), "b1");
        assert_eq!(std::fs::read_to_string(wt.link().join(REVISION_FILE)).unwrap(), "1 x\n");
        assert!(wt.scan("r1-x", &manifest).unwrap().unwrap().is_empty());
        // A link pointed elsewhere by hand: what it points at is not read as the tree.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("e.conf"), "x").unwrap();
        let tmp_link = dir.path().join("etc/tmp-link");
        std::os::unix::fs::symlink(&elsewhere, &tmp_link).unwrap();
        std::fs::rename(&tmp_link, wt.link()).unwrap();
        assert_eq!(wt.scan("r1-x", &manifest).unwrap(), None);
        wt.switch("r1-x").unwrap();
        assert!(wt.scan("r1-x", &manifest).unwrap().unwrap().is_empty());
        std::fs::write(wt.link().join("a.conf"), "edited").unwrap();
        std::fs::write(wt.link().join("new.conf"), "x").unwrap();
        std::fs::remove_file(wt.link().join("sub/b.conf")).unwrap();
        let edits: Vec<(String, Change)> =
            wt.scan("r1-x", &manifest).unwrap().unwrap().into_iter().map(|e| (e.path, e.change)).collect();
        assert_eq!(
            edits,
            [
                ("a.conf".to_string(), Change::Modified),
                ("new.conf".to_string(), Change::Added),
                ("sub/b.conf".to_string(), Change::Removed)
            ]
        );
        // A carried local edit stays an edit; the next tree replaces the link in one rename.
        let files = BTreeMap::from([
            ("a.conf".to_string(), (Some((sha256_hex(b"a1"), 2)), Source::Local)),
            ("new.conf".to_string(), (None, Source::Local)),
            ("sub/b.conf".to_string(), (Some((sha256_hex(b"b1"), 2)), Source::Absent)),
        ]);
        let m2 = wt.build("r2-y", "2 y\n", &files).unwrap();
        wt.switch("r2-y").unwrap();
        assert_eq!(wt.current_name().as_deref(), Some("r2-y"));
        assert_eq!(std::fs::read_to_string(wt.link().join("a.conf")).unwrap(), "edited");
        assert_eq!(
            wt.scan("r2-y", &m2).unwrap().unwrap().len(),
            3,
            "the carried edit, the carried new file and the kept removal are still edits"
        );
        assert!(!wt.link().join("sub/b.conf").exists());
        wt.prune(1, &["r2-y"]);
        assert!(wt.current().is_some());
        assert_eq!(std::fs::read_dir(dir.path().join("etc/current.revisions")).unwrap().count(), 1);
    }

    #[test]
    fn a_real_directory_in_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        let err = WorkTree::open(&dir.path().join("conf")).err().unwrap().to_string();
        assert!(err.contains("not a link Switchboard made"), "{err}");
    }
}
