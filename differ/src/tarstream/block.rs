//! The 512-byte tar header block: where each field lies (v7, ustar, star and GNU layouts),
//! the checksum, and numbers and names read as Go's `archive/tar` reads them.

use std::ops::Range;

use super::{EntryKind, bad};
use crate::Result;

/// Size of a tar block.
pub(super) const BLOCK: usize = 512;

// Field offsets of a header block.
const NAME: Range<usize> = 0..100;
const MODE: Range<usize> = 100..108;
const UID: Range<usize> = 108..116;
const GID: Range<usize> = 116..124;
pub(super) const SIZE: Range<usize> = 124..136;
const MTIME: Range<usize> = 136..148;
const CHECKSUM: Range<usize> = 148..156;
pub(super) const TYPEFLAG: usize = 156;
const LINK_NAME: Range<usize> = 157..257;
const MAGIC: Range<usize> = 257..263;
const VERSION: Range<usize> = 263..265;
const DEV_MAJOR: Range<usize> = 329..337;
const DEV_MINOR: Range<usize> = 337..345;
/// ustar's name prefix; star's is shorter and followed by its own fields.
const USTAR_PREFIX: Range<usize> = 345..500;
const STAR_PREFIX: Range<usize> = 345..476;
/// Where star writes `tar\0`.
const STAR_TRAILER: Range<usize> = 508..512;
/// Old GNU sparse header: four extents of (offset, length), 12 bytes each, then a flag
/// saying extension blocks follow, then the file's real size.
const GNU_SPARSE: usize = 386;
pub(super) const SPARSE_EXTENT: usize = 24;
const GNU_SPARSE_IN_HEADER: usize = 4;
const GNU_IS_EXTENDED: usize = 482;
const GNU_REAL_SIZE: Range<usize> = 483..495;
/// A sparse extension block: 21 extents, then its own "more follow" flag.
pub(super) const SPARSE_EXTENTS_PER_BLOCK: usize = 21;
pub(super) const EXT_IS_EXTENDED: usize = 504;

/// The largest device major and minor numbers Linux represents (`MINORBITS` is 20 of 32).
const MAX_DEV_MAJOR: i64 = (1 << 12) - 1;
const MAX_DEV_MINOR: i64 = (1 << 20) - 1;

/// One header block, its checksum verified.
pub(super) struct HeaderBlock<'a>(pub &'a [u8; BLOCK]);

impl HeaderBlock<'_> {
    fn number(&self, field: Range<usize>, what: &str) -> Result<i64> {
        numeric(&self.0[field], what)
    }

    /// The GNU format (`ustar  \0` magic), whose type `S` is a sparse file.
    pub fn is_gnu(&self) -> bool {
        &self.0[MAGIC] == b"ustar " && &self.0[VERSION] == b" \x00"
    }

    /// The name, with the ustar or star prefix when there is one. Go: `ustar\0` is USTAR or
    /// PAX whatever the version bytes; with `tar\0` at the end of the block it is star.
    pub fn path(&self) -> Vec<u8> {
        let name = cstr(&self.0[NAME]);
        let prefix = match (
            &self.0[MAGIC] == b"ustar\x00",
            &self.0[STAR_TRAILER] == b"tar\x00",
        ) {
            (true, false) => cstr(&self.0[USTAR_PREFIX]),
            (true, true) => cstr(&self.0[STAR_PREFIX]),
            (false, _) => &[],
        };
        if prefix.is_empty() {
            name.to_vec()
        } else {
            [prefix, b"/", name].concat()
        }
    }

    pub fn link_name(&self) -> Vec<u8> {
        cstr(&self.0[LINK_NAME]).to_vec()
    }

    pub fn typeflag(&self) -> u8 {
        self.0[TYPEFLAG]
    }

    /// What the entry is, from its type flag (and, for v7 files, a trailing `/`).
    pub fn kind(&self, path: &[u8]) -> Result<EntryKind> {
        Ok(match self.typeflag() {
            b'0' | b'7' => EntryKind::Regular,
            0 if path.ends_with(b"/") => EntryKind::Dir,
            0 => EntryKind::Regular,
            b'1' => EntryKind::HardLink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::Char,
            b'4' => EntryKind::Block,
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            b'S' if self.is_gnu() => EntryKind::Regular,
            // containerd refuses what it cannot create ("unhandled tar header type").
            other => {
                return Err(bad(format!(
                    "unsupported entry type {:?} for {}",
                    other as char,
                    String::from_utf8_lossy(path)
                )));
            }
        })
    }

    /// An old-style GNU sparse file.
    pub fn is_gnu_sparse(&self) -> bool {
        self.typeflag() == b'S' && self.is_gnu()
    }

    /// Permission bits (setuid, setgid and sticky included).
    pub fn mode(&self) -> Result<u32> {
        Ok(self.number(MODE, "mode")? as u32 & 0o7777)
    }

    pub fn uid(&self) -> Result<i64> {
        self.number(UID, "uid")
    }

    pub fn gid(&self) -> Result<i64> {
        self.number(GID, "gid")
    }

    /// Modification time in whole seconds.
    pub fn mtime(&self) -> Result<i64> {
        self.number(MTIME, "mtime")
    }

    /// Device major and minor numbers, refused unless the kernel can hold them (12 and 20
    /// bits): mknod(2) would silently drop the high bits, and a number that wraps to 0/0 is
    /// an overlay whiteout, hiding what the layers below have at that path.
    pub fn device(&self) -> Result<(u32, u32)> {
        let part = |field, what, max: i64| {
            let v = self.number(field, what)?;
            if (0..=max).contains(&v) {
                Ok(v as u32)
            } else {
                Err(bad(format!(
                    "{what} {v} cannot be represented (at most {max})"
                )))
            }
        };
        Ok((
            part(DEV_MAJOR, "device major", MAX_DEV_MAJOR)?,
            part(DEV_MINOR, "device minor", MAX_DEV_MINOR)?,
        ))
    }

    /// The sparse extents stored in the header itself.
    pub fn sparse_extents(&self) -> impl Iterator<Item = &[u8]> {
        (0..GNU_SPARSE_IN_HEADER).map(|i| {
            let start = GNU_SPARSE + i * SPARSE_EXTENT;
            &self.0[start..start + SPARSE_EXTENT]
        })
    }

    /// Whether sparse extension blocks follow the header.
    pub fn sparse_extended(&self) -> bool {
        self.0[GNU_IS_EXTENDED] != 0
    }

    pub fn sparse_real_size(&self) -> &[u8] {
        &self.0[GNU_REAL_SIZE]
    }
}

/// The header checksum: the sum of its bytes with the checksum field read as spaces,
/// unsigned (POSIX) or signed (some old tars), as Go accepts either.
pub(super) fn verify_checksum(block: &[u8; BLOCK]) -> Result<()> {
    let want = octal(&block[CHECKSUM]).map_err(|e| bad(format!("checksum: {e}")))?;
    let field = CHECKSUM.len() as u64 * u64::from(b' ');
    let unsigned = block.iter().map(|b| u64::from(*b)).sum::<u64>()
        - block[CHECKSUM].iter().map(|b| u64::from(*b)).sum::<u64>()
        + field;
    if want == unsigned {
        return Ok(());
    }
    let signed = block.iter().map(|b| i64::from(*b as i8)).sum::<i64>()
        - block[CHECKSUM]
            .iter()
            .map(|b| i64::from(*b as i8))
            .sum::<i64>()
        + field as i64;
    if i64::try_from(want).is_ok_and(|w| w == signed) {
        Ok(())
    } else {
        Err(bad("header checksum mismatch"))
    }
}

/// A numeric field as Go's reader parses it: base-256 when the first byte's high bit is set
/// (negative with the next bit), else octal text.
pub(super) fn numeric(field: &[u8], what: &str) -> Result<i64> {
    let Some(&first) = field.first() else {
        return Ok(0);
    };
    if first & 0x80 == 0 {
        let v = octal(field).map_err(|e| bad(format!("{what}: {e}")))?;
        return i64::try_from(v).map_err(|_| bad(format!("{what}: {v} overflows")));
    }
    // -a-1 == !a: invert a negative number's bytes and read it as unsigned.
    let invert = if first & 0x40 != 0 { 0xff } else { 0 };
    let mut v = 0u64;
    for (i, &b) in field.iter().enumerate() {
        let b = if i == 0 {
            (b ^ invert) & 0x7f
        } else {
            b ^ invert
        };
        if v >> 56 != 0 {
            return Err(bad(format!("{what}: base-256 number overflows")));
        }
        v = (v << 8) | u64::from(b);
    }
    let v = i64::try_from(v).map_err(|_| bad(format!("{what}: base-256 number overflows")))?;
    Ok(if invert == 0xff { !v } else { v })
}

/// Octal text as Go's `parseOctal`: spaces and NULs trimmed from both ends, cut at the
/// first NUL left, then nothing but octal digits.
fn octal(field: &[u8]) -> std::result::Result<u64, String> {
    let pad = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !pad(b)).unwrap_or(field.len());
    let end = field.iter().rposition(|b| !pad(b)).map_or(start, |e| e + 1);
    let text = cstr(&field[start..end]);
    let mut v = 0u64;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!("{:?} is not octal", String::from_utf8_lossy(field)));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or("octal number overflows")?;
    }
    Ok(v)
}

/// A NUL-terminated field's text.
pub(super) fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_the_kernel_cannot_hold_are_refused() {
        let block_with = |major: &[u8], minor: &[u8]| {
            let mut b = [0u8; BLOCK];
            b[TYPEFLAG] = b'3';
            b[DEV_MAJOR][..major.len()].copy_from_slice(major);
            b[DEV_MINOR][..minor.len()].copy_from_slice(minor);
            b
        };
        let dev = |major: &[u8], minor: &[u8]| HeaderBlock(&block_with(major, minor)).device();
        assert_eq!(dev(b"0000001\0", b"0000003\0").unwrap(), (1, 3));
        assert_eq!(
            dev(b"0007777\0", b"3777777\0").unwrap(),
            (4095, (1 << 20) - 1)
        );
        // 4096:0 would reach mknod(2) as 0:0, an overlay whiteout.
        assert!(dev(b"0010000\0", b"0000000\0").is_err());
        assert!(dev(b"0000000\0", b"4000000\0").is_err());
        // Base-256 numbers past 32 bits, and negative ones.
        assert!(dev(&[0x80, 0, 0, 1, 0, 0, 0, 0], b"0\0").is_err());
        assert!(dev(&[0xff; 8], b"0\0").is_err());
    }

    #[test]
    fn numbers_parse_as_go_does() {
        let n = |f: &[u8]| numeric(f, "field").ok();
        assert_eq!(n(b"0000644\0"), Some(0o644));
        assert_eq!(n(b"  755 \0"), Some(0o755));
        assert_eq!(n(b"\0\0\0\0"), Some(0));
        // Leading NULs are padding too: Go reads 512 here.
        assert_eq!(n(b"\x000000001000\0"), Some(512));
        assert_eq!(n(&[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]), Some(2 << 32));
        assert_eq!(n(&[0xff; 12]), Some(-1));
        assert_eq!(
            n(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
            Some(-2)
        );
        assert_eq!(n(b"0009\0"), None);
        assert_eq!(n(b"644 junk"), None);
        assert_eq!(
            n(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    #[test]
    fn checksums_unsigned_or_signed() {
        let mut block = [0u8; BLOCK];
        block[..4].copy_from_slice(b"n\xe9\xff/");
        block[156] = b'0';
        let sum = |signed: bool| -> i64 {
            block
                .iter()
                .enumerate()
                .map(|(i, b)| match (i, signed) {
                    (i, _) if CHECKSUM.contains(&i) => i64::from(b' '),
                    (_, true) => i64::from(*b as i8),
                    (_, false) => i64::from(*b),
                })
                .sum()
        };
        for signed in [false, true] {
            let v = sum(signed);
            let mut b = block;
            b[CHECKSUM.start..CHECKSUM.end - 1].copy_from_slice(format!("{v:06o}\0").as_bytes());
            assert!(verify_checksum(&b).is_ok(), "signed={signed}");
            b[0] ^= 1;
            assert!(verify_checksum(&b).is_err(), "signed={signed}, corrupted");
        }
    }
}
