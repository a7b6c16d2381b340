//! Traversal through tar extensions: GNU long names and links, PAX paths.

use super::*;

hostile_case!(
    gnu_long_name_traversal,
    Expect::Applied,
    &no_setup,
    &|_| {
        let name = format!("{}../../sentinel/file", "./".repeat(60));
        RawTar::default()
            .long_name(&name)
            .file("placeholder", b"pwned")
            .finish()
    },
    &|root, _| {
        assert_eq!(read(&root.join("sentinel/file")), "pwned");
        assert!(!root.join("placeholder").exists());
    },
);

hostile_case!(
    gnu_long_link_traversal,
    Expect::Refused,
    &no_setup,
    &|_| {
        let target = format!("{}../../sentinel/file", "./".repeat(60));
        RawTar::default()
            .long_link(&target)
            .hard_link("l", "placeholder")
            .finish()
    },
    &no_check,
);

hostile_case!(
    pax_path_traversal_and_absolute_path,
    Expect::Applied,
    &no_setup,
    &|tmp| {
        let abs = format!("{}/sentinel/sub/inner", tmp.display());
        RawTar::default()
            .pax(&[("path", b"../../sentinel/file")])
            .file("placeholder", b"pwned")
            .pax(&[("path", abs.as_bytes())])
            .file("placeholder", b"pwned")
            .finish()
    },
    &|root, _| {
        assert_eq!(read(&root.join("sentinel/file")), "pwned");
        let tmp = root.parent().unwrap();
        assert_eq!(read(&inside(root, tmp).join("sentinel/sub/inner")), "pwned");
    },
);

hostile_case!(
    pax_linkpath_traversal,
    Expect::Refused,
    &no_setup,
    &|_| {
        RawTar::default()
            .pax(&[("linkpath", b"../sentinel/file")])
            .hard_link("l", "placeholder")
            .finish()
    },
    &no_check,
);
