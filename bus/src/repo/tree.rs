//! Trees: the paths a revision may carry, its layers, and reading a directory into one.
//!
//! A path is `<layer>/<file path>` with `/` separators: `global/` applies to every node,
//! `default/` to the nodes of no named subcluster, `<subcluster>/` to the nodes of that
//! subcluster, `<node>/` to one node. A node's view ([`view`]) lays them over each other in that
//! order (global, then its subcluster or `default`, then its own), the later layer winning for the
//! same file path.

use std::collections::BTreeMap;
use std::path::Path;

use super::{FileEntry, RepoError, MAX_FILES, MAX_FILE_BYTES, MAX_TREE_BYTES};

/// The layer every node reads.
pub const GLOBAL: &str = "global";
/// The layer of nodes in no named subcluster.
pub const DEFAULT: &str = "default";
/// The cluster's limits, a file of the repository (docs/limits-api.md).
pub const LIMITS_FILE: &str = "global/limits.toml";
/// Longest path.
pub const MAX_PATH: usize = 1024;
/// The file in every node's working tree that names its revision (`<number> <id>`): a name
/// the repository's own files cannot take at the top of a layer.
pub const REVISION_FILE: &str = ".switchboard-revision";

/// Check that `path` can name a file of a revision.
pub fn check_path(path: &str) -> Result<(), RepoError> {
    let bad = |why| Err(RepoError::Path { path: path.to_owned(), why });
    if path.len() > MAX_PATH {
        return bad("longer than 1024 bytes");
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 2 {
        return bad("a file must be inside a layer (global/, default/, <subcluster>/ or <node>/)");
    }
    if parts.len() == 2 && parts[1] == REVISION_FILE {
        return bad("`.switchboard-revision` at the top of a layer is the file each node writes to name its revision");
    }
    for p in &parts {
        if p.is_empty() || *p == "." || *p == ".." {
            return bad("empty, `.` or `..` component");
        }
        if p.bytes().any(|b| b == 0 || b == b'\\' || b.is_ascii_control()) {
            return bad("control character or backslash");
        }
    }
    if crate::keys::check_chunk(parts[0]).is_err() {
        return bad("the layer is not a valid node or subcluster name");
    }
    Ok(())
}

/// Read every regular file under `dir` into a tree (path → content). `.git` directories are
/// skipped; a symbolic link, a file outside every layer or a bound passed is an error.
pub fn read_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, RepoError> {
    let mut out = BTreeMap::new();
    let mut total = 0u64;
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = stack.pop() {
        let io = |source| RepoError::Io { path: at.clone(), source };
        let mut entries: Vec<_> = std::fs::read_dir(&at).map_err(io)?.collect::<Result<_, _>>().map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                return Err(RepoError::Path { path: format!("{prefix}{}", name.to_string_lossy()), why: "not UTF-8" });
            };
            let path = format!("{prefix}{name}");
            let kind = e.file_type().map_err(|source| RepoError::Io { path: e.path(), source })?;
            if kind.is_dir() {
                if name != ".git" {
                    stack.push((e.path(), format!("{path}/")));
                }
            } else if kind.is_file() {
                check_path(&path)?;
                let content = std::fs::read(e.path()).map_err(|source| RepoError::Io { path: e.path(), source })?;
                let size = content.len() as u64;
                if size > MAX_FILE_BYTES {
                    return Err(RepoError::TooBig(format!("{path}: {size} bytes (at most {MAX_FILE_BYTES})")));
                }
                total = total.saturating_add(size);
                if out.len() >= MAX_FILES {
                    return Err(RepoError::TooBig(format!("{}: more than {MAX_FILES} files", dir.display())));
                }
                if total > MAX_TREE_BYTES {
                    return Err(RepoError::TooBig(format!(
                        "{}: more than {MAX_TREE_BYTES} bytes (40 MiB) in all",
                        dir.display()
                    )));
                }
                out.insert(path, content);
            } else {
                return Err(RepoError::Path {
                    path,
                    why: "not a regular file or directory (symbolic links are refused)",
                });
            }
        }
    }
    check_layers_agree(out.keys().map(String::as_str))?;
    Ok(out)
}

/// Refuse a path that is a file in one layer and a directory in another (`global/x` and
/// `gw1/x/y`): a node that reads both layers could not hold both. Layers are not known to be
/// nodes or subclusters here, so every pair of layers counts.
pub fn check_layers_agree<'a>(paths: impl Iterator<Item = &'a str>) -> Result<(), RepoError> {
    let mut files: BTreeMap<&str, &str> = BTreeMap::new();
    let mut dirs: BTreeMap<&str, &str> = BTreeMap::new();
    for path in paths {
        let Some((layer, rest)) = path.split_once('/') else { continue };
        files.entry(rest).or_insert(path);
        for (i, b) in rest.bytes().enumerate() {
            if b == b'/' {
                dirs.entry(&rest[..i]).or_insert(layer);
            }
        }
    }
    for (dir, layer) in dirs {
        if let Some(file) = files.get(dir) {
            return Err(RepoError::Path {
                path: format!("{file} (and {layer}/{dir}/)"),
                why: "a file in one layer and a directory in another: a node that reads both cannot hold both; rename one",
            });
        }
    }
    Ok(())
}

/// The files of `files` that apply to `node` of `subcluster` (`None`: the default one), by their
/// path inside the layer, each from the last layer that has it (global, subcluster, node).
pub fn view<'a>(
    files: &'a BTreeMap<String, FileEntry>,
    node: &str,
    subcluster: Option<&str>,
) -> BTreeMap<String, &'a FileEntry> {
    let layers = [GLOBAL, subcluster.unwrap_or(DEFAULT), node];
    let mut out = BTreeMap::new();
    for layer in layers {
        let prefix = format!("{layer}/");
        for (path, f) in files.range(prefix.clone()..) {
            let Some(rest) = path.strip_prefix(&prefix) else { break };
            out.insert(rest.to_owned(), f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_one_layer_and_a_directory_of_its_name_in_another_are_refused() {
        let e = check_layers_agree(["global/clash", "gw1/clash/inner.conf"].into_iter()).unwrap_err();
        assert_eq!(
            e.to_string(),
            RepoError::Path {
                path: "global/clash (and gw1/clash/)".into(),
                why: "a file in one layer and a directory in another: a node that reads both cannot hold both; rename one",
            }
            .to_string()
        );
        assert!(check_layers_agree(["global/d/a", "gw2/d"].into_iter()).is_err(), "either way round");
        check_layers_agree(["global/d/a", "gw1/d/b", "gw1/e", "eu/f/g"].into_iter()).unwrap();
    }

    #[test]
    fn paths_must_sit_inside_a_layer_and_stay_inside_the_tree() {
        for ok in ["global/a.conf", "gw1/sub/dir/x", "default/.hidden"] {
            check_path(ok).unwrap();
        }
        check_path("gw1/sub/.switchboard-revision").unwrap();
        for bad in [
            "a.conf",
            "gw1/.switchboard-revision",
            "global/../x",
            "global//x",
            "/global/x",
            "global/./x",
            "g*/x",
            "global/a\\b",
            "global/",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_view_lays_node_over_subcluster_over_global() {
        let e = |c: &str| FileEntry::of(c.as_bytes());
        let files: BTreeMap<String, FileEntry> = [
            ("global/a", e("g")),
            ("global/b", e("g")),
            ("default/b", e("d")),
            ("eu/b", e("eu")),
            ("gw1/a", e("n")),
            ("gw2/a", e("other")),
            ("globalx/a", e("not a layer of gw1")),
        ]
        .into_iter()
        .map(|(p, f)| (p.to_string(), f))
        .collect();
        let v = view(&files, "gw1", None);
        assert_eq!(v.len(), 2);
        assert_eq!(v["a"], &e("n"));
        assert_eq!(v["b"], &e("d"));
        assert_eq!(view(&files, "gw1", Some("eu"))["b"], &e("eu"));
        assert_eq!(view(&files, "gw3", None)["a"], &e("g"));
    }

    #[test]
    fn reading_a_directory_skips_git_and_refuses_links_and_loose_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("global/sub")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "x").unwrap();
        std::fs::write(dir.path().join("global/sub/a"), "1").unwrap();
        let t = read_dir(dir.path()).unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), ["global/sub/a"]);
        std::fs::write(dir.path().join("loose"), "1").unwrap();
        assert!(read_dir(dir.path()).is_err());
        std::fs::remove_file(dir.path().join("loose")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("global/link")).unwrap();
        assert!(read_dir(dir.path()).is_err());
    }
}
