//! The digests and sizes `Applied` reports for plain, gzip and zstd blobs (compression given
//! or sniffed, also from a source that trickles), multi-member gzip, multi-frame zstd and
//! record-padded archives.

use std::fs;
use std::io::Cursor;

use differ::{Compression, WhiteoutMode, apply_layer};

use crate::common::*;

/// A layer big enough to span several of the pipeline's chunks.
fn digest_layer() -> Vec<u8> {
    RawTar::default()
        .dir("d")
        .file("d/big", &noise((1 << 20) + 12345, 3))
        .file("d/small", b"small")
        .symlink("d/link", "big")
        .finish()
}

fn check_digests(blob: &[u8], tar: &[u8], hint: Option<Compression>, what: &str) {
    let tmp = tempdir();
    let applied = apply_layer(
        Box::new(Cursor::new(blob.to_vec())),
        hint,
        tmp.path(),
        WhiteoutMode::Native,
        differ::Lowers::Present(&[]),
        &differ::LayerLimits::default(),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(applied.diff_id.as_str(), sha256(tar), "{what}: diff_id");
    assert_eq!(applied.size, tar.len() as u64, "{what}: size");
    assert_eq!(
        applied.blob_digest.as_str(),
        sha256(blob),
        "{what}: blob digest"
    );
    assert_eq!(applied.blob_size, blob.len() as u64, "{what}: blob size");
    assert_eq!(
        fs::read(tmp.path().join("d/small")).unwrap(),
        b"small",
        "{what}: content"
    );
    assert_eq!(
        fs::metadata(tmp.path().join("d/big")).unwrap().len(),
        (1 << 20) + 12345,
        "{what}: big file"
    );
}

#[test]
fn digests_and_sizes_of_plain_gzip_and_zstd_layers() {
    let tar = digest_layer();
    for (compression, blob) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd(&tar)),
    ] {
        check_digests(&blob, &tar, None, &format!("{compression:?} sniffed"));
        check_digests(&blob, &tar, Some(compression), &format!("{compression:?}"));
    }
}

#[test]
fn compression_is_sniffed_from_a_source_that_trickles() {
    // A network source may hand over a byte at a time; sniffing must still see the magic.
    struct Trickle(Cursor<Vec<u8>>);
    impl std::io::Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }
    let tar = digest_layer();
    for blob in [gzip(&tar), zstd(&tar)] {
        let tmp = tempdir();
        let applied = apply_layer(
            Box::new(Trickle(Cursor::new(blob.clone()))),
            None,
            tmp.path(),
            WhiteoutMode::Native,
            differ::Lowers::Present(&[]),
            &differ::LayerLimits::default(),
        )
        .unwrap();
        assert_eq!(applied.diff_id.as_str(), sha256(&tar));
        assert_eq!(applied.blob_digest.as_str(), sha256(&blob));
    }
}

#[test]
fn digests_of_multi_member_gzip_and_multi_frame_zstd() {
    let tar = digest_layer();
    let (a, b) = tar.split_at(tar.len() / 2 + 17);
    let gz = [gzip(a), gzip(b)].concat();
    let zst = [zstd(a), zstd(b)].concat();
    check_digests(&gz, &tar, None, "two gzip members");
    check_digests(&zst, &tar, None, "two zstd frames");
}

#[test]
fn diff_id_covers_record_padding_after_the_end_of_archive() {
    // GNU tar pads archives to 10 KiB records: the padding is part of the diffID.
    let mut tar = digest_layer();
    tar.resize(tar.len().div_ceil(10240) * 10240 + 10240, 0);
    check_digests(&tar, &tar, None, "padded tar");
    check_digests(&gzip(&tar), &tar, None, "padded tar, gzip");
}
