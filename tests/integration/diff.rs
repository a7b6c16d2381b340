//! The Diff service through the socket, with blobs in a local content directory: Apply into
//! our own overlay and native snapshots (no mount) and into foreign mounts, Diff of an
//! overlay snapshot (upper-directory walk) and of plain trees, a layer that writes into a
//! parent's directory without declaring it, and the error code of each misuse.

use std::io::Write;

use api::services::diff::v1 as dpb;
use api::services::diff::v1::diff_client::DiffClient;
use api::types::{Descriptor, Mount};
use differ::content::{BlobSink, LocalStore};
use differ::{Compression, Digest};
use tonic::Code;
use tonic::transport::Channel;

use crate::suite::without_root;
use crate::tree::{Op, apply, capture};
use crate::util::{Daemon, Snap, TempDir, assert_root, store_layer, with_mounted};

struct DiffFixture {
    s: Snap,
    d: DiffClient<Channel>,
    content: LocalStore,
    mnt: std::path::PathBuf,
    /// Where the daemon lives, when not in `tmp` (dropped before `tmp`).
    daemon_fs: Option<mountutil::TempMount>,
    tmp: TempDir,
    daemon: Daemon,
}

async fn fixture(test: &str, kind: &str) -> DiffFixture {
    fixture_on(test, kind, None).await
}

/// A fixture whose daemon root is on `daemon_fs` (a filesystem of the test's own), with
/// the content store and scratch trees outside it.
async fn fixture_on(
    test: &str,
    kind: &str,
    daemon_fs: Option<mountutil::TempMount>,
) -> DiffFixture {
    assert_root(test);
    let tmp = TempDir::new(test);
    let content_dir = tmp.path().join("content");
    let daemon_dir = daemon_fs
        .as_ref()
        .map_or_else(|| tmp.path().to_path_buf(), |m| m.path().to_path_buf());
    let daemon = Daemon::start_with_content(&daemon_dir, kind, &content_dir);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    DiffFixture {
        s: Snap::new(&daemon).await,
        d: DiffClient::new(channel),
        content: LocalStore::new(content_dir),
        mnt,
        daemon_fs,
        tmp,
        daemon,
    }
}

/// Writes a layer of `ops` (applied to an empty tree) into the content store.
fn make_layer(
    f: &DiffFixture,
    name: &str,
    ops: &[Op],
    compression: Compression,
) -> (Descriptor, Digest) {
    let src = f.tmp.path().join(format!("src-{name}"));
    let empty = f.tmp.path().join(format!("empty-{name}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    apply(&src, ops);
    store_layer(&f.content, &empty, &src, compression)
}

/// Writes a plain tar of regular files (mode 0644, no directory entries) into the content
/// store, as hand-made layers often are.
fn files_only_layer(f: &DiffFixture, files: &[(&str, &[u8])]) -> Descriptor {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        tar.append_data(&mut h, path, *data).unwrap();
    }
    let blob = tar.into_inner().unwrap();
    let mut hasher = differ::digest::Hasher::default();
    hasher.update(&blob);
    let (digest, _) = hasher.finish();
    let mut w = f.content.create().unwrap();
    w.write_all(&blob).unwrap();
    w.commit(&digest, blob.len() as u64, &[]).unwrap();
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: digest.to_string(),
        size: blob.len() as i64,
        annotations: Default::default(),
    }
}

async fn apply_rpc(
    d: &mut DiffClient<Channel>,
    desc: Descriptor,
    mounts: Vec<Mount>,
) -> Result<Descriptor, tonic::Status> {
    let r = dpb::ApplyRequest {
        diff: Some(desc),
        mounts,
        ..Default::default()
    };
    Ok(d.apply(r).await?.into_inner().applied.expect("applied"))
}

async fn diff_rpc(
    d: &mut DiffClient<Channel>,
    left: Vec<Mount>,
    right: Vec<Mount>,
    media_type: &str,
) -> Result<Descriptor, tonic::Status> {
    let r = dpb::DiffRequest {
        left,
        right,
        media_type: media_type.into(),
        ..Default::default()
    };
    Ok(d.diff(r).await?.into_inner().diff.expect("diff"))
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

async fn apply_then_diff(test: &str, kind: &str) {
    let mut f = fixture(test, kind).await;
    let base_ops = [
        Op::Dir("/etc", 0o755),
        Op::File("/etc/keep", "keep", 0o644),
        Op::File("/etc/gone", "gone", 0o600),
        Op::Dir("/opt", 0o750),
        Op::File("/opt/old", "old", 0o644),
        Op::Symlink("/etc/keep", "/link"),
    ];
    let (desc, diff_id) = make_layer(&f, "base", &base_ops, Compression::Gzip);
    let mounts = f.s.prepare("base-p", "").await.unwrap();
    let applied = apply_rpc(&mut f.d, desc.clone(), mounts).await.unwrap();
    assert_eq!(applied.digest, diff_id.to_string());
    assert_eq!(applied.media_type, "application/vnd.oci.image.layer.v1.tar");
    f.s.commit("base", "base-p").await.unwrap();

    // Change things through the mounts of a child, then ask for its diff.
    let mounts = f.s.prepare("child-p", "base").await.unwrap();
    let changes = [
        Op::Remove("/etc/gone"),
        Op::Remove("/opt"),
        Op::Dir("/opt", 0o755),
        Op::File("/opt/new", "new", 0o644),
        Op::File("/etc/added", "added", 0o644),
    ];
    with_mounted(&mounts, &f.mnt, |root| apply(root, &changes));
    let left = f.s.view("base-view", "base").await.unwrap();
    let layer = diff_rpc(&mut f.d, left, mounts, "").await.unwrap();
    assert_eq!(
        layer.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let blob = f.content.blob_path(&Digest::parse(&layer.digest).unwrap());
    assert_eq!(std::fs::metadata(&blob).unwrap().len() as i64, layer.size);
    let uncompressed = layer
        .annotations
        .get("containerd.io/uncompressed")
        .expect("uncompressed label")
        .clone();
    f.s.commit("child", "child-p").await.unwrap();

    // Applying that layer on the base again gives the same tree as the child.
    let mounts = f.s.prepare("replay-p", "base").await.unwrap();
    let applied = apply_rpc(&mut f.d, layer, mounts).await.unwrap();
    assert_eq!(applied.digest, uncompressed);
    f.s.commit("replay", "replay-p").await.unwrap();
    let want = view(&mut f, "child").await;
    assert_eq!(view(&mut f, "replay").await, want);
    assert!(
        !want.contains_key("/etc/gone")
            && !want.contains_key("/opt/old")
            && want.contains_key("/opt/new")
    );
    // A layer writing into /opt without declaring it: /opt keeps the base's 0750 in the
    // merged view (on overlayfs the new upper directory takes it from the parent layer, as
    // containerd's overlay applier does), and /opt/deep, which no layer has, gets 0755.
    let desc = files_only_layer(&f, &[("opt/deep/file", b"deep")]);
    let mounts = f.s.prepare("undeclared-p", "base").await.unwrap();
    apply_rpc(&mut f.d, desc, mounts).await.unwrap();
    f.s.commit("undeclared", "undeclared-p").await.unwrap();
    let tree = view(&mut f, "undeclared").await;
    assert_eq!(tree["/opt"].mode & 0o7777, 0o750, "{kind}: /opt");
    assert_eq!(tree["/opt/deep"].mode & 0o7777, 0o755, "{kind}: /opt/deep");
    assert_eq!(tree["/opt/deep/file"].data, b"deep");
    assert!(
        tree.contains_key("/opt/old"),
        "{kind}: the base's /opt shows through"
    );
    if kind == "native" {
        // A native snapshot is a full copy: a directory removed in it and needed again by
        // a layer is made afresh (0755), not taken from the parent, as containerd applies
        // to a bind mount.
        let mounts = f.s.prepare("recreated-p", "base").await.unwrap();
        with_mounted(&mounts, &f.mnt, |root| apply(root, &[Op::Remove("/opt")]));
        let desc = files_only_layer(&f, &[("opt/again", b"again")]);
        apply_rpc(&mut f.d, desc, mounts).await.unwrap();
        f.s.commit("recreated", "recreated-p").await.unwrap();
        let tree = view(&mut f, "recreated").await;
        assert_eq!(tree["/opt"].mode & 0o7777, 0o755, "native: recreated /opt");
        assert!(!tree.contains_key("/opt/old"));
    }

    // Our own overlay snapshot is diffed by walking its upper directory only.
    let walked_upper = f.daemon.log_text().contains("method=\"overlay upper\"");
    assert_eq!(walked_upper, kind == "overlayfs", "{}", f.daemon.log_text());

    // zstd and uncompressed layers too.
    for (i, c) in [Compression::Zstd, Compression::None]
        .into_iter()
        .enumerate()
    {
        let (desc, diff_id) =
            make_layer(&f, &format!("extra{i}"), &[Op::File("/x", "x", 0o644)], c);
        let mounts = f.s.prepare(&format!("extra{i}"), "base").await.unwrap();
        assert_eq!(
            apply_rpc(&mut f.d, desc, mounts).await.unwrap().digest,
            diff_id.to_string()
        );
    }
}

async fn view(
    f: &mut DiffFixture,
    parent: &str,
) -> std::collections::BTreeMap<String, crate::tree::Entry> {
    let key = format!("view-of-{parent}");
    let mounts = f.s.view(&key, parent).await.unwrap();
    let tree = with_mounted(&mounts, &f.mnt, |root| without_root(capture(root)));
    f.s.remove(&key).await.unwrap();
    tree
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn overlay_apply_then_diff() {
    apply_then_diff("diff-overlay", "overlayfs").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn native_apply_then_diff() {
    apply_then_diff("diff-native", "native").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn foreign_mounts_and_misuse() {
    let mut f = fixture("diff-misuse", "overlayfs").await;
    let (desc, diff_id) = make_layer(
        &f,
        "l",
        &[Op::File("/hello", "hi", 0o644)],
        Compression::Gzip,
    );

    // Mounts that are not ours: a bind of some directory, mounted and written natively.
    let foreign = f.tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    let bind = Mount {
        r#type: "bind".into(),
        source: foreign.to_string_lossy().into_owned(),
        target: String::new(),
        options: vec!["rw".into(), "rbind".into()],
    };
    assert_eq!(
        apply_rpc(&mut f.d, desc.clone(), vec![bind])
            .await
            .unwrap()
            .digest,
        diff_id.to_string()
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("hello")).unwrap(),
        "hi"
    );
    assert!(
        crate::util::mounts_under(f.tmp.path()).is_empty(),
        "temporary mount left behind"
    );

    let mounts = f.s.prepare("a", "").await.unwrap();
    let mut wrong = desc.clone();
    wrong.size += 1;
    assert_eq!(
        code(apply_rpc(&mut f.d, wrong, mounts.clone()).await),
        Code::FailedPrecondition,
        "size mismatch"
    );
    let mut wrong = desc.clone();
    wrong.annotations.insert(
        "containerd.io/uncompressed".into(),
        format!("sha256:{}", "0".repeat(64)),
    );
    assert_eq!(
        code(apply_rpc(&mut f.d, wrong, mounts.clone()).await),
        Code::FailedPrecondition,
        "diffID mismatch"
    );
    let mut missing = desc.clone();
    missing.digest = format!("sha256:{}", "1".repeat(64));
    assert_eq!(
        code(apply_rpc(&mut f.d, missing, mounts.clone()).await),
        Code::NotFound
    );
    let mut bad = desc.clone();
    bad.digest = "sha256:nothex".into();
    assert_eq!(
        code(apply_rpc(&mut f.d, bad, mounts.clone()).await),
        Code::InvalidArgument
    );

    // A blob whose bytes do not match its name: a corrupt copy stored under the digest.
    let blob = f.content.blob_path(&Digest::parse(&desc.digest).unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let (desc2, _) = make_layer(
        &f,
        "l2",
        &[Op::File("/other", "o", 0o644)],
        Compression::Gzip,
    );
    let blob2 = f.content.blob_path(&Digest::parse(&desc2.digest).unwrap());
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob2, &bytes).unwrap();
    let c = code(apply_rpc(&mut f.d, desc2, mounts.clone()).await);
    assert!(
        matches!(c, Code::InvalidArgument | Code::FailedPrecondition),
        "corrupt blob: {c:?}"
    );
    // A sound layer under another's digest: a layout directory is not a content store that
    // verified what it holds, so its blobs are hashed as they are applied.
    let (desc3, _) = make_layer(
        &f,
        "l3",
        &[Op::File("/third", "3", 0o644)],
        Compression::Gzip,
    );
    let blob3 = f.content.blob_path(&Digest::parse(&desc3.digest).unwrap());
    std::fs::write(&blob3, std::fs::read(&blob).unwrap()).unwrap();
    let mut swapped = desc3.clone();
    swapped.size = desc.size;
    assert_eq!(
        code(apply_rpc(&mut f.d, swapped, mounts.clone()).await),
        Code::FailedPrecondition,
        "another layer's bytes under a digest"
    );

    // Committed snapshots are never written.
    f.s.commit("a-c", "a").await.unwrap();
    let view = f.s.view("v", "a-c").await.unwrap();
    assert_eq!(
        code(apply_rpc(&mut f.d, desc.clone(), view.clone()).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(apply_rpc(&mut f.d, desc.clone(), vec![]).await),
        Code::InvalidArgument
    );

    assert_eq!(
        code(diff_rpc(&mut f.d, vec![], view.clone(), "application/x-bogus").await),
        Code::Unimplemented
    );
    let r = dpb::ApplyRequest::default();
    assert_eq!(code(f.d.apply(r).await), Code::InvalidArgument);

    // Stream-processor payloads (containerd 1.7's CRI sends a decryption payload with every
    // layer): ignored for a media type applied here, refused for one Strata cannot tell, so
    // that containerd falls back to a differ that runs its stream processors.
    let payloads = std::collections::HashMap::from([(
        "io.containerd.ocicrypt.v1".to_string(),
        prost_types::Any {
            type_url: "github.com/containerd/imgcrypt/Payload".into(),
            value: vec![],
        },
    )]);
    let fresh = f.s.prepare("p", "").await.unwrap();
    let r = dpb::ApplyRequest {
        diff: Some(desc.clone()),
        mounts: fresh.clone(),
        payloads: payloads.clone(),
        ..Default::default()
    };
    let applied = f.d.apply(r).await.unwrap().into_inner().applied.unwrap();
    assert_eq!(applied.digest, diff_id.to_string());
    let mut custom = desc.clone();
    custom.media_type = "application/vnd.example.layer.v1.custom".into();
    let r = dpb::ApplyRequest {
        diff: Some(custom),
        mounts: fresh,
        payloads,
        ..Default::default()
    };
    assert_eq!(code(f.d.apply(r).await), Code::Unimplemented);
}

/// Writes `path` until the filesystem is full.
fn fill(path: &std::path::Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![7u8; 64 << 10];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    // The last partial pages.
    while file.write_all(&[7u8]).is_ok() {}
}

/// A full filesystem: the daemon's root on a 24 MiB tmpfs. Applying a 40 MiB layer and
/// copying a 16 MiB native parent fail with ResourceExhausted; the index stays consistent
/// (the failed Prepare left no entry, the failed Apply's snapshot can be removed) and the
/// daemon keeps serving once space is freed. With not a byte left, a Prepare and a Commit
/// whose index records need new pages fail with ResourceExhausted, change nothing, and
/// succeed once space is freed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn a_full_filesystem_is_resource_exhausted() {
    for kind in ["overlayfs", "native"] {
        let test = format!("full-fs-{kind}");
        assert_root(&test);
        let tmpfs = mountutil::Mount {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["size=24m".into()],
        };
        let parent = TempDir::new(&format!("{test}-fs"));
        let small = mountutil::TempMount::new(&[tmpfs], parent.path()).unwrap();
        let mut f = fixture_on(&test, kind, Some(small)).await;

        // Data that does not compress: 40 files of 1 MiB.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let data: Vec<String> = (0..40)
            .map(|_| {
                (0..1 << 20)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(b'!' + (x % 90) as u8)
                    })
                    .collect()
            })
            .collect();
        let names: Vec<String> = (0..40).map(|i| format!("/big{i}")).collect();
        let ops: Vec<Op> = names
            .iter()
            .zip(&data)
            .map(|(n, d)| Op::File(n, d, 0o644))
            .collect();
        let (big, _) = make_layer(&f, "big", &ops, Compression::Gzip);

        let mounts = f.s.prepare("a", "").await.unwrap();
        let err = apply_rpc(&mut f.d, big, mounts).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{kind}: {err:?}");
        let kind_of_a = f.s.stat("a").await.unwrap().kind;
        assert_eq!(kind_of_a, api::services::snapshots::v1::Kind::Active as i32);

        f.s.remove("a").await.unwrap();
        f.s.cleanup().await.unwrap();

        // Not a byte left, and calls whose index records need new pages (labels of 240 KB):
        // Prepare and Commit fail with ResourceExhausted and change nothing; once space is
        // freed, they succeed.
        let mounts = f.s.prepare("d", "").await.unwrap();
        with_mounted(&mounts, &f.mnt, |root| {
            std::fs::write(root.join("small"), "small").unwrap()
        });
        let big_labels: crate::util::Labels = (0..60)
            .map(|i| (format!("label-{i}"), "v".repeat(4000)))
            .collect();
        let filler = f.daemon.root.parent().unwrap().join("filler");
        fill(&filler);
        let err =
            f.s.prepare_labels("c", "", big_labels.clone())
                .await
                .unwrap_err();
        assert_eq!(
            err.code(),
            Code::ResourceExhausted,
            "{kind} prepare: {err:?}"
        );
        let err =
            f.s.commit_full("d-done", "d", big_labels.clone(), "")
                .await
                .unwrap_err();
        assert_eq!(
            err.code(),
            Code::ResourceExhausted,
            "{kind} commit: {err:?}"
        );
        let listed: Vec<String> =
            f.s.list(&[])
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
        assert_eq!(
            listed,
            ["d"],
            "{kind}: the full-disk calls changed the index"
        );
        std::fs::remove_file(&filler).unwrap();
        f.s.prepare_labels("c", "", big_labels.clone())
            .await
            .unwrap();
        f.s.commit_full("d-done", "d", big_labels, "")
            .await
            .unwrap();
        f.s.remove("c").await.unwrap();
        f.s.remove("d-done").await.unwrap();
        f.s.cleanup().await.unwrap();

        if kind == "native" {
            // A 16 MiB parent fits; its copy does not.
            let mounts = f.s.prepare("base-p", "").await.unwrap();
            with_mounted(&mounts, &f.mnt, |root| {
                for (n, d) in names.iter().zip(&data).take(16) {
                    std::fs::write(root.join(n.trim_start_matches('/')), d).unwrap();
                }
            });
            f.s.commit("base", "base-p").await.unwrap();
            let err = f.s.prepare("copy", "base").await.unwrap_err();
            assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
            assert_eq!(code(f.s.stat("copy").await), Code::NotFound);
            f.s.remove("base").await.unwrap();
        }

        // Serving again: a small layer applies.
        let (small_layer, diff_id) = make_layer(
            &f,
            "small",
            &[Op::File("/ok", "ok", 0o644)],
            Compression::Gzip,
        );
        let mounts = f.s.prepare("b", "").await.unwrap();
        let applied = apply_rpc(&mut f.d, small_layer, mounts).await.unwrap();
        assert_eq!(applied.digest, diff_id.to_string());
        crate::crash::assert_consistent(&mut f.s, &f.daemon.root).await;
        let DiffFixture {
            daemon, daemon_fs, ..
        } = f;
        drop(daemon);
        daemon_fs.unwrap().release().unwrap();
    }
}
