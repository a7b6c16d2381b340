//! Rendezvous (highest random weight) hashing: every node ranks the fleet's nodes for a
//! digest the same way, so nodes that want a blob at the same moment agree, without talking,
//! on which one fetches it upstream (the first), and on who takes over when that one is
//! gone (the next). A node joining or leaving moves only the blobs it ranks first.

use sha2::{Digest as _, Sha256};

/// `nodes` (addresses) ordered for `digest`, the one to fetch it first.
pub fn rank(digest: &str, nodes: &[String]) -> Vec<String> {
    let mut scored: Vec<(u64, &String)> = nodes.iter().map(|n| (score(digest, n), n)).collect();
    // Ties (never in practice) broken by the address, so every node orders alike.
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, n)| n.clone()).collect()
}

/// The weight of `node` for `digest`: the first 8 bytes of SHA-256(digest NUL node).
fn score(digest: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(digest.as_bytes());
    h.update([0]);
    h.update(node.as_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.{}:5050", 10 + i)).collect()
    }

    /// The order is the same whatever order the nodes are listed in, blobs spread over
    /// the nodes, and removing a node moves only the blobs it ranked first.
    #[test]
    fn ranks_agree_spread_and_move_little() {
        let all = nodes(8);
        let mut reversed = all.clone();
        reversed.reverse();
        let mut firsts = std::collections::HashMap::new();
        let mut moved = 0;
        for i in 0..800 {
            let digest = format!("sha256:{i:064x}");
            let ranked = rank(&digest, &all);
            assert_eq!(ranked, rank(&digest, &reversed));
            assert_eq!(ranked.len(), 8);
            *firsts.entry(ranked[0].clone()).or_insert(0) += 1;
            let without: Vec<String> = all.iter().filter(|n| **n != all[3]).cloned().collect();
            let after = rank(&digest, &without);
            if ranked[0] == all[3] {
                assert_eq!(after[0], ranked[1], "the next node takes over");
                moved += 1;
            } else {
                assert_eq!(after[0], ranked[0], "only the gone node's blobs move");
            }
        }
        assert_eq!(firsts.len(), 8);
        assert!(
            firsts.values().all(|&n| (50..150).contains(&n)),
            "{firsts:?}"
        );
        assert!(moved > 0);
    }
}
