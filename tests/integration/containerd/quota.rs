//! Size-limited containers on containerd 2.1: Strata's root on a loop-mounted btrfs with
//! quotas, one container asking for a limit with `ctr run --snapshotter-label
//! containerd.io/snapshot/max-size=…` and one not. The first gets EDQUOT past its limit, the
//! second writes on, and once containerd's collection has removed their snapshots no
//! subvolume or qgroup of theirs is left.

use super::env::{Containerd, Env, SNAPSHOTTER, Unpack};
use crate::util::{self, TempDir};

const IMAGE: &str = "e2e/quota:1";
const LIMIT: u64 = 16 << 20;

/// Runs a container on the test image writing 32 MiB to its root filesystem, with
/// `extra` arguments for `ctr run`; what dd and its exit status said.
fn write_32_mib(env: &Env, id: &str, extra: &[&str]) -> String {
    let script = "dd if=/dev/zero of=/fill bs=1M count=32 2>&1; echo rc=$?";
    let flags = [&["--rm", "--snapshotter", SNAPSHOTTER][..], extra].concat();
    env.ctr_run(&flags, IMAGE, id, &["/bin/sh", "-c", script])
}

pub fn size_limited_containers(test: &str) {
    util::assert_root(test);
    let fs = TempDir::new("containerd-quota-fs");
    let mnt = util::loop_btrfs(fs.path(), 2048, true);
    let env = Env::start_rooted(test, Containerd::V2_1, mnt.join("root"));
    env.import(IMAGE, 0, Unpack::Transfer);

    let label = format!("containerd.io/snapshot/max-size={LIMIT}");
    let limited = write_32_mib(&env, "e2e-limited", &["--snapshotter-label", &label]);
    assert!(
        limited.contains("Disk quota exceeded") && limited.trim_end().ends_with("rc=1"),
        "{limited}"
    );
    let sibling = write_32_mib(&env, "e2e-sibling", &[]);
    assert!(
        sibling.contains("32+0 records out") && sibling.trim_end().ends_with("rc=0"),
        "{sibling}"
    );

    env.remove_image(IMAGE);
    util::assert_no_subvolume_qgroups(&mnt);
    drop(env);
}
