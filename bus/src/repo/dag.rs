//! The graph of revisions: heads, ancestors, and the common ancestor of two heads.
//!
//! Works on any map of id → [`Summary`]; a parent missing from the map (pruned, or not fetched
//! yet) ends the walk there.

use std::collections::{BTreeMap, BTreeSet};

use super::Summary;

/// The revisions no other revision of `known` follows, newest first (number, then id).
pub fn heads(known: &BTreeMap<String, Summary>) -> Vec<&Summary> {
    let followed: BTreeSet<&str> = known.values().flat_map(|s| s.parents.iter().map(String::as_str)).collect();
    let mut out: Vec<&Summary> = known.values().filter(|s| !followed.contains(s.id.as_str())).collect();
    out.sort_by(|a, b| (b.number, &b.id).cmp(&(a.number, &a.id)));
    out
}

/// `id` and every revision of `known` it follows, directly or not.
pub fn ancestors<'a>(known: &'a BTreeMap<String, Summary>, id: &'a str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![id];
    while let Some(at) = stack.pop() {
        if !seen.insert(at) {
            continue;
        }
        if let Some(s) = known.get(at) {
            stack.extend(s.parents.iter().map(String::as_str));
        }
    }
    seen
}

/// Whether `later` follows `earlier` (or is it).
pub fn follows(known: &BTreeMap<String, Summary>, later: &str, earlier: &str) -> bool {
    ancestors(known, later).contains(earlier)
}

/// The newest revision both `a` and `b` follow (or are), if `known` has one.
pub fn common_ancestor<'a>(known: &'a BTreeMap<String, Summary>, a: &'a str, b: &'a str) -> Option<&'a Summary> {
    let of_a = ancestors(known, a);
    let of_b = ancestors(known, b);
    of_a.intersection(&of_b).filter_map(|id| known.get(*id)).max_by(|x, y| (x.number, &x.id).cmp(&(y.number, &y.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str, number: u64, parents: &[&str]) -> (String, Summary) {
        let sum = Summary {
            id: id.into(),
            number,
            parents: parents.iter().map(|p| p.to_string()).collect(),
            author: String::new(),
            at_ms: 0,
            message: String::new(),
        };
        (id.into(), sum)
    }

    #[test]
    fn a_line_has_one_head_and_a_fork_two_until_a_merge() {
        let mut g: BTreeMap<_, _> = [s("a", 1, &[]), s("b", 2, &["a"])].into_iter().collect();
        assert_eq!(heads(&g).iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["b"]);
        g.extend([s("c", 3, &["b"]), s("d", 3, &["b"])]);
        assert_eq!(heads(&g).iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["d", "c"]);
        assert_eq!(common_ancestor(&g, "c", "d").map(|s| s.id.as_str()), Some("b"));
        assert!(follows(&g, "c", "a") && !follows(&g, "c", "d"));
        g.extend([s("e", 4, &["c", "d"])]);
        assert_eq!(heads(&g).iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["e"]);
    }

    #[test]
    fn a_missing_parent_ends_the_walk() {
        let g: BTreeMap<_, _> = [s("b", 2, &["pruned"]), s("c", 3, &["b"])].into_iter().collect();
        assert_eq!(heads(&g).len(), 1);
        assert_eq!(ancestors(&g, "c").len(), 3);
    }
}
