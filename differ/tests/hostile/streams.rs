//! Broken streams: truncated or corrupt tar, gzip and zstd, lying sizes, trailing garbage, and
//! random header corruption.

use super::*;

/// A layer whose compressed form is long enough to cut and corrupt in the middle.
fn payload() -> Vec<u8> {
    RawTar::default()
        .file("a", b"first")
        .file("noise", &noise(200 << 10, 11))
        .file("z", b"last")
        .finish()
}

/// For streams that may be accepted: if the file before the damage is there, it is whole.
fn first_entry_whole(root: &Path, _: WhiteoutMode) {
    if root.join("a").exists() {
        assert_eq!(read(&root.join("a")), "first");
    }
}

hostile_case!(
    truncated_tar_mid_file,
    Expect::Refused,
    &no_setup,
    &|_| payload()[..512 * 3 + 1000].to_vec(),
    &no_check,
);

hostile_case!(
    truncated_tar_mid_header,
    Expect::Refused,
    &no_setup,
    &|_| payload()[..512 * 2 + 200].to_vec(),
    &no_check,
);

hostile_case!(
    bad_header_checksum,
    Expect::Refused,
    &no_setup,
    &|_| {
        let mut block = Header::new(b'0', "aaaa").block();
        block[0] = b'b';
        let mut t = RawTar::default();
        t.file("first", b"ok").raw(&block);
        t.finish()
    },
    &no_check,
);

hostile_case!(
    size_field_larger_than_data,
    Expect::Refused,
    &no_setup,
    &|_| {
        let mut h = Header::new(b'0', "big");
        h.size = 100_000;
        let mut t = RawTar::default();
        t.raw(&h.block()).raw(&[b'x'; 512]);
        t.finish()
    },
    &no_check,
);

hostile_case!(
    pax_size_larger_than_data,
    Expect::Refused,
    &no_setup,
    &|_| {
        RawTar::default()
            .pax(&[("size", b"100000")])
            .file("big", b"small")
            .finish()
    },
    &no_check,
);

hostile_case!(
    truncated_gzip,
    Expect::Refused,
    &no_setup,
    &|_| {
        let gz = gzip(&payload());
        gz[..gz.len() / 2].to_vec()
    },
    &first_entry_whole,
);

hostile_case!(
    gzip_without_its_trailer,
    Expect::Refused,
    &no_setup,
    &|_| {
        let gz = gzip(&payload());
        gz[..gz.len() - 4].to_vec()
    },
    &first_entry_whole,
);

hostile_case!(
    corrupt_gzip,
    Expect::Refused,
    &no_setup,
    &|_| {
        let mut gz = gzip(&payload());
        let mid = gz.len() / 2;
        for b in &mut gz[mid..mid + 16] {
            *b = !*b;
        }
        gz
    },
    &first_entry_whole,
);

hostile_case!(
    truncated_zstd,
    Expect::Refused,
    &no_setup,
    &|_| {
        let z = zstd(&payload());
        z[..z.len() / 2].to_vec()
    },
    &first_entry_whole,
);

// The frame carries a content checksum (see [`zstd`]); without one, flipped bytes in a
// stored block are undetectable by any decoder.
hostile_case!(
    corrupt_zstd,
    Expect::Refused,
    &no_setup,
    &|_| {
        let mut z = zstd(&payload());
        let mid = z.len() / 2;
        for b in &mut z[mid..mid + 16] {
            *b = !*b;
        }
        z
    },
    &first_entry_whole,
);

hostile_case!(
    garbage_after_tar,
    Expect::Either,
    &no_setup,
    &|_| [payload(), b"garbage after the end of the archive".to_vec()].concat(),
    &|root, _| {
        // The end-of-archive marker came first: everything before it is applied.
        assert_eq!(read(&root.join("a")), "first");
        assert_eq!(read(&root.join("z")), "last");
    },
);

hostile_case!(
    garbage_after_gzip,
    Expect::Either,
    &no_setup,
    &|_| [gzip(&payload()), b"garbage".to_vec()].concat(),
    &first_entry_whole,
);

/// Offsets of the header blocks of a well-formed tar.
fn header_offsets(tar: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|b| *b != 0) {
        out.push(at);
        let field = String::from_utf8_lossy(&tar[at + 124..at + 135]).into_owned();
        let size = usize::from_str_radix(field.trim_matches(char::from(0)), 8).unwrap();
        at += 512 + size.div_ceil(512) * 512;
    }
    out
}

/// Rewrites the checksum of the header block at `at`.
fn fix_checksum(tar: &mut [u8], at: usize) {
    let block = &mut tar[at..at + 512];
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

#[test]
fn random_corruptions_never_escape_or_panic() {
    // Random bytes written into the headers (checksums then fixed, so the damage reaches
    // the parser's every field) and now and then into the data, of a layer that uses every
    // header form the reader knows: PAX records, GNU long names, links through and out of
    // the root, a whiteout. Whatever comes of it, the applier applies inside the root or
    // refuses, and never panics (debug builds also trap arithmetic overflow).
    let base = |t: &Path| {
        let long = format!("{}deep", "long/".repeat(25));
        let t_rel = t.strip_prefix("/").unwrap().to_str().unwrap().to_string();
        RawTar::default()
            .dir("sentinel")
            .dir(&t_rel)
            .dir("d")
            .file("d/f", &noise(700, 7))
            .symlink("d/up", "../../sentinel")
            .symlink("d/abs", t.to_str().unwrap())
            .hard_link("d/h", "d/f")
            .pax(&[
                ("SCHILY.xattr.user.x", b"v\n=w"),
                ("path", long.as_bytes()),
                ("mtime", b"1700000000.25"),
            ])
            .file("short", b"pax data")
            .long_name(&format!("{}gnu", "g/".repeat(60)))
            .file("gnu-short", b"gnu data")
            .file("d/up/through", b"x")
            .file("d/abs/through", b"y")
            .file("d/.wh.h", b"")
            .finish()
    };
    let clean = tempdir();
    let root = clean.path().join("root");
    fs::create_dir(&root).unwrap();
    apply(&base(clean.path()), &root, WhiteoutMode::Native).expect("the unharmed layer applies");
    for seed in 1..=300u64 {
        // `noise` sets the low bit of its seed.
        let r = noise(24, seed << 1);
        hostile(
            &format!("random_corruptions seed {seed}"),
            Expect::Either,
            &no_setup,
            &|t| {
                let mut blob = base(t);
                let headers = header_offsets(&blob);
                for pick in r.chunks(4).take(1 + (r[0] % 5) as usize) {
                    let n = u32::from_le_bytes([pick[0], pick[1], pick[2], 0]) as usize;
                    let at = if pick[3] % 8 == 0 {
                        n % blob.len()
                    } else {
                        headers[n % headers.len()] + (n >> 8) % 512
                    };
                    blob[at] = pick[3];
                }
                for h in headers {
                    fix_checksum(&mut blob, h);
                }
                blob
            },
            &no_check,
        );
    }
}
