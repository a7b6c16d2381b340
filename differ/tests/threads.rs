//! No thread outlives an apply, whether it succeeds or fails: every decode and hash thread
//! is joined before `apply_layer` returns. (The fuzzer's leak check once found the hash
//! thread left running after a failed decode.) One test in its own process, so no other
//! test's threads are counted.

mod common;

use common::*;
use differ::{Compression, WhiteoutMode};

/// Names of this process's threads that belong to the apply pipeline.
fn pipeline_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("layer-"))
        .collect()
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
                &[],
                &differ::LayerLimits::default(),
            );
            let left = pipeline_threads();
            assert!(left.is_empty(), "round {round}: {left:?} still running");
        }
    }
}
