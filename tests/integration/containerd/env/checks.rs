//! The checks the end-to-end tests share, on an [`Env`]: an image imported into an empty
//! Strata holds exactly its layer chain (applied by Strata's Diff service where containerd
//! uses it), a container on it sees the flattened tree and can write, and a removal leaves
//! nothing in Strata once containerd's collector has run.

use std::time::{Duration, Instant};

use api::services::snapshots::v1 as pb;

use super::{BASE_LAYERS, Containerd, Env, NAMESPACE, SNAPSHOTTER, Unpack, build_image, table};
use crate::util::{self, Snap};

/// How long garbage collection may take to empty Strata after the last reference is gone.
const GC_TIMEOUT: Duration = Duration::from_secs(30);
/// What Strata's Diff service logs for each layer it applies.
const APPLIED_LINE: &str = "applied layer";

/// Every path in the container's root filesystem (`find / -xdev`), apart from the busybox
/// applets under `/bin` and the extra layers' `/extra`, once the base image's three layers are
/// applied: `/etc/b` and `/data/gone` are whited out, `/data/old` is opaque and holds only `new`.
const BASE_TREE: &[&str] = &[
    "/",
    "/bin",
    "/data",
    "/data/keep",
    "/data/keep/x",
    "/data/old",
    "/data/old/new",
    "/dev",
    "/etc",
    "/etc/a",
    "/etc/c",
    "/proc",
    "/run",
    "/sys",
    "/tmp",
];

impl Env {
    /// Builds the test image with `extra` layers beyond the base ones and imports it as
    /// `name` into an empty Strata, unpacked as `unpack` says. Then Strata must hold exactly
    /// the image's layer chain, and its Diff service must have applied each of those layers
    /// straight into its own snapshots (1.7) or none at all (1.6).
    pub fn import(&self, name: &str, extra: usize, unpack: Unpack<'_>) {
        assert_eq!(self.strata_snapshots(), [], "Strata must be empty first");
        let archive = self.tmp.path().join("image.tar");
        build_image(&archive, name, extra, &[]);
        let applied_before = self.applied_lines().len();

        let listed = match unpack {
            Unpack::Pull(registry) => {
                let reference = registry.push(&archive, name);
                self.ctr_ok(&[
                    "images",
                    "pull",
                    "--plain-http",
                    "--snapshotter",
                    SNAPSHOTTER,
                    &reference,
                ]);
                reference
            }
            Unpack::Client | Unpack::Transfer => {
                let archive = archive.to_str().expect("UTF-8 path");
                let mut args = vec!["images", "import", "--snapshotter", SNAPSHOTTER];
                if let Unpack::Transfer = unpack {
                    args.push("--local=false");
                }
                args.push(archive);
                self.ctr_ok(&args);
                name.to_string()
            }
        };
        assert_eq!(self.ctr_ok(&["images", "ls", "-q"]), format!("{listed}\n"));

        let layers = BASE_LAYERS + extra;
        self.check_layer_chain(layers);
        let applied = &self.applied_lines()[applied_before..];
        let expected = match self.release {
            Containerd::V1_6 => 0,
            Containerd::V1_7 | Containerd::V2_1 => layers,
        };
        assert_eq!(applied.len(), expected, "Strata's applies: {applied:#?}");
        // The snapshot field holds the extraction's backend key, "e2e/<seq>/extract-...",
        // or "(foreign mounts)" if Strata did not recognize the mounts as its own.
        for line in applied {
            let snapshot = line
                .split_once(" snapshot=")
                .map(|(_, field)| field.trim_start_matches('"'));
            assert!(
                !line.contains("(foreign mounts)")
                    && snapshot.is_some_and(|s| s.starts_with(&format!("{NAMESPACE}/"))),
                "not applied into a snapshot of ours: {line}"
            );
        }
    }

    /// Strata's log lines for the layers its Diff service applied.
    pub fn applied_lines(&self) -> Vec<String> {
        self.strata
            .log_text()
            .lines()
            .filter(|l| l.contains(APPLIED_LINE))
            .map(str::to_string)
            .collect()
    }

    /// Strata holds exactly one committed chain of `layers` snapshots, each named by
    /// containerd after the chain ID it stands for. (`ctr images import` in 1.6 sets no
    /// `containerd.io/snapshot.ref` label; only the pull unpacker does.)
    fn check_layer_chain(&self, layers: usize) {
        let stored = self.strata_snapshots();
        assert_eq!(stored.len(), layers, "{stored:?}");
        let mut parent = String::new();
        for depth in 0..layers {
            let child = stored
                .iter()
                .find(|i| i.parent == parent)
                .unwrap_or_else(|| panic!("no layer {depth} (parent {parent:?}) in {stored:?}"));
            assert_eq!(child.kind(), pb::Kind::Committed, "{child:?}");
            // "e2e/<seq>/sha256:<chain ID>"
            let chain_id = child.name.rsplit_once("/sha256:").map(|(_, hex)| hex);
            assert!(
                child.name.starts_with(&format!("{NAMESPACE}/"))
                    && chain_id.is_some_and(|h| h.len() == 64),
                "{child:?}"
            );
            parent = child.name.clone();
        }
    }

    /// Runs container `id` on `image` (the test image with `extra` layers) with `--rm`: it
    /// lists its root filesystem, reads the files, then writes to it. Checks all three and
    /// that no container or task is left.
    pub fn run_container(&self, image: &str, id: &str, extra: usize) {
        let extras: Vec<String> = (1..=extra).map(|n| format!("/extra/f{n}")).collect();
        let script = format!(
            "find / -xdev; echo ---; cat /etc/a /etc/c /data/keep/x /data/old/new {}; \
             echo ---; echo written >/data/old/mine && rm /etc/c && cat /data/old/mine && \
             test ! -e /etc/c && echo removed",
            extras.join(" ")
        );
        let out = self.ctr_run(
            &["--rm", "--snapshotter", SNAPSHOTTER],
            image,
            id,
            &["/bin/sh", "-c", &script],
        );
        let sections: Vec<&str> = out.split("---\n").collect();
        assert_eq!(sections.len(), 3, "container output:\n{out}");

        let mut tree: Vec<&str> = sections[0].lines().collect();
        tree.sort_unstable();
        for applet in ["/bin/busybox", "/bin/sh"] {
            assert!(tree.contains(&applet), "{applet} missing from {tree:?}");
        }
        tree.retain(|p| !p.starts_with("/bin/"));
        let mut expected: Vec<&str> = BASE_TREE.to_vec();
        if extra > 0 {
            expected.push("/extra");
            expected.extend(extras.iter().map(String::as_str));
        }
        expected.sort_unstable();
        assert_eq!(tree, expected);

        let contents: String = (1..=extra).map(|n| format!("extra {n}\n")).collect();
        assert_eq!(sections[1], format!("a2\nc2\nx1\nnew3\n{contents}"));
        // The write and the removal are proven by the exit status (the `&&` chain; `ctr_ok`
        // wants 0); what the container printed last is checked as far as ctr passed it on:
        // ctr 1.7 can lose the last write of a task that exits at once (a CI run got
        // "written\n" alone, with status 0).
        assert!(
            "written\nremoved\n".starts_with(sections[2]) && sections[2].starts_with("written\n"),
            "container output after the write: {:?}",
            sections[2]
        );

        assert_eq!(self.ctr_ok(&["containers", "ls", "-q"]), "");
        assert_eq!(self.ctr_ok(&["tasks", "ls", "-q"]), "");
    }

    /// Removes the image with synchronous garbage collection, then checks that nothing is
    /// left in Strata, neither snapshots nor their directories.
    pub fn remove_image(&self, name: &str) {
        self.ctr_ok(&["images", "rm", "--sync", name]);
        assert_eq!(self.ctr_ok(&["images", "ls", "-q"]), "");
        self.wait_strata_empty();
        let left = self.ctr_ok(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
        assert_eq!(table(&left), [vec!["KEY", "PARENT", "KIND"]]);
    }

    /// Runs containerd's garbage collection now and waits for it, by deleting a lease with
    /// `--sync`. Needed after `ctr snapshots rm`: 1.6's scheduler ignores removals made while
    /// a collection is still cleaning up the snapshotter (it drops events older than the end
    /// of the last collection), so no further collection may ever come on its own.
    pub fn collect_garbage(&self) {
        self.ctr_ok(&["leases", "create", "--id", "e2e-gc"]);
        self.ctr_ok(&["leases", "rm", "--sync", "e2e-gc"]);
    }

    /// Waits for containerd's garbage collection to remove every snapshot from Strata and
    /// Strata to delete their directories.
    pub fn wait_strata_empty(&self) {
        let deadline = Instant::now() + GC_TIMEOUT;
        loop {
            let stored = self.strata_snapshots();
            let dirs = util::snapshot_dirs(&self.strata.root);
            if stored.is_empty() && dirs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{GC_TIMEOUT:?} after the last reference went, Strata still holds {:?} in dirs {dirs:?}",
                stored.iter().map(|i| &i.name).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every snapshot Strata holds, listed over its own socket.
    pub fn strata_snapshots(&self) -> Vec<pb::Info> {
        self.runtime.block_on(async {
            Snap::new(&self.strata)
                .await
                .list(&[])
                .await
                .expect("list Strata's snapshots")
        })
    }
}
