//! Entries whose order matters, in layers whose small files are written by worker threads:
//! each pattern is repeated in a few hundred fresh directories, so later entries meet files
//! still in flight, and every outcome is the one the tar's order gives.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::common::*;
use differ::WhiteoutMode;

const DIRS: usize = 300;

/// A layer of `DIRS` directories, each holding every pattern once; small files in between
/// keep the workers busy.
fn ordered_layer() -> Vec<u8> {
    let mut tar = RawTar::default();
    for i in 0..DIRS {
        let d = format!("d{i:03}");
        tar.dir(&d);
        for k in 0..8 {
            tar.file(
                &format!("{d}/pad{k}"),
                &noise(100 + k * 50, (i * 8 + k) as u64),
            );
        }
        // The same path twice: the second wins.
        tar.file(&format!("{d}/twice"), b"one");
        tar.file(&format!("{d}/twice"), b"two");
        // A file, then a directory of that name with a file in it.
        tar.file(&format!("{d}/becomes_dir"), b"file first");
        tar.dir(&format!("{d}/becomes_dir"));
        tar.file(&format!("{d}/becomes_dir/inner"), b"inner");
        // A directory with a file in it, then a file of that name.
        tar.dir(&format!("{d}/becomes_file"));
        tar.file(&format!("{d}/becomes_file/gone"), b"gone");
        tar.file(&format!("{d}/becomes_file"), b"file last");
        // A symlink, then a file of that name (the file replaces the link).
        tar.symlink(&format!("{d}/was_link"), "pad0");
        tar.file(&format!("{d}/was_link"), b"not a link");
        // A file, then a symlink of that name.
        tar.file(&format!("{d}/becomes_link"), b"file");
        tar.symlink(&format!("{d}/becomes_link"), "pad1");
        // A hard link right after its target: the whole content is there.
        tar.file(&format!("{d}/target"), &noise(3000, i as u64));
        tar.hard_link(&format!("{d}/link"), &format!("{d}/target"));
        // A file, then its whiteout.
        tar.file(&format!("{d}/hidden"), b"hidden");
        tar.file(&format!("{d}/.wh.hidden"), b"");
        // A directory's files, then the directory whited out.
        tar.dir(&format!("{d}/sub"));
        tar.file(&format!("{d}/sub/a"), b"a");
        tar.file(&format!("{d}/.wh.sub"), b"");
    }
    tar.finish()
}

fn content(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(root: &Path, mode: WhiteoutMode) {
    for i in 0..DIRS {
        let d = root.join(format!("d{i:03}"));
        let at = |name: &str| d.join(name);
        let meta = |name: &str| std::fs::symlink_metadata(at(name)).ok();
        for k in 0..8 {
            assert_eq!(
                content(&at(&format!("pad{k}"))),
                noise(100 + k * 50, (i * 8 + k) as u64)
            );
        }
        assert_eq!(content(&at("twice")), b"two", "{}", d.display());
        assert!(meta("becomes_dir").unwrap().is_dir(), "{}", d.display());
        assert_eq!(content(&at("becomes_dir/inner")), b"inner");
        assert!(meta("becomes_file").unwrap().is_file(), "{}", d.display());
        assert_eq!(content(&at("becomes_file")), b"file last");
        assert!(meta("was_link").unwrap().is_file(), "{}", d.display());
        assert_eq!(content(&at("was_link")), b"not a link");
        assert!(meta("becomes_link").unwrap().is_symlink());
        assert_eq!(
            std::fs::read_link(at("becomes_link")).unwrap(),
            Path::new("pad1")
        );
        let (target, link) = (meta("target").unwrap(), meta("link").unwrap());
        assert_eq!((target.ino(), target.nlink()), (link.ino(), 2));
        assert_eq!(content(&at("link")), noise(3000, i as u64));
        for hidden in ["hidden", "sub"] {
            match mode {
                WhiteoutMode::Native => assert!(meta(hidden).is_none(), "{}", d.display()),
                WhiteoutMode::Overlay { .. } => {
                    assert!(meta(hidden).unwrap().file_type().is_char_device())
                }
            }
        }
    }
}

#[test]
fn order_holds_with_files_written_in_parallel() {
    assert_root("order_holds_with_files_written_in_parallel");
    let layer = ordered_layer();
    for mode in [
        WhiteoutMode::Native,
        WhiteoutMode::Overlay { userxattr: false },
    ] {
        for _ in 0..3 {
            let tmp = tempdir();
            apply(&layer, tmp.path(), mode).unwrap();
            check(tmp.path(), mode);
        }
    }
}

/// Into a directory that was not empty (native mode on a copy of the layers below), files
/// are replaced whatever stood at their names: directories, symlinks through which other
/// entries were written.
#[test]
fn files_replace_what_a_lower_layer_left() {
    assert_root("files_replace_what_a_lower_layer_left");
    let tmp = tempdir();
    let root = tmp.path();
    for i in 0..50 {
        std::fs::create_dir_all(root.join(format!("l{i}/dir/deep"))).unwrap();
        std::fs::write(root.join(format!("l{i}/dir/deep/f")), b"lower").unwrap();
        std::os::unix::fs::symlink("dir", root.join(format!("l{i}/link"))).unwrap();
    }
    let mut tar = RawTar::default();
    for i in 0..50 {
        tar.file(&format!("l{i}/link/through"), b"via the link");
        tar.file(&format!("l{i}/dir"), b"a file now");
        tar.file(&format!("l{i}/link"), b"no longer a link");
        tar.file(&format!("l{i}/new/f"), b"new");
    }
    apply(&tar.finish(), root, WhiteoutMode::Native).unwrap();
    let mut seen = BTreeMap::new();
    for i in 0..50 {
        for name in ["dir", "link", "new/f"] {
            let p = root.join(format!("l{i}/{name}"));
            assert!(
                std::fs::symlink_metadata(&p).unwrap().is_file(),
                "{}",
                p.display()
            );
            *seen.entry(content(&p)).or_insert(0) += 1;
        }
    }
    assert_eq!(
        seen,
        BTreeMap::from([
            (b"a file now".to_vec(), 50),
            (b"no longer a link".to_vec(), 50),
            (b"new".to_vec(), 50)
        ])
    );
}

/// A file that cannot be finished (an xattr the filesystem refuses) fails the apply from a
/// worker thread, with the file named.
#[test]
fn a_worker_failure_fails_the_apply() {
    assert_root("a_worker_failure_fails_the_apply");
    let mut tar = RawTar::default();
    tar.dir("d");
    for k in 0..200 {
        tar.file(&format!("d/f{k}"), b"x");
    }
    tar.pax(&[("SCHILY.xattr.nonsense.name", b"v")]);
    tar.file("d/refused", b"x");
    for k in 0..200 {
        tar.file(&format!("d/g{k}"), b"x");
    }
    let tmp = tempdir();
    let err = apply(&tar.finish(), tmp.path(), WhiteoutMode::Native).unwrap_err();
    assert!(err.to_string().contains("d/refused"), "{err}");
}
