//! Size limits of writable snapshots through the daemon: on a loop-mounted btrfs with
//! quotas, a write past a snapshot's limit (its `max-size` label, or the instance's default
//! for container snapshots) fails with EDQUOT while siblings and layer extractions write
//! on, Usage reports the limited snapshot, and removal frees its qgroup; where nothing can
//! enforce a limit, asking for one fails clearly.

use std::io::Write;
use std::path::Path;

use crate::util::{Daemon, Snap, TempDir, assert_root, btrfs, labels, loop_btrfs, with_mounted};

const MAX_SIZE: &str = "containerd.io/snapshot/max-size";
const MIB: u64 = 1 << 20;
/// Linux's "Disk quota exceeded".
const EDQUOT: i32 = 122;

/// Writes up to `mib` MiB of zeros to `path`, then flushes; how many bytes went in, and
/// the error that stopped it, if one did. (btrfs reserves quota as data is written, so
/// the write itself fails.)
fn fill(path: &Path, mib: u64) -> (u64, Option<std::io::Error>) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; MIB as usize];
    let mut written = 0;
    for _ in 0..mib {
        if let Err(e) = f.write_all(&block) {
            return (written, Some(e));
        }
        written += MIB;
    }
    (written, f.sync_data().err())
}

/// Asserts the write stopped with EDQUOT at about `limit` bytes.
fn assert_stopped_at(result: (u64, Option<std::io::Error>), limit: u64) {
    let (written, error) = result;
    let error =
        error.unwrap_or_else(|| panic!("{written} bytes written past a {limit}-byte limit"));
    assert_eq!(error.raw_os_error(), Some(EDQUOT), "{error}");
    assert!(
        written <= limit && written + 2 * MIB >= limit,
        "{written} of {limit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn size_limits_on_btrfs() {
    assert_root("size_limits_on_btrfs");
    let tmp = TempDir::new("quota-btrfs");
    let mnt = loop_btrfs(tmp.path(), 1024, true);
    let config = tmp.path().join("strata.toml");
    let default = 8 * MIB;
    std::fs::write(
        &config,
        format!("[[snapshotters]]\nname = \"strata\"\nmax_size = {default}\n"),
    )
    .unwrap();
    let d = Daemon::start_rooted(
        tmp.path(),
        mnt.join("root"),
        &["--config", config.to_str().unwrap()],
    );
    let mut s = Snap::new(&d).await;
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    // A parent layer, so the limited snapshots are overlays like a container's.
    let m = s.prepare("base", "").await.unwrap();
    with_mounted(&m, &scratch, |root| {
        std::fs::write(root.join("lower"), "lower\n").unwrap()
    });
    s.commit("layer", "base").await.unwrap();

    let limit = 16 * MIB;
    let limited = s
        .prepare_labels(
            "limited",
            "layer",
            labels(&[(MAX_SIZE, &limit.to_string())]),
        )
        .await
        .unwrap();
    let defaulted = s.prepare("defaulted", "layer").await.unwrap();
    let extraction = s
        .prepare_labels(
            "extract",
            "layer",
            labels(&[(
                "containerd.io/snapshot.ref",
                &format!("sha256:{}", "ab".repeat(32)),
            )]),
        )
        .await
        .unwrap();
    with_mounted(&limited, &scratch, |root| {
        assert_stopped_at(fill(&root.join("big"), 32), limit);
        // What is there stays readable; removing frees room again.
        assert_eq!(
            std::fs::read_to_string(root.join("lower")).unwrap(),
            "lower\n"
        );
    });
    let (size, _) = s.usage("limited").await.unwrap();
    assert!(
        (size as u64) + 2 * MIB >= limit && (size as u64) <= limit + MIB,
        "usage {size} for a {limit}-byte limit"
    );
    with_mounted(&defaulted, &scratch, |root| {
        assert_stopped_at(fill(&root.join("big"), 32), default);
    });
    // Layer extractions get no default limit, and a sibling's limit is not theirs.
    with_mounted(&extraction, &scratch, |root| {
        let (written, error) = fill(&root.join("big"), 48);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(written, 48 * MIB);
    });

    // Each limited snapshot is a subvolume with its own qgroup (the parent layer too: it
    // was prepared without an extraction's label, so it had the default); removing one
    // frees both.
    let subvolumes = btrfs(&["subvolume", "list"], &mnt);
    assert_eq!(subvolumes.lines().count(), 3, "{subvolumes}");
    for key in ["limited", "defaulted", "extract", "layer"] {
        s.remove(key).await.unwrap();
    }
    s.cleanup().await.unwrap();
    crate::util::assert_no_subvolume_qgroups(&mnt);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn size_limits_need_quotas() {
    assert_root("size_limits_need_quotas");
    // Neither this machine's ext4 (no project quotas) nor a btrfs without quotas can enforce
    // a limit: asking for one is refused, never silently dropped.
    let tmp = TempDir::new("quota-refused");
    let plain = Daemon::start(tmp.path(), "overlayfs");
    let btrfs_dir = tmp.path().join("no-quotas");
    std::fs::create_dir(&btrfs_dir).unwrap();
    let mnt = loop_btrfs(&btrfs_dir, 256, false);
    let on_btrfs = Daemon::start_rooted(&btrfs_dir, mnt.join("root"), &[]);
    for (d, needs) in [
        (&plain, "project quotas"),
        (&on_btrfs, "btrfs quota enable"),
    ] {
        let mut s = Snap::new(d).await;
        let e = s
            .prepare_labels("limited", "", labels(&[(MAX_SIZE, "10485760")]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(needs), "{e:?}");
        let e = s
            .prepare_labels("limited", "", labels(&[(MAX_SIZE, "ten megs")]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(s.list(&[]).await.unwrap().is_empty());
        // Views cannot be written: a limit means nothing to them.
        s.view_labels("v", "", labels(&[(MAX_SIZE, "1")]))
            .await
            .unwrap();
    }

    // A default limit where none can be enforced stops the daemon at start, saying why.
    let config = tmp.path().join("strata.toml");
    std::fs::write(
        &config,
        "[[snapshotters]]\nname = \"strata\"\nmax_size = 1048576\n",
    )
    .unwrap();
    let out = crate::util::strata_command()
        .args(["serve", "--config", config.to_str().unwrap(), "--root"])
        .arg(tmp.path().join("other"))
        .arg("--address")
        .arg(tmp.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("default size limit") && err.contains("prjquota"),
        "{err}"
    );
}

/// The btrfs calls behind a deleted subvolume's qgroup removal, on a real btrfs: a
/// subvolume's id is the one btrfs reports; its qgroup cannot be removed while it exists;
/// once it is deleted and dropped its qgroup goes (removed by the kernel, since mid-2024, or
/// by the call) and a qgroup that is not there is told apart.
#[test]
#[ignore = "needs root"]
fn a_subvolume_qgroup_goes_only_with_its_subvolume() {
    use mountutil::btrfs::{self as calls, QgroupRemoval};
    assert_root("a_subvolume_qgroup_goes_only_with_its_subvolume");
    let tmp = TempDir::new("qgroup-calls");
    let mnt = loop_btrfs(tmp.path(), 512, true);
    let sub = mnt.join("sub");
    calls::create_subvolume(&sub).unwrap();
    let id = calls::subvolume_id(&sub).unwrap();
    assert_eq!(
        btrfs(&["inspect-internal", "rootid"], &sub).trim(),
        id.to_string()
    );

    assert_eq!(
        calls::remove_qgroup(&mnt, id).unwrap(),
        QgroupRemoval::NotYet
    );
    let qgroups = btrfs(&["qgroup", "show", "-r"], &mnt);
    assert!(qgroups.contains(&format!("0/{id} ")), "{qgroups}");

    std::fs::remove_dir(&sub).unwrap();
    btrfs(&["filesystem", "sync"], &mnt);
    btrfs(&["subvolume", "sync"], &mnt);
    let removal = calls::remove_qgroup(&mnt, id).unwrap();
    assert!(
        matches!(removal, QgroupRemoval::Removed | QgroupRemoval::Gone),
        "{removal:?}"
    );
    crate::util::assert_no_subvolume_qgroups(&mnt);
    assert_eq!(calls::remove_qgroup(&mnt, id).unwrap(), QgroupRemoval::Gone);
}
