//! `[differ.limits]`: layers beyond the configured entries, path depth or name length are
//! refused with InvalidLayer naming the limit.

use std::io::Cursor;

use differ::{WhiteoutMode, apply_layer};

use crate::common::*;

/// Applies `blob` natively into a fresh directory under `limits`.
fn apply_limited(blob: &[u8], limits: differ::LayerLimits) -> differ::Result<differ::Applied> {
    let tmp = tempdir();
    apply_layer(
        Box::new(Cursor::new(blob.to_vec())),
        None,
        tmp.path(),
        WhiteoutMode::Native,
        differ::Lowers::Present(&[]),
        &limits,
    )
}

#[test]
fn layers_beyond_the_configured_limits_are_refused() {
    let limits = differ::LayerLimits {
        max_entries: 3,
        max_path_depth: 3,
        max_name_bytes: 8,
    };
    let at_limits = RawTar::default()
        .dir("a")
        .dir("a/b")
        .file("a/b/12345678", b"x")
        .finish();
    apply_limited(&at_limits, limits).expect("a layer at every limit applies");

    let refused = |blob: Vec<u8>, limit: &str| {
        let err = apply_limited(&blob, limits).expect_err(limit);
        assert!(
            matches!(&err, differ::Error::InvalidLayer(m) if m.contains(limit)),
            "{limit}: {err}"
        );
    };
    refused(
        RawTar::default()
            .file("1", b"")
            .file("2", b"")
            .file("3", b"")
            .file(".wh.4", b"")
            .finish(),
        "max_entries",
    );
    refused(
        RawTar::default().file("a/b/c/d", b"").finish(),
        "max_path_depth",
    );
    // `..` does not hide depth: the path is measured as written.
    refused(
        RawTar::default().file("a/../b/../c/d", b"").finish(),
        "max_path_depth",
    );
    refused(
        RawTar::default().file("a/123456789", b"").finish(),
        "max_name_bytes",
    );
    // The defaults take a layer no real image comes near.
    let deep = (0..100)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    apply_limited(
        &RawTar::default()
            .long_name(&deep)
            .file("ignored", b"deep")
            .finish(),
        differ::LayerLimits::default(),
    )
    .expect("100 levels under the default limits");
}
