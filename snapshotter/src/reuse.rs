//! Recognising a Prepare for a layer that is already committed, so that containerd adopts
//! the committed snapshot instead of fetching and applying the layer again.
//!
//! containerd's unpacker labels the Prepare of each layer with the chain ID it will be
//! committed as ([`SNAPSHOT_REF`]); 2.3 adds the parent's chain ID ([`PARENT_CHAIN_ID`], on
//! every layer but the first) and the layer's uncompressed digest ([`DIFF_ID`]). containerd
//! asks a snapshotter only when its own namespace lacks that chain, so an existing layer is
//! one another namespace (`k8s.io` and `default`, say) or another client unpacked. Its
//! remote-snapshot protocol then lets the snapshotter answer AlreadyExists: containerd
//! lists `labels."containerd.io/snapshot.ref"==<chain>,parent==<parent>`, takes the
//! committed snapshot it finds as its own and skips the layer. Both namespaces then refer to
//! one snapshot; containerd's collector keeps it while any of them does.
//!
//! Only a committed snapshot on the very parent asked for qualifies: what an overlay layer
//! directory holds depends on its parents (directories a layer implies take their owner and
//! mode from below), so a layer committed elsewhere is not reused even with the same diff
//! ID. The 2.3 labels, when present, must agree with everything else, or nothing is reused:
//! the chain ID must be the one the parent's chain and the diff ID make, the parent must be
//! the chain `parent-chain-id` names, and a candidate that recorded a diff ID must have this
//! one. A Prepare without a parent that names a parent chain is containerd 2.2's parallel
//! unpack (the parent comes at Commit): answering that with AlreadyExists would break it
//! (containerd issue 13264), so it always gets a fresh snapshot.

use sha2::{Digest, Sha256};

use crate::metastore::MetaStore;
use crate::{Kind, Labels, Result};
use heed::RoTxn;

/// The chain ID an extraction Prepare will be committed as (containerd 1.x and 2.x); the
/// uncompressed digest of the layer being unpacked and the chain ID of its parent, on all
/// but the first layer (containerd 2.3 and later).
pub use api::labels::{
    SNAPSHOT_DIFF_ID as DIFF_ID, SNAPSHOT_PARENT_CHAIN_ID as PARENT_CHAIN_ID, SNAPSHOT_REF,
};

/// What the labels of an extraction Prepare say about its layer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LayerClaim<'a> {
    chain: &'a str,
    diff_id: Option<&'a str>,
    parent_chain: Option<&'a str>,
}

impl<'a> LayerClaim<'a> {
    /// The claim of a Prepare labelled with a chain ID; `None` for any other Prepare.
    pub fn of(labels: &'a Labels) -> Option<Self> {
        let label = |name| {
            labels
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        Some(LayerClaim {
            chain: label(SNAPSHOT_REF)?,
            diff_id: label(DIFF_ID),
            parent_chain: label(PARENT_CHAIN_ID),
        })
    }

    /// Whether the chain ID is the one the parent chain and diff ID make, where the labels
    /// give them: the diff ID itself for a first layer, else
    /// `sha256:hex(sha256("<parent chain> <diff ID>"))`.
    fn adds_up(&self) -> bool {
        match (self.diff_id, self.parent_chain) {
            (Some(diff_id), None) => self.chain == diff_id,
            (Some(diff_id), Some(parent)) => self.chain == chain_id(parent, diff_id),
            (None, _) => true,
        }
    }
}

/// `sha256:` and the hex SHA-256 of `"<parent> <diff_id>"`: the OCI chain ID of a layer
/// above others.
pub fn chain_id(parent: &str, diff_id: &str) -> String {
    let digest = Sha256::digest(format!("{parent} {diff_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The committed snapshot on `parent` that already holds the layer `claim` describes, if
/// there is one and the labels are consistent.
pub(crate) fn committed_layer(
    store: &MetaStore,
    txn: &RoTxn,
    claim: &LayerClaim,
    parent: &str,
) -> Result<Option<String>> {
    if !claim.adds_up() {
        tracing::warn!(
            ?claim,
            "layer labels do not add up; not reusing a committed layer"
        );
        return Ok(None);
    }
    let siblings = if parent.is_empty() {
        if claim.parent_chain.is_some() {
            // Parallel unpack: the real parent comes at Commit.
            return Ok(None);
        }
        store
            .all(txn)?
            .into_iter()
            .filter(|(_, rec)| rec.parent.is_empty())
            .collect()
    } else {
        let parent_rec = store.require(txn, parent)?;
        let parent_chain = parent_rec.labels.get(SNAPSHOT_REF);
        if let (Some(claimed), Some(actual)) = (claim.parent_chain, parent_chain)
            && claimed != actual
        {
            tracing::warn!(
                ?claim,
                parent,
                parent_chain = actual,
                "parent is not the chain the labels name; not reusing a committed layer"
            );
            return Ok(None);
        }
        let mut siblings = Vec::new();
        for name in store.children(txn, parent)? {
            siblings.push((name.clone(), store.require(txn, &name)?));
        }
        siblings
    };
    Ok(siblings.into_iter().find_map(|(name, rec)| {
        let same_diff = match (claim.diff_id, rec.labels.get(DIFF_ID)) {
            (Some(wanted), Some(recorded)) => wanted == recorded,
            _ => true,
        };
        (rec.kind == Kind::Committed
            && rec.labels.get(SNAPSHOT_REF).map(String::as_str) == Some(claim.chain)
            && same_diff)
            .then_some(name)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn chain_ids_match_the_oci_definition() {
        // sha256 of "sha256:aa sha256:bb", computed with sha256sum.
        assert_eq!(
            chain_id("sha256:aa", "sha256:bb"),
            "sha256:b68ad689d6d1ec110ea1c13617437ad6f3766d4b3b309f6a603a222e07a0164f"
        );
    }

    #[test]
    fn claims_need_a_chain_id_and_must_add_up() {
        assert_eq!(LayerClaim::of(&labels(&[(DIFF_ID, "sha256:bb")])), None);
        let first = labels(&[(SNAPSHOT_REF, "sha256:bb"), (DIFF_ID, "sha256:bb")]);
        assert!(LayerClaim::of(&first).unwrap().adds_up());
        let wrong_first = labels(&[(SNAPSHOT_REF, "sha256:cc"), (DIFF_ID, "sha256:bb")]);
        assert!(!LayerClaim::of(&wrong_first).unwrap().adds_up());
        let above = chain_id("sha256:aa", "sha256:bb");
        let second = labels(&[
            (SNAPSHOT_REF, &above),
            (DIFF_ID, "sha256:bb"),
            (PARENT_CHAIN_ID, "sha256:aa"),
        ]);
        assert!(LayerClaim::of(&second).unwrap().adds_up());
        let wrong_parent = labels(&[
            (SNAPSHOT_REF, &above),
            (DIFF_ID, "sha256:bb"),
            (PARENT_CHAIN_ID, "sha256:ab"),
        ]);
        assert!(!LayerClaim::of(&wrong_parent).unwrap().adds_up());
        // Before 2.3 only the chain ID is there: nothing to check it against.
        assert!(
            LayerClaim::of(&labels(&[(SNAPSHOT_REF, "sha256:cc")]))
                .unwrap()
                .adds_up()
        );
    }
}
