//! Conversions between the generated protobuf types and the snapshotter's domain types.

use std::time::SystemTime;

use snapshotter::{Info, Kind, Labels, Mount};
use tonic::Status;

use api::services::snapshots::v1 as pb;
use api::types as pbt;

/// Domain mount → wire mount.
pub fn mount_to_pb(m: Mount) -> pbt::Mount {
    pbt::Mount {
        r#type: m.fstype,
        source: m.source,
        target: String::new(),
        options: m.options,
    }
}

/// Wire mount → domain mount.
pub fn mount_from_pb(m: pbt::Mount) -> Mount {
    Mount {
        fstype: m.r#type,
        source: m.source,
        options: m.options,
    }
}

/// Domain mounts → wire mounts.
pub fn mounts_to_pb(mounts: Vec<Mount>) -> Vec<pbt::Mount> {
    mounts.into_iter().map(mount_to_pb).collect()
}

fn kind_to_pb(k: Kind) -> pb::Kind {
    match k {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

/// Wire kind number → domain kind; unset or unknown is None.
pub fn kind_from_pb(k: i32) -> Option<Kind> {
    match pb::Kind::try_from(k).ok()? {
        pb::Kind::View => Some(Kind::View),
        pb::Kind::Active => Some(Kind::Active),
        pb::Kind::Committed => Some(Kind::Committed),
        pb::Kind::Unknown => None,
    }
}

/// Domain info → wire info (nanosecond timestamps kept).
pub fn info_to_pb(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: kind_to_pb(i.kind) as i32,
        created_at: Some(i.created.into()),
        updated_at: Some(i.updated.into()),
        labels: i.labels.into_iter().collect(),
    }
}

/// Wire timestamp → system time (missing or invalid is the epoch).
pub fn time_from_pb(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Wire info → domain info, for Update (only name and labels matter there).
pub fn info_from_pb(i: pb::Info) -> Result<Info, Status> {
    Ok(Info {
        name: i.name,
        parent: i.parent,
        kind: kind_from_pb(i.kind).unwrap_or(Kind::Committed),
        created: time_from_pb(i.created_at),
        updated: time_from_pb(i.updated_at),
        labels: labels_from_pb(i.labels),
    })
}

/// Wire label map → domain labels.
pub fn labels_from_pb(labels: std::collections::HashMap<String, String>) -> Labels {
    labels.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn info_round_trips_with_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 987_654_321);
        let info = Info {
            name: "n".into(),
            parent: "p".into(),
            kind: Kind::Active,
            created: t,
            updated: t + Duration::from_nanos(1),
            labels: [("a".to_string(), "b".to_string())].into(),
        };
        let back = info_from_pb(info_to_pb(info.clone())).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn unset_kind_is_not_a_kind() {
        assert_eq!(kind_from_pb(0), None);
        assert_eq!(kind_from_pb(3), Some(Kind::Committed));
    }
}
