//! Update with any labels and field paths on one snapshot of a real (native) snapshotter:
//! only InvalidArgument may come back, the stored labels never hold an empty value, and a
//! failed update changes nothing.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use snapshotter::native::{Native, NativeSnapshotter};
use snapshotter::{Error, Labels, Options, Snapshotter};

struct Fixture {
    _dir: tempfile::TempDir,
    s: NativeSnapshotter,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let s = NativeSnapshotter::open(dir.path(), Native, Options { sync_remove: true })
            .expect("open a snapshotter");
        s.prepare("k", "", Labels::new()).expect("prepare");
        Fixture { _dir: dir, s }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (labels_text, paths_text) = text.split_once('|').unwrap_or((&text, ""));
    let labels: Labels = labels_text
        .split('\n')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let paths: Vec<String> = paths_text
        .split('\n')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let f = fixture();
    let mut info = f.s.stat("k").expect("stat");
    let before = info.clone();
    info.labels = labels;
    match f.s.update(info, &paths) {
        Ok(updated) => assert!(
            updated.labels.values().all(|v| !v.is_empty()),
            "{updated:?}"
        ),
        Err(Error::InvalidArgument(_)) => {
            assert_eq!(
                f.s.stat("k").expect("stat").labels,
                before.labels,
                "a failed update changed labels"
            );
        }
        Err(e) => panic!("unexpected error class: {e}"),
    }
});
