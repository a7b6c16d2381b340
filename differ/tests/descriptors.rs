//! An apply keeps few descriptors open however many directories its files go to: the
//! directory cache holds at most 512, and files queued for the worker threads hold their
//! directories open only until the cache is emptied (the workers are waited for first).
//! Without that wait a layer of thousands of one-file directories held 1,000 more open,
//! past the 1,024 a shell's default limit allows. One test in its own process, so no other
//! test's descriptors are counted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use differ::WhiteoutMode;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[test]
fn an_apply_keeps_its_open_directories_bounded() {
    // The directories first: then the reading thread only opens each one and queues its
    // file, far faster than a worker creates it, so the queue fills.
    let mut tar = RawTar::default();
    for i in 0..6000 {
        tar.dir(&format!("d{i}"));
    }
    for i in 0..6000 {
        tar.file(&format!("d{i}/f"), b"");
    }
    let layer = tar.finish();
    let before = open_descriptors();
    let (done, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let sampler = {
        let (done, peak) = (Arc::clone(&done), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(open_descriptors(), Ordering::Relaxed);
            }
        })
    };
    for _ in 0..3 {
        let tmp = tempdir();
        apply(&layer, tmp.path(), WhiteoutMode::Native).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 6000);
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    // The cache's 512 directories, the pipeline's and the workers' own few, the sampler's.
    assert!(
        peak < before + 600,
        "{peak} descriptors open at once (before: {before})"
    );
}
