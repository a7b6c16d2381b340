//! User-namespaced snapshots through the daemon: layers shown through idmapped mounts
//! (nothing copied, layers untouched), and the shifted-copy fallback.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use api::types::Mount as PbMount;

use crate::util::{Daemon, Labels, Snap, TempDir, assert_root, labels, mounts_under, with_mounted};

const UIDS: &str = "containerd.io/snapshot/uidmapping";
const GIDS: &str = "containerd.io/snapshot/gidmapping";

/// The labels containerd sets on a user-namespaced container's snapshot.
pub fn mapped(uids: &str, gids: &str) -> Labels {
    labels(&[(UIDS, uids), (GIDS, gids)])
}

/// Every entry under `root` (itself included): owner, mode, inode and change time.
fn fingerprint(root: &Path) -> Prints {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let md = e.path().symlink_metadata().unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let id = (
                md.uid(),
                md.gid(),
                md.mode(),
                md.ino(),
                md.ctime(),
                md.ctime_nsec(),
            );
            (rel, id)
        })
        .collect()
}

/// Owner, mode, inode and change time of each entry, by path.
pub(crate) type Prints = BTreeMap<String, (u32, u32, u32, u64, i64, i64)>;

/// [`fingerprint`] of the snapshot directories under `snapshots` (which itself changes).
pub(crate) fn layer_prints(snapshots: &Path) -> Prints {
    let mut prints = fingerprint(snapshots);
    prints.remove("");
    prints
}

/// Asserts that every entry of `before` (a [`layer_prints`] of `snapshots`) is still there
/// unchanged: same inode, owner, mode and change time. The entries added since.
pub(crate) fn assert_layers_untouched(snapshots: &Path, before: &Prints) -> Vec<String> {
    let (kept, added): (Prints, Prints) = layer_prints(snapshots)
        .into_iter()
        .partition(|(path, _)| before.contains_key(path));
    assert_eq!(&kept, before);
    added.into_keys().collect()
}

/// Owner of every entry under `root`, as `uid:gid`, by path relative to it.
fn owners(root: &Path) -> BTreeMap<String, String> {
    fingerprint(root)
        .into_iter()
        .map(|(path, (uid, gid, ..))| (path, format!("{uid}:{gid}")))
        .collect()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Commits `c1` (files of several owners, a setuid binary, a symlink) and `c2` on it.
async fn two_layers(s: &mut Snap, scratch: &Path) {
    let m = s.prepare("l1", "").await.unwrap();
    with_mounted(&m, scratch, |root| {
        for dir in ["etc", "bin", "home/u"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("etc/f"), "one\n").unwrap();
        chown(&root.join("etc/f"), 1000, 1000);
        std::fs::write(root.join("bin/su"), "su\n").unwrap();
        std::fs::set_permissions(root.join("bin/su"), PermissionsExt::from_mode(0o4755)).unwrap();
        chown(&root.join("home/u"), 1000, 1001);
        std::os::unix::fs::symlink("etc/f", root.join("lnk")).unwrap();
        chown(&root.join("lnk"), 5, 6);
    });
    s.commit("c1", "l1").await.unwrap();
    let m = s.prepare("l2", "c1").await.unwrap();
    with_mounted(&m, scratch, |root| {
        std::fs::create_dir(root.join("var")).unwrap();
        std::fs::write(root.join("var/x"), "x\n").unwrap();
        chown(&root.join("var/x"), 33, 33);
    });
    s.commit("c2", "l2").await.unwrap();
}

/// What the two layers look like to a container mapping ids 0.. to 100000..
fn expected_mapped() -> BTreeMap<String, String> {
    [
        ("", "100000:100000"),
        ("bin", "100000:100000"),
        ("bin/su", "100000:100000"),
        ("etc", "100000:100000"),
        ("etc/f", "101000:101000"),
        ("home", "100000:100000"),
        ("home/u", "101000:101001"),
        ("lnk", "100005:100006"),
        ("var", "100000:100000"),
        ("var/x", "100033:100033"),
    ]
    .into_iter()
    .map(|(p, o)| (p.to_string(), o.to_string()))
    .collect()
}

/// The mapping of most of these tests: ids 0..65536 inside are 100000.. outside.
const MAP: &str = "0:100000:65536";

/// The value of option `key=` of the first of `mounts`.
fn option<'a>(mounts: &'a [PbMount], key: &str) -> &'a str {
    mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {mounts:?}"))
}

/// A daemon (its instance configured with `instance_options`) holding [`two_layers`], and
/// active snapshot `u` prepared on them with [`MAP`].
struct Layered {
    tmp: TempDir,
    daemon: Daemon,
    s: Snap,
    scratch: PathBuf,
    /// [`layer_prints`] before `u` was prepared.
    layers_before: Prints,
    /// `u`'s own directory: its overlay upper directory, or what its bind mount shows.
    upper: PathBuf,
    /// `u`'s mounts.
    mounts: Vec<PbMount>,
}

impl Layered {
    async fn new(tag: &str, instance_options: &str) -> Self {
        let tmp = TempDir::new(tag);
        let config = tmp.path().join("strata.toml");
        std::fs::write(
            &config,
            format!("[[snapshotters]]\nname = \"strata\"\n{instance_options}"),
        )
        .unwrap();
        let daemon = Daemon::start_with(tmp.path(), &["--config", config.to_str().unwrap()]);
        let mut s = Snap::new(&daemon).await;
        let scratch = tmp.path().join("mnt");
        std::fs::create_dir(&scratch).unwrap();
        two_layers(&mut s, &scratch).await;
        let layers_before = layer_prints(&daemon.root.join("snapshots"));
        let mounts = s.prepare_labels("u", "c2", mapped(MAP, MAP)).await.unwrap();
        let upper = match mounts[0].r#type.as_str() {
            "bind" => PathBuf::from(&mounts[0].source),
            _ => PathBuf::from(option(&mounts, "upperdir=")),
        };
        Layered {
            tmp,
            daemon,
            s,
            scratch,
            layers_before,
            upper,
            mounts,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn idmapped_layers_are_not_copied() {
    assert_root("idmapped_layers_are_not_copied");
    let Layered {
        tmp: _tmp,
        daemon: mut d,
        mut s,
        scratch,
        layers_before,
        upper,
        mounts: m,
    } = Layered::new("userns-idmap", "").await;
    let snapshots = d.root.join("snapshots");
    let lowers = option(&m, "lowerdir=");
    assert!(lowers.split(':').all(|l| l.contains("/idmapped/")), "{m:?}");
    with_mounted(&m, &scratch, |root| {
        assert_eq!(owners(root), expected_mapped());
        let su = root.join("bin/su").metadata().unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755);
        // A write copies the one file up, with the owner the container sees.
        std::fs::write(root.join("etc/f"), "changed\n").unwrap();
    });
    let copied_up = owners(&upper);
    assert_eq!(
        copied_up,
        [
            ("", "100000:100000"),
            ("etc", "100000:100000"),
            ("etc/f", "101000:101000")
        ]
        .into_iter()
        .map(|(p, o)| (p.to_string(), o.to_string()))
        .collect(),
        "only the written file was copied"
    );

    // A view on one parent is a bind mount of it, idmapped too; a mapping of its own.
    let other = mapped("0:200000:65536", "0:300000:65536");
    let v = s.view_labels("v", "c1", other).await.unwrap();
    assert_eq!(v[0].r#type, "bind", "{v:?}");
    with_mounted(&v, &scratch, |root| {
        assert_eq!(owners(&root.join("etc"))["f"], "201000:301000");
        assert!(
            std::fs::write(root.join("new"), "").is_err(),
            "views are read-only"
        );
    });
    assert_eq!(mounts_under(&d.root.join("idmapped")).len(), 2);

    // Mounts answer the same after a restart, the idmapped trees still attached.
    d.restart();
    let mut s = Snap::new(&d).await;
    assert_eq!(s.mounts("u").await.unwrap(), m);
    with_mounted(&m, &scratch, |root| {
        assert_eq!(
            std::fs::read_to_string(root.join("etc/f")).unwrap(),
            "changed\n"
        );
        assert_eq!(owners(root)["var/x"], "100033:100033");
    });

    // The layers were never touched: same inodes, owners, modes, change times.
    assert_layers_untouched(&snapshots, &layers_before);

    // Malformed mappings are refused, and create nothing.
    for bad in [
        labels(&[(UIDS, "0:100000:65536")]),
        mapped("0:100000", "0:100000:1"),
        mapped("0:100000:0", "0:100000:1"),
    ] {
        let e = s.prepare_labels("bad", "c2", bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }

    // Unused trees are detached by Cleanup, the one still in use stays.
    s.remove("v").await.unwrap();
    s.cleanup().await.unwrap();
    assert_eq!(mounts_under(&d.root.join("idmapped")).len(), 1);
    s.remove("u").await.unwrap();
    s.cleanup().await.unwrap();
    assert_eq!(
        mounts_under(&d.root.join("idmapped")),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        std::fs::read_dir(d.root.join("idmapped")).unwrap().count(),
        0
    );
    assert!(d.log_text().contains("idmapped layers"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn shifted_copies_without_idmapping() {
    assert_root("shifted_copies_without_idmapping");
    let Layered {
        tmp: _tmp,
        daemon: d,
        mut s,
        scratch,
        layers_before,
        upper,
        mounts: m,
    } = Layered::new("userns-copy", "idmapped_layers = false\n").await;
    let snapshots = d.root.join("snapshots");
    let mapping = mapped(MAP, MAP);
    // The upper directory holds the whole shifted tree, setuid bit kept.
    assert_eq!(owners(&upper), expected_mapped());
    let su = upper.join("bin/su").metadata().unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    with_mounted(&m, &scratch, |root| {
        assert_eq!(owners(root), expected_mapped());
    });
    let v = s.view_labels("v", "c2", mapping).await.unwrap();
    with_mounted(&v, &scratch, |root| {
        assert_eq!(owners(root), expected_mapped());
    });
    assert_layers_untouched(&snapshots, &layers_before);
    assert!(d.log_text().contains("shifted copy"), "{}", d.log_text());
    assert_eq!(mounts_under(&d.root), Vec::<std::path::PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn native_copies_through_idmapped_layers() {
    assert_root("native_copies_through_idmapped_layers");
    let Layered {
        tmp: _tmp,
        daemon: d,
        mut s,
        scratch,
        layers_before,
        upper: own,
        mounts: m,
    } = Layered::new("userns-native", "type = \"native\"\n").await;
    // A native snapshot is a full copy anyway: made through the idmapped tree, its owners
    // come out shifted, the setuid bit kept.
    assert_eq!(m[0].r#type, "bind", "{m:?}");
    assert_eq!(owners(&own), expected_mapped());
    let su = own.join("bin/su").metadata().unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    // A view binds its parent through the idmapped tree: nothing copied.
    let v = s.view_labels("v", "c1", mapped(MAP, MAP)).await.unwrap();
    assert!(v[0].source.contains("/idmapped/"), "{v:?}");
    with_mounted(&v, &scratch, |root| {
        assert_eq!(owners(&root.join("etc"))["f"], "101000:101000");
    });
    assert_layers_untouched(&d.root.join("snapshots"), &layers_before);
    assert!(d.log_text().contains("idmapped layers"));
}
