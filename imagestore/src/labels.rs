//! containerd's rules for labels and identifiers, and label updates by field mask.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use super::{Result, StoreError};

/// Longest key plus value of one label (containerd's `labels.Validate`).
const MAX_LABEL_SIZE: usize = 4096;
/// Longest identifier (containerd's `identifiers.Validate`).
const MAX_IDENTIFIER: usize = 76;

static IDENTIFIER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$").expect("regex"));

/// Checks every label's size.
pub fn validate(labels: &HashMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(StoreError::InvalidArgument(
                "label key must not be empty".into(),
            ));
        }
        if k.len() + v.len() > MAX_LABEL_SIZE {
            return Err(StoreError::InvalidArgument(format!(
                "label key and value length ({} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {k}",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

/// Checks a namespace, container or lease name as containerd does.
pub fn validate_identifier(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(StoreError::InvalidArgument(
            "identifier must not be empty".into(),
        ));
    }
    if id.len() > MAX_IDENTIFIER {
        return Err(StoreError::InvalidArgument(format!(
            "identifier {id:?} greater than maximum length ({MAX_IDENTIFIER} characters)"
        )));
    }
    if !IDENTIFIER.is_match(id) {
        return Err(StoreError::InvalidArgument(format!(
            "identifier {id:?} must match {}",
            IDENTIFIER.as_str()
        )));
    }
    Ok(())
}

/// Applies a label field path to `current`: `labels` replaces them all with `new`;
/// `labels.<key>` sets that key from `new`, or deletes it when `new` lacks it (or has it
/// empty). Whether `path` was a label path.
pub fn apply_path(
    current: &mut HashMap<String, String>,
    new: &HashMap<String, String>,
    path: &str,
) -> bool {
    if path == "labels" {
        *current = new.clone();
        current.retain(|_, v| !v.is_empty());
        return true;
    }
    let Some(key) = path.strip_prefix("labels.") else {
        return false;
    };
    match new.get(key).filter(|v| !v.is_empty()) {
        Some(v) => {
            current.insert(key.to_string(), v.clone());
        }
        None => {
            current.remove(key);
        }
    }
    true
}

/// The value of `<prefix>.<key>` in `map` for filters; an unquoted key with dots arrives
/// split, and is joined back as containerd does.
pub fn map_field<'a>(
    map: &'a HashMap<String, String>,
    prefix: &str,
    path: &[String],
) -> Option<&'a str> {
    match path {
        [f, rest @ ..] if f == prefix && !rest.is_empty() => {
            map.get(&rest.join(".")).map(String::as_str)
        }
        _ => None,
    }
}

/// The value of `labels.<key>` for filters.
pub fn field<'a>(labels: &'a HashMap<String, String>, path: &[String]) -> Option<&'a str> {
    map_field(labels, "labels", path)
}

/// A record seen through containerd's filter language (`snapshotter::Filters`): the
/// field paths of each kind are defined next to it.
pub(crate) struct Fields<'a, T>(pub &'a T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_containerd() {
        for good in ["default", "k8s.io", "a-b_c.d", "x1"] {
            validate_identifier(good).unwrap();
        }
        for bad in ["", "-a", "a-", "a..b", "a b", "ä", &"a".repeat(77)] {
            assert!(validate_identifier(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn label_sizes_and_paths() {
        let mut big = HashMap::new();
        big.insert("k".to_string(), "v".repeat(4095));
        validate(&big).unwrap();
        big.insert("k".to_string(), "v".repeat(4096));
        assert!(validate(&big).is_err());

        let mut cur = HashMap::from([("a".to_string(), "1".to_string())]);
        let new = HashMap::from([("b".to_string(), "2".to_string())]);
        assert!(apply_path(&mut cur, &new, "labels.b"));
        assert!(apply_path(&mut cur, &new, "labels.a"));
        assert_eq!(cur, new);
        assert!(!apply_path(&mut cur, &new, "target"));
    }
}
