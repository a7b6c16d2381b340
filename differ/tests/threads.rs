//! No thread outlives an apply, whether it succeeds or fails: every decode and hash thread
//! is joined before `apply_layer` returns. (The fuzzer's leak check once found the hash
//! thread left running after a failed decode.) One test in its own process, so no other
//! test's threads are counted.
//!
//! A joined thread can still be listed in `/proc/self/task` for a moment: the kernel wakes
//! its joiner when it lets go of the address space, before it is unlisted. So a thread
//! counts as running while it still has one (its `status` shows `VmRSS`), and the check
//! allows that moment a bounded 200 ms.

mod common;

use common::*;
use differ::{Compression, WhiteoutMode};

/// Names of this process's threads of the apply pipeline that still run: listed, and not
/// yet past letting go of the address space.
fn pipeline_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let task = t.ok()?.path();
            let name = std::fs::read_to_string(task.join("comm")).ok()?;
            let status = std::fs::read_to_string(task.join("status")).ok()?;
            let running = status.lines().any(|l| l.starts_with("VmRSS:"));
            Some(name.trim().to_string()).filter(|n| running && n.starts_with("layer-"))
        })
        .collect()
}

/// The pipeline threads still running after up to 200 ms.
fn pipeline_threads_left() -> Vec<String> {
    for _ in 0..20 {
        let left = pipeline_threads();
        if left.is_empty() {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    pipeline_threads()
}

#[test]
fn no_pipeline_thread_outlives_an_apply() {
    let good = RawTar::default().file("f", b"data").finish();
    let layers: Vec<(Vec<u8>, Option<Compression>)> = vec![
        (good.clone(), None),
        // Not gzip at all, truncated gzip, and a tar cut short.
        (b"definitely not gzip".to_vec(), Some(Compression::Gzip)),
        (gzip(&good)[..20].to_vec(), Some(Compression::Gzip)),
        (good[..700].to_vec(), None),
    ];
    for round in 0..10 {
        for (layer, compression) in &layers {
            let tmp = tempdir();
            let _ = differ::apply_layer(
                Box::new(std::io::Cursor::new(layer.clone())),
                *compression,
                tmp.path(),
                WhiteoutMode::Native,
                differ::Lowers::Present(&[]),
                &differ::LayerLimits::default(),
            );
            let left = pipeline_threads_left();
            assert!(left.is_empty(), "round {round}: {left:?} still running");
        }
    }
}
