//! Restarts and crashes: a clean restart shows exactly the committed state, and a SIGKILL in
//! the middle of Prepare, Commit, Remove or Cleanup leaves, after Cleanup, no orphan
//! directory, no index entry without its directory, and no leaked mount.

use std::path::Path;
use std::time::Duration;

use api::services::snapshots::v1 as pb;
use strata::convert::mount_from_pb;

use crate::suite::{Fixture, without_root};
use crate::tree::{Op, apply, capture};
use crate::util::{Snap, mounts_under, snapshot_dirs, with_mounted};

/// Every path a returned mount refers to.
pub fn mount_paths(mounts: &[api::types::Mount]) -> Vec<String> {
    let mut out = Vec::new();
    for m in mounts.iter().cloned().map(mount_from_pb) {
        if m.fstype == "bind" {
            out.push(m.source.clone());
        }
        out.extend(m.lowerdirs().into_iter().map(str::to_string));
        out.extend(m.option_value("upperdir").map(str::to_string));
        out.extend(m.option_value("workdir").map(str::to_string));
    }
    out
}

/// The index and the directories agree: every entry's directories exist, and after Cleanup
/// every directory belongs to an entry. Nothing is left mounted under the root.
pub async fn assert_consistent(s: &mut Snap, root: &Path) {
    s.cleanup().await.unwrap();
    let infos = s.list(&[]).await.unwrap();
    for info in &infos {
        let mounts = if info.kind == pb::Kind::Committed as i32 {
            let key = format!("consistency-check {}", info.name);
            let m = s
                .view(&key, &info.name)
                .await
                .unwrap_or_else(|e| panic!("view of {}: {e:?}", info.name));
            s.remove(&key).await.unwrap();
            m
        } else {
            s.mounts(&info.name).await.unwrap()
        };
        for p in mount_paths(&mounts) {
            assert!(Path::new(&p).is_dir(), "{}: {p} is missing", info.name);
        }
    }
    s.cleanup().await.unwrap();
    let dirs = snapshot_dirs(root);
    assert!(
        dirs.iter().all(|d| d.parse::<u64>().is_ok()),
        "orphans left: {dirs:?}"
    );
    assert_eq!(
        dirs.len(),
        infos.len(),
        "one directory per snapshot: {dirs:?}"
    );
    assert!(
        mounts_under(root).is_empty(),
        "leaked mounts: {:?}",
        mounts_under(root)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn restart_keeps_committed_state() {
    for kind in ["native", "overlayfs"] {
        let mut f = Fixture::new(&format!("restart-{kind}"), kind).await;
        f.layer("base", "base-p", "", &[Op::File("/a", "a", 0o644)])
            .await;
        f.layer(
            "top",
            "top-p",
            "base",
            &[Op::File("/b", "b", 0o600), Op::Remove("/a")],
        )
        .await;
        let mounts = f.s.prepare("work", "top").await.unwrap();
        with_mounted(&mounts, &f.mnt, |root| {
            apply(root, &[Op::File("/c", "c", 0o644)])
        });
        f.s.view("look", "top").await.unwrap();
        let before = f.s.list(&[]).await.unwrap();
        let usage = f.s.usage("top").await.unwrap();
        let tree = f.view_tree("v", "top").await;

        f.daemon.restart();
        f.s = Snap::new(&f.daemon).await;
        assert_eq!(f.s.list(&[]).await.unwrap(), before);
        assert_eq!(f.s.usage("top").await.unwrap(), usage);
        assert_eq!(f.view_tree("v", "top").await, tree);
        let mounts = f.s.mounts("work").await.unwrap();
        with_mounted(&mounts, &f.mnt, |root| {
            assert_eq!(std::fs::read_to_string(root.join("c")).unwrap(), "c");
            assert!(!root.join("a").exists());
        });
        assert_consistent(&mut f.s, &f.daemon.root).await;
    }
}

/// When to kill the daemon.
enum KillAt {
    /// After this many milliseconds.
    Delay(u64),
    /// As soon as a snapshot directory is being built (`snapshots/new-*` exists), or after
    /// [`IN_FLIGHT_WAIT`] if none shows up.
    CreationInFlight,
}

/// How long [`KillAt::CreationInFlight`] waits for a creation to show up.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(20);

/// Whether a snapshot directory is being built under `root`.
fn creation_in_flight(root: &Path) -> bool {
    std::fs::read_dir(root.join("snapshots")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("new-"))
    })
}

/// With `tasks` working against the daemon, SIGKILLs it at `at`, lets the tasks fail,
/// starts it again and checks the index and directories agree. Returns whether a creation
/// was in flight when the kill came.
async fn crash_and_recover(
    f: &mut Fixture,
    at: KillAt,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> bool {
    let in_flight = match at {
        KillAt::Delay(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            false
        }
        KillAt::CreationInFlight => {
            let deadline = std::time::Instant::now() + IN_FLIGHT_WAIT;
            loop {
                if creation_in_flight(&f.daemon.root) {
                    break true;
                }
                if std::time::Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    f.daemon.kill();
    for t in tasks {
        let _ = t.await;
    }
    f.daemon.respawn();
    f.s = Snap::new(&f.daemon).await;
    assert_consistent(&mut f.s, &f.daemon.root).await;
    in_flight
}

/// Fills a committed snapshot with many files so copying or deleting it takes a while.
async fn big_layer(f: &mut Fixture, name: &str, files: usize) {
    let mounts = f.s.prepare(&format!("{name}-p"), "").await.unwrap();
    with_mounted(&mounts, &f.mnt, |root| {
        for d in 0..files / 100 {
            let dir = root.join(format!("d{d}"));
            std::fs::create_dir(&dir).unwrap();
            for i in 0..100 {
                std::fs::write(dir.join(format!("f{i}")), format!("{d}/{i}")).unwrap();
            }
        }
    });
    f.s.commit(name, &format!("{name}-p")).await.unwrap();
}

/// Native Prepare copies the parent: kill the daemon while copies are in flight.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn kill_during_native_prepare_and_remove() {
    let mut f = Fixture::new("kill-native", "native").await;
    big_layer(&mut f, "big", 4000).await;
    let reference = f.view_tree("ref", "big").await;
    let mut interrupted = 0;
    for round in 0..4 {
        let mut tasks = Vec::new();
        for i in 0..3 {
            let mut s = Snap::new(&f.daemon).await;
            let key = format!("copy-{round}-{i}");
            tasks.push(tokio::spawn(async move {
                let _ = s.prepare(&key, "big").await;
                let _ = s.remove(&key).await;
            }));
        }
        if crash_and_recover(&mut f, KillAt::CreationInFlight, tasks).await {
            interrupted += 1;
        }
        // Whatever survived is complete.
        for info in f.s.list(&["kind==active"]).await.unwrap() {
            let mounts = f.s.mounts(&info.name).await.unwrap();
            let tree = with_mounted(&mounts, &f.mnt, |root| without_root(capture(root)));
            assert_eq!(tree, reference, "{} is incomplete", info.name);
        }
        assert_eq!(
            f.view_tree("ref", "big").await,
            reference,
            "the committed parent changed"
        );
    }
    // Each kill waited for a copy in flight, however slow or fast the machine.
    assert!(
        interrupted > 0,
        "no copy was ever seen in flight: the test proved nothing"
    );
    let reclaimed = f.daemon.log_text().matches("reclaiming orphan").count();
    eprintln!("{interrupted} of 4 kills interrupted a copy; {reclaimed} orphans reclaimed");
    assert!(
        reclaimed >= interrupted,
        "an interrupted copy left no orphan to reclaim"
    );
}

/// Overlay operations are quick: kill the daemon repeatedly under a storm of Prepare,
/// Commit, Remove and Cleanup calls.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn kill_during_overlay_storm() {
    let mut f = Fixture::new("kill-overlay", "overlayfs").await;
    big_layer(&mut f, "base", 3000).await;
    for round in 0..6u64 {
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let mut s = Snap::new(&f.daemon).await;
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("k-{round}-{worker}-{i}");
                    let name = format!("n-{round}-{worker}-{i}");
                    if s.prepare(&key, "base").await.is_err()
                        || s.commit(&name, &key).await.is_err()
                        || s.remove(&name).await.is_err()
                        || s.cleanup().await.is_err()
                    {
                        break;
                    }
                }
            }));
        }
        crash_and_recover(&mut f, KillAt::Delay(20 + 37 * round), tasks).await;
    }
    let reclaimed = f.daemon.log_text().matches("reclaiming orphan").count();
    eprintln!("overlay kills left {reclaimed} orphans to reclaim");
}
