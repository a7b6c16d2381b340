//! Names and symlinks that lead out of the root: `..`, absolute names, symlinks in the layer or
//! already in the target, and what replaces an existing symlink.

use super::*;

hostile_case!(
    dotdot_traversal,
    Expect::Applied,
    &no_setup,
    &|_| {
        RawTar::default()
            .file(&format!("../../../../../../../etc/{ESCAPED}"), b"pwned")
            .file(&format!("../../{ESCAPED}"), b"pwned")
            .file("../sentinel/file", b"pwned")
            .file("a/../../../sentinel/new", b"pwned")
            .finish()
    },
    &|root, _| {
        assert_eq!(read(&root.join("etc").join(ESCAPED)), "pwned");
        assert_eq!(read(&root.join(ESCAPED)), "pwned");
        assert_eq!(read(&root.join("sentinel/file")), "pwned");
        assert_eq!(read(&root.join("sentinel/new")), "pwned");
    },
);

hostile_case!(
    absolute_paths,
    Expect::Applied,
    &no_setup,
    &|tmp| {
        RawTar::default()
            .file(&format!("/etc/{ESCAPED}"), b"pwned")
            .file(&format!("{}/sentinel/file", tmp.display()), b"pwned")
            .finish()
    },
    &|root, _| {
        assert_eq!(read(&root.join("etc").join(ESCAPED)), "pwned");
        let tmp = root.parent().unwrap();
        assert_eq!(read(&inside(root, tmp).join("sentinel/file")), "pwned");
    },
);

hostile_case!(
    symlink_to_slash_then_file_through_it,
    Expect::Applied,
    &no_setup,
    &|_| {
        RawTar::default()
            .symlink("evil", "/")
            .file("evil/x", b"pwned")
            .file(&format!("evil/etc/{ESCAPED}"), b"pwned")
            .finish()
    },
    &|root, _| {
        assert!(is_symlink(&root.join("evil")));
        assert_eq!(read(&root.join("x")), "pwned");
        assert_eq!(read(&root.join("etc").join(ESCAPED)), "pwned");
    },
);

hostile_case!(
    symlink_up_then_file_through_it,
    Expect::Applied,
    &no_setup,
    &|_| {
        RawTar::default()
            .symlink("evil", "../../..")
            .file("evil/x", b"pwned")
            .finish()
    },
    &|root, _| assert_eq!(read(&root.join("x")), "pwned"),
);

hostile_case!(
    symlink_to_sentinel_then_file_through_it,
    Expect::Either,
    &no_setup,
    &|_| {
        RawTar::default()
            .symlink("evil", "../sentinel")
            .file("evil/file", b"pwned")
            .finish()
    },
    &no_check,
);

hostile_case!(
    absolute_symlink_to_sentinel_then_file_through_it,
    Expect::Either,
    &no_setup,
    &|tmp| {
        RawTar::default()
            .symlink("evil", &format!("{}/sentinel", tmp.display()))
            .file("evil/file", b"pwned")
            .file("evil/sub/inner", b"pwned")
            .finish()
    },
    &no_check,
);

hostile_case!(
    existing_symlink_to_outside_then_file_through_it,
    Expect::Either,
    &|root, _| symlink("../sentinel", root.join("pre")).unwrap(),
    &|_| RawTar::default().file("pre/file", b"pwned").finish(),
    &no_check,
);

hostile_case!(
    existing_absolute_symlink_to_outside_then_file_through_it,
    Expect::Either,
    &|root, tmp| symlink(tmp.join("sentinel"), root.join("pre")).unwrap(),
    &|_| {
        RawTar::default()
            .file("pre/file", b"pwned")
            .dir("pre/sub")
            .finish()
    },
    &no_check,
);

hostile_case!(
    existing_symlink_as_final_component_is_replaced,
    Expect::Applied,
    &|root, tmp| {
        symlink("../sentinel/file", root.join("f")).unwrap();
        symlink(tmp.join("sentinel/file"), root.join("g")).unwrap();
    },
    &|_| {
        RawTar::default()
            .file("f", b"pwned")
            .file("g", b"pwned")
            .finish()
    },
    &|root, _| {
        for name in ["f", "g"] {
            assert!(!is_symlink(&root.join(name)), "{name} replaced");
            assert_eq!(read(&root.join(name)), "pwned");
        }
    },
);

hostile_case!(
    existing_hard_link_to_outside_is_replaced_not_written_through,
    Expect::Applied,
    &|root, tmp| fs::hard_link(tmp.join("sentinel/file"), root.join("h")).unwrap(),
    &|_| RawTar::default().file("h", b"pwned").finish(),
    &|root, _| {
        assert_eq!(read(&root.join("h")), "pwned");
        assert_eq!(fs::metadata(root.join("h")).unwrap().nlink(), 1);
    },
);

hostile_case!(
    existing_symlink_replaced_by_fifo,
    Expect::Applied,
    &|root, _| symlink("../sentinel/file", root.join("n")).unwrap(),
    &|_| {
        let mut h = Header::new(b'6', "n");
        h.mode = 0o600;
        RawTar::default().entry(h, b"").finish()
    },
    &|root, _| {
        let md = fs::symlink_metadata(root.join("n")).unwrap();
        assert_eq!(md.mode() & 0o170000, 0o010000, "n is a fifo");
    },
);
