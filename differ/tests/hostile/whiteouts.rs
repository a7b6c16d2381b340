//! Whiteouts and opaque markers aimed outside the root or through symlinks, aufs bookkeeping
//! entries, and overlay xattrs smuggled in through PAX records.

use super::*;

hostile_case!(
    whiteout_of_dotdot,
    Expect::Refused,
    &no_setup,
    &|_| RawTar::default().file("sub/.wh..", b"").finish(),
    &no_check,
);

hostile_case!(
    whiteout_of_empty_name,
    Expect::Refused,
    &no_setup,
    &|_| RawTar::default().file(".wh.", b"").finish(),
    &no_check,
);

// `.wh..wh.*` other than the opaque marker is aufs bookkeeping: containerd applies
// nothing for it, and it must not fail the layer.
hostile_case!(
    aufs_metadata_whiteouts_are_skipped,
    Expect::Applied,
    &no_setup,
    &|_| {
        RawTar::default()
            .file("d/.wh..wh.plnk", b"")
            .file("d/kept", b"k")
            .finish()
    },
    &|root, _| {
        let names: Vec<_> = fs::read_dir(root.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kept"]);
    },
);

hostile_case!(
    whiteouts_above_the_root,
    Expect::Applied,
    &no_setup,
    &|_| {
        RawTar::default()
            .file("../.wh.sentinel", b"")
            .file("../../.wh.tmp", b"")
            .finish()
    },
    &|root, mode| {
        for name in ["sentinel", "tmp"] {
            let wh = root.join(name);
            match mode {
                WhiteoutMode::Native => assert!(!wh.exists(), "{name}"),
                WhiteoutMode::Overlay { .. } => assert!(is_whiteout(&wh), "{name}"),
            }
        }
    },
);

hostile_case!(
    whiteout_through_layer_symlink,
    Expect::Either,
    &no_setup,
    &|_| {
        RawTar::default()
            .symlink("evil", "../sentinel")
            .file("evil/.wh.file", b"")
            .finish()
    },
    &no_check,
);

hostile_case!(
    whiteout_through_absolute_layer_symlink,
    Expect::Either,
    &no_setup,
    &|tmp| {
        RawTar::default()
            .symlink("evil", &format!("{}/sentinel", tmp.display()))
            .file("evil/.wh.sub", b"")
            .finish()
    },
    &no_check,
);

hostile_case!(
    whiteout_through_existing_symlink,
    Expect::Either,
    &|root, tmp| symlink(tmp.join("sentinel"), root.join("pre")).unwrap(),
    &|_| RawTar::default().file("pre/.wh.file", b"").finish(),
    &no_check,
);

hostile_case!(
    opaque_whiteout_through_layer_symlink,
    Expect::Either,
    &no_setup,
    &|_| {
        RawTar::default()
            .symlink("evil", "../sentinel")
            .file("evil/.wh..wh..opq", b"")
            .finish()
    },
    &no_check,
);

hostile_case!(
    opaque_whiteout_through_existing_symlink,
    Expect::Either,
    &|root, tmp| symlink(tmp.join("sentinel"), root.join("pre")).unwrap(),
    &|_| RawTar::default().file("pre/.wh..wh..opq", b"").finish(),
    &no_check,
);

/// Asserts no entry under `root` carries an overlay xattr.
fn no_overlay_xattrs(root: &Path, _: WhiteoutMode) {
    for entry in walkdir::WalkDir::new(root) {
        let path = entry.unwrap().into_path();
        for name in mountutil::fs::list_xattrs(&path).unwrap() {
            let n = name.to_string_lossy();
            assert!(
                !n.starts_with("trusted.overlay.") && !n.starts_with("user.overlay."),
                "{} has {n}",
                path.display()
            );
        }
    }
}

hostile_case!(
    pax_trusted_overlay_opaque_injection,
    Expect::Refused,
    &no_setup,
    &|_| {
        RawTar::default()
            .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
            .dir("d")
            .finish()
    },
    &no_overlay_xattrs,
);

hostile_case!(
    pax_trusted_overlay_redirect_injection,
    Expect::Refused,
    &no_setup,
    &|_| {
        RawTar::default()
            .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
            .dir("d")
            .finish()
    },
    &no_overlay_xattrs,
);

hostile_case!(
    pax_user_overlay_xattr_injection,
    Expect::Refused,
    &no_setup,
    &|_| {
        RawTar::default()
            .pax(&[
                ("SCHILY.xattr.user.fine", b"1"),
                ("SCHILY.xattr.user.overlay.x", b"y"),
            ])
            .file("f", b"data")
            .finish()
    },
    &no_overlay_xattrs,
);
