//! A user-namespaced container on containerd 2.1 with the documented configuration (the proxy
//! declares `remap-ids`, so `ctr run --remap-labels` hands the mapping to Strata instead of
//! chowning a copy): the container sees every file of the rich image with the owner the
//! image gave it, Strata's layer directories are never rewritten, and a Prepare's time does
//! not grow with the image.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::env::{Containerd, Env, SNAPSHOTTER, build_image};
use crate::userns::{assert_layers_untouched, layer_prints};
use crate::util::{self, Snap, labels};

/// The mapping of the container: ids 0..65536 inside are 100000.. outside.
const MAP: &str = "0:100000:65536";
/// Where the host's static busybox is bound into the (shell-less) rich image.
const TOOLS: &str = "/.e2e-tools";

/// The committed snapshots Strata holds that `before` did not, and the top one of them
/// (the one no other is a parent of): an image's layer chain.
fn new_top(env: &Env, before: &[String]) -> String {
    let stored = env.strata_snapshots();
    let new: Vec<_> = stored
        .iter()
        .filter(|i| !before.contains(&i.name))
        .collect();
    let top: Vec<_> = new
        .iter()
        .filter(|i| !new.iter().any(|o| o.parent == i.name))
        .collect();
    assert_eq!(top.len(), 1, "{new:?}");
    top[0].name.clone()
}

/// The fastest of three Prepares on `parent` straight on Strata's socket with a mapping
/// never used before (so each also makes its user namespace and idmapped tree).
fn fastest_prepare(env: &Env, parent: &str, first_host: &mut u32) -> Duration {
    env.block_on(async {
        let mut s = Snap::new(&env.strata).await;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            *first_host += 65536;
            let map = format!("0:{first_host}:65536");
            let mapping = labels(&[
                ("containerd.io/snapshot/uidmapping", &map),
                ("containerd.io/snapshot/gidmapping", &map),
            ]);
            let key = format!("timing-{first_host}");
            let start = Instant::now();
            s.prepare_labels(&key, parent, mapping).await.unwrap();
            best = best.min(start.elapsed());
            s.remove(&key).await.unwrap();
        }
        s.cleanup().await.unwrap();
        best
    })
}

pub fn idmapped_container(test: &str) {
    let env = Env::start(test, "overlayfs", Containerd::V2_1);
    let layout = env.scratch().join("rich");
    crate::pull::rich_image(&layout, &[]);
    let expected = crate::pull::expected_tree(&layout);
    let rich_tar = env.scratch().join("rich.tar");
    crate::pull::pack_layout(&layout, &rich_tar);
    env.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        SNAPSHOTTER,
        rich_tar.to_str().unwrap(),
    ]);
    let image = env.ctr_ok(&["images", "ls", "-q"]).trim().to_string();
    let rich_top = new_top(&env, &[]);
    let layers_before = layer_prints(&env.strata.root.join("snapshots"));

    // Every path, its owner as the container sees it (`/dev` is the runtime's tmpfs). Where
    // the layers were not mapped, the image's owners would show as the overflow id 65534.
    let script = format!(
        "cat /proc/self/uid_map /proc/self/gid_map; echo ---; \
         {TOOLS}/busybox find / -xdev ! -path '{TOOLS}*' ! -path '/dev/*' \
         -exec {TOOLS}/busybox stat -c '%u:%g %n' {{}} +"
    );
    let mount = format!("type=bind,src=/bin/busybox,dst={TOOLS}/busybox,options=rbind:ro");
    let out = env.ctr_run(
        &[
            "--rm",
            "--snapshotter",
            SNAPSHOTTER,
            "--remap-labels",
            "--uidmap",
            MAP,
            "--gidmap",
            MAP,
            "--mount",
            &mount,
        ],
        &image,
        "e2e-userns",
        &["/.e2e-tools/busybox", "sh", "-c", &script],
    );
    let (maps, listing) = out.split_once("---\n").expect("two sections");
    let maps: Vec<Vec<&str>> = maps
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(maps, [["0", "100000", "65536"], ["0", "100000", "65536"]]);
    let seen: BTreeMap<&str, &str> = listing
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(owner, path)| (path, owner))
        .collect();
    let mut wrong = Vec::new();
    for (path, entry) in expected.as_object().unwrap() {
        if path.starts_with("/dev/") {
            continue;
        }
        let want = format!("{}:{}", entry["uid"], entry["gid"]);
        match seen.get(path.as_str()) {
            Some(owner) if *owner == want => {}
            other => wrong.push(format!("{path}: {other:?}, image says {want}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "owners in the container:\n{}",
        wrong.join("\n")
    );
    // Nothing of the layers was rewritten. The container's own directory (removed, not yet
    // reclaimed) held only what the runtime made, nothing copied up.
    let container = assert_layers_untouched(&env.strata.root.join("snapshots"), &layers_before);
    assert!(container.len() < 16, "{container:#?}");
    assert!(env.strata.log_text().contains("idmapped layers"));

    // A Prepare for an image with a 256 MiB file costs what one for the small image does:
    // nothing is copied or chowned (a shifted copy of /big alone would take far longer).
    let before: Vec<String> = env.strata_snapshots().into_iter().map(|i| i.name).collect();
    let big = env.scratch().join("big.tar");
    build_image(&big, "e2e/big:1", 0, &[("BIG_MB", "256")]);
    env.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        SNAPSHOTTER,
        big.to_str().unwrap(),
    ]);
    let big_top = new_top(&env, &before);
    let mut host = 200000;
    let small_time = fastest_prepare(&env, &rich_top, &mut host);
    let big_time = fastest_prepare(&env, &big_top, &mut host);
    eprintln!("user-namespaced Prepare: small image {small_time:?}, 256 MiB image {big_time:?}");
    assert!(
        big_time < small_time * 3 + Duration::from_millis(50),
        "Prepare grew with the image: {small_time:?} vs {big_time:?}"
    );

    for name in [image.as_str(), "e2e/big:1"] {
        env.ctr_ok(&["images", "rm", "--sync", name]);
    }
    env.wait_strata_empty();
    // containerd's collection ends with Strata's Cleanup, which detaches unused trees.
    assert_eq!(
        util::mounts_under(&env.strata.root.join("idmapped")),
        Vec::<std::path::PathBuf>::new()
    );
}
