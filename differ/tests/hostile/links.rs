//! Hard links whose targets lie outside the root or are reached through symlinks.

use super::*;

hostile_case!(
    hard_link_out_of_root,
    Expect::Refused,
    &no_setup,
    &|_| {
        RawTar::default()
            .hard_link("l", "../../sentinel/file")
            .finish()
    },
    &no_check,
);

hostile_case!(
    hard_link_to_etc_passwd,
    Expect::Refused,
    &no_setup,
    &|_| RawTar::default().hard_link("l", "/etc/passwd").finish(),
    &|root, _| assert!(!root.join("l").exists()),
);

hostile_case!(
    hard_link_to_absolute_sentinel,
    Expect::Refused,
    &no_setup,
    &|tmp| {
        RawTar::default()
            .hard_link("l", &format!("{}/sentinel/file", tmp.display()))
            .finish()
    },
    &no_check,
);

hostile_case!(
    hard_link_through_layer_symlink,
    Expect::Refused,
    &no_setup,
    &|_| {
        RawTar::default()
            .symlink("s", "../sentinel")
            .hard_link("l", "s/file")
            .finish()
    },
    &no_check,
);

hostile_case!(
    hard_link_through_absolute_layer_symlink,
    Expect::Refused,
    &no_setup,
    &|tmp| {
        RawTar::default()
            .symlink("s", &format!("{}/sentinel", tmp.display()))
            .hard_link("l", "s/file")
            .finish()
    },
    &no_check,
);

hostile_case!(
    hard_link_through_existing_symlink,
    Expect::Refused,
    &|root, tmp| symlink(tmp.join("sentinel"), root.join("s")).unwrap(),
    &|_| RawTar::default().hard_link("l", "s/file").finish(),
    &no_check,
);

hostile_case!(
    hard_link_to_symlink_links_the_symlink_itself,
    Expect::Applied,
    &no_setup,
    &|_| {
        RawTar::default()
            .symlink("s", "../sentinel/file")
            .hard_link("l", "s")
            .finish()
    },
    &|root, _| {
        let s = fs::symlink_metadata(root.join("s")).unwrap();
        let l = fs::symlink_metadata(root.join("l")).unwrap();
        assert!(l.file_type().is_symlink());
        assert_eq!(s.ino(), l.ino());
    },
);
