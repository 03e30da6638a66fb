//! The RFC 6962 / RFC 9162 Merkle tree over audit records: leaf and node
//! hashes, an append-only tree that keeps only its perfect subtrees,
//! inclusion and consistency proofs, and their verification.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of an empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (n >= 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH over leaf hashes (recursive; for proofs and tests).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// An append-only tree that keeps the roots of its perfect subtrees only
/// (at most 64), so appending and computing the root are O(log n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    size: u64,
    /// Roots of the perfect subtrees, largest (leftmost) first.
    stack: Vec<Hash>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing one bit of the old size is a perfect subtree to merge.
        while size & 1 == 1 {
            let left = self.stack.pop().expect("a subtree per one bit");
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.stack.push(hash);
        self.size += 1;
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        let mut iter = self.stack.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// The inclusion proof of leaf `index` in the tree of `leaves`.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n as u64) as usize;
    if index < k {
        let mut path = inclusion_proof(index, &leaves[..k]);
        path.push(root_of(&leaves[k..]));
        path
    } else {
        let mut path = inclusion_proof(index - k, &leaves[k..]);
        path.push(root_of(&leaves[..k]));
        path
    }
}

/// Check an inclusion proof (RFC 9162, 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// The consistency proof between the first `m` leaves and all of `leaves`.
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    if m == 0 || m >= leaves.len() {
        return Vec::new();
    }
    subproof(m, leaves, true)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if complete {
            Vec::new()
        } else {
            vec![root_of(leaves)]
        };
    }
    let k = split(n as u64) as usize;
    if m <= k {
        let mut proof = subproof(m, &leaves[..k], complete);
        proof.push(root_of(&leaves[k..]));
        proof
    } else {
        let mut proof = subproof(m - k, &leaves[k..], false);
        proof.push(root_of(&leaves[..k]));
        proof
    }
}

/// Check a consistency proof between a tree of `first` leaves with root
/// `first_root` and one of `second` leaves with root `second_root`
/// (RFC 9162, 2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((start, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*start, *start);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    &fr == first_root && &sr == second_root && s == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("record {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn empty_and_single_leaf_roots_follow_rfc_6962() {
        assert_eq!(
            empty_root()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962 test vector: the leaf hash of the empty string.
        assert_eq!(
            leaf_hash(b"")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn incremental_tree_matches_the_recursive_definition() {
        let all = leaves(70);
        let mut tree = Tree::new();
        assert_eq!(tree.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            tree.push(*leaf);
            assert_eq!(tree.root(), root_of(&all[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_reject_tampering() {
        let all = leaves(23);
        let root = root_of(&all);
        for i in 0..all.len() {
            let proof = inclusion_proof(i, &all);
            assert!(
                verify_inclusion(i as u64, 23, &all[i], &proof, &root),
                "leaf {i}"
            );
            assert!(!verify_inclusion(
                i as u64,
                23,
                &leaf_hash(b"forged"),
                &proof,
                &root
            ));
        }
    }

    #[test]
    fn consistency_proofs_verify_for_every_pair_and_reject_forks() {
        let all = leaves(33);
        for n in 1..=all.len() {
            let second = root_of(&all[..n]);
            for m in 1..=n {
                let first = root_of(&all[..m]);
                let proof = consistency_proof(m, &all[..n]);
                assert!(
                    verify_consistency(m as u64, n as u64, &first, &second, &proof),
                    "{m} -> {n}"
                );
                if m < n {
                    let mut forked = all[..n].to_vec();
                    forked[m - 1] = leaf_hash(b"rewritten");
                    assert!(
                        !verify_consistency(m as u64, n as u64, &first, &root_of(&forked), &proof),
                        "a rewritten history is not consistent: {m} -> {n}"
                    );
                }
            }
        }
    }
}
