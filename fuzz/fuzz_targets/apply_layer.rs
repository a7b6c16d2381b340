//! A layer (any bytes: tar, gzip or zstd, sniffed) applied into a fresh root next to a
//! sentinel, in native or overlay whiteout mode (first byte). Covers the tar reader, the
//! decompressors and every entry kind. Whatever happens, nothing outside the root may
//! appear or change, and the applier must not panic. Overlay mode writes trusted.* xattrs:
//! run as root.
#![no_main]

use std::fs;
use std::path::Path;

use differ::WhiteoutMode;
use libfuzzer_sys::fuzz_target;

/// Names, kinds, sizes and contents of everything under `dir`, but `root`.
fn outside(dir: &Path, root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read the temporary directory") {
            let p = e.expect("entry").path();
            if p == root {
                continue;
            }
            let md = fs::symlink_metadata(&p).expect("stat");
            let content = if md.is_file() {
                fs::read(&p).unwrap_or_default()
            } else {
                Vec::new()
            };
            out.push(format!(
                "{} {:?} {} {:?}",
                p.display(),
                md.file_type(),
                md.len(),
                content
            ));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, layer)) = data.split_first() else {
        return;
    };
    let mode = if first & 1 == 0 {
        WhiteoutMode::Native
    } else {
        WhiteoutMode::Overlay {
            userxattr: first & 2 != 0,
        }
    };
    let tmp = tempfile::tempdir().expect("temporary directory");
    let root = tmp.path().join("root");
    let sentinel = tmp.path().join("sentinel");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("file"), "sentinel").unwrap();
    let before = outside(tmp.path(), &root);
    let _ = differ::apply_layer(
        Box::new(std::io::Cursor::new(layer.to_vec())),
        None,
        &root,
        mode,
        differ::Lowers::Present(&[]),
        &differ::LayerLimits::default(),
    );
    assert_eq!(
        outside(tmp.path(), &root),
        before,
        "the layer reached outside its root"
    );
    for escaped in ["/strata-fuzz-escape", "/tmp/strata-fuzz-escape"] {
        assert!(!Path::new(escaped).exists(), "the layer wrote {escaped}");
    }
});
