//! Which nodes keep the copies of a record: rendezvous (highest random weight) hashing.
//!
//! For a record key, every live node other than the owner gets the weight
//! `fnv1a64(node ++ 0xff ++ key)` (mixed by a 64-bit finalizer); the `copies` heaviest keep a
//! copy each. A node joining takes over only the copies it now weighs enough for, and a node
//! leaving hands its copies to the next-heaviest node: nothing else moves.
//!
//! The heaviest live node overall ([`first_holder`]) is therefore always the owner or one of
//! the replicas: a lookup can ask that one node instead of all of them.

/// The nodes among `members` (not `owner`) that keep a copy of `key`: the `copies` heaviest,
/// heaviest first (fewer when there are fewer other members).
pub fn replicas_for<'a>(
    key: &[u8],
    owner: &str,
    members: impl IntoIterator<Item = &'a str>,
    copies: usize,
) -> Vec<&'a str> {
    let mut weighed: Vec<(u64, &str)> =
        members.into_iter().filter(|m| *m != owner).map(|m| (weight(m, key), m)).collect();
    weighed.sort_unstable_by(|a, b| b.cmp(a));
    weighed.dedup_by(|a, b| a.1 == b.1);
    weighed.into_iter().take(copies).map(|(_, m)| m).collect()
}

/// The node among `members` (not `owner`) that keeps the first copy of `key` (the heaviest);
/// `None` if there is none.
pub fn replica_for<'a>(key: &[u8], owner: &str, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members.into_iter().filter(|m| *m != owner).map(|m| (weight(m, key), m)).max().map(|(_, m)| m)
}

/// The node among `members` with the highest weight for `key`: it holds the record whenever
/// its owner is among `members` and copies are up to date (it is the owner, or else the heaviest
/// of the others: the replica). A lookup asks it alone first.
pub fn first_holder<'a>(key: &[u8], members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members.into_iter().map(|m| (weight(m, key), m)).max().map(|(_, m)| m)
}

/// The weight of `node` for `key`.
pub fn weight(node: &str, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in node.as_bytes().iter().chain(&[0xff]).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV alone spreads short keys that differ in the last byte poorly: finish with a mixer.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_the_owner_and_spread_evenly() {
        let nodes = ["a", "b", "c", "d"];
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..40_000u32 {
            let key = format!("smsc\0{i}");
            let r = replica_for(key.as_bytes(), "a", nodes).unwrap();
            assert_ne!(r, "a");
            *counts.entry(r).or_insert(0) += 1;
        }
        for (node, n) in &counts {
            assert!((12_000..14_700).contains(n), "{node}: {n}");
        }
        assert_eq!(replica_for(b"k", "a", ["a"]), None);
    }

    #[test]
    fn the_first_holder_is_the_owner_or_its_replica() {
        let nodes = ["a", "b", "c", "d"];
        for i in 0..5_000u32 {
            let key = format!("smsc\0{i}");
            let first = first_holder(key.as_bytes(), nodes).unwrap();
            for owner in nodes {
                let replica = replica_for(key.as_bytes(), owner, nodes).unwrap();
                assert!(first == owner || first == replica, "{i}: first {first}, owner {owner}, replica {replica}");
            }
        }
        assert_eq!(first_holder(b"k", std::iter::empty()), None);
    }

    #[test]
    fn copies_go_to_the_heaviest_others_and_a_join_moves_only_the_joiners() {
        let before = ["a", "b", "c", "d"];
        let after = ["a", "b", "c", "d", "e"];
        for i in 0..5_000u32 {
            let key = format!("smsc\0{i}");
            let two = replicas_for(key.as_bytes(), "a", before, 2);
            assert_eq!(two.len(), 2);
            assert!(!two.contains(&"a") && two[0] != two[1], "{two:?}");
            assert_eq!(Some(two[0]), replica_for(key.as_bytes(), "a", before));
            assert!(weight(two[0], key.as_bytes()) >= weight(two[1], key.as_bytes()));
            // The first holder is the owner or one of its copies, whatever the owner.
            let first = first_holder(key.as_bytes(), before).unwrap();
            for owner in before {
                let copies = replicas_for(key.as_bytes(), owner, before, 2);
                assert!(first == owner || copies.contains(&first), "{i}: {first} {owner} {copies:?}");
            }
            // A join: the new set is the old one, or the joiner in place of the lightest.
            let now = replicas_for(key.as_bytes(), "a", after, 2);
            let kept = now.iter().filter(|n| two.contains(n)).count();
            assert!(kept == 2 || (kept == 1 && now.contains(&"e")), "{i}: {two:?} -> {now:?}");
        }
        // More copies than other members: every other member, once.
        assert_eq!(replicas_for(b"k", "a", ["a", "b", "b", "c"], 5).len(), 2);
        assert!(replicas_for(b"k", "a", ["a"], 3).is_empty());
    }

    #[test]
    fn a_join_moves_only_what_the_joiner_takes() {
        let before = ["a", "b", "c"];
        let after = ["a", "b", "c", "d"];
        for i in 0..5_000u32 {
            let key = i.to_be_bytes();
            let (x, y) = (replica_for(&key, "a", before).unwrap(), replica_for(&key, "a", after).unwrap());
            assert!(x == y || y == "d", "{i}: {x} -> {y}");
        }
    }
}
