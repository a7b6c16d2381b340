//! Reading a tar stream for apply: headers (v7, ustar, GNU), PAX records parsed by their
//! length prefix (so values may hold any byte, newlines included, as binary
//! `security.capability` xattrs do), GNU long names and old-style GNU sparse maps, with each
//! entry's data handed out in place from the decoder's buffers.
//!
//! What it accepts follows Go's `archive/tar`, which containerd's own applier uses: a PAX
//! `size` overrides the header's, later PAX headers add to earlier ones, global headers are
//! ignored, and a v7 regular file whose name ends in `/` is a directory. Extension entries are
//! capped at 1 MiB, so a hostile header cannot make apply buffer without bound.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, BufRead};
use std::os::unix::ffi::OsStringExt;

use crate::{Error, Result};

const BLOCK: usize = 512;
/// Largest PAX header or GNU long name accepted (as Go's `archive/tar`).
const MAX_SPECIAL: u64 = 1 << 20;
/// Most extension blocks of an old GNU sparse map (21 extents each): 1 MiB of map, like
/// `MAX_SPECIAL`, so a hostile map cannot grow memory with the stream.
const MAX_SPARSE_BLOCKS: usize = 2048;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Regular,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
}

/// Where the data of an old-style GNU sparse file goes: `(offset, length)` extents, stored
/// one after another in the archive, and the file's full length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SparseMap {
    pub extents: Vec<(u64, u64)>,
    pub real_size: u64,
}

/// One entry's header with its PAX and GNU extensions folded in.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub kind: EntryKind,
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub dev: (u32, u32),
    pub sparse: Option<SparseMap>,
    pub meta: Meta,
}

/// An entry's owner, mode, time and xattrs: what is applied to whatever it creates.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time (seconds, nanoseconds), never before 1970.
    pub mtime: (i64, i64),
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// What one PAX header (`x`) says; a later one replaces it, as in Go's reader.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<i64>,
    gid: Option<i64>,
    mtime: Option<(i64, i64)>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// Extensions that apply to the next ordinary entry.
#[derive(Default)]
struct Pending {
    pax: Pax,
    /// GNU `L` / `K` names: they win over PAX `path` / `linkpath`, whatever the order.
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

/// A tar stream read entry by entry.
pub(crate) struct TarStream<R> {
    input: R,
    /// Bytes of the current entry's data not yet handed out.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    /// Bytes handed out by the last [`TarStream::data`] call, consumed on the next call.
    handed_out: usize,
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::InvalidLayer(format!("bad tar: {what}"))
}

fn read_err(e: io::Error) -> Error {
    Error::InvalidLayer(format!("reading the tar stream: {e}"))
}

impl<R: BufRead> TarStream<R> {
    pub(crate) fn new(input: R) -> Self {
        TarStream {
            input,
            remaining: 0,
            padding: 0,
            handed_out: 0,
        }
    }

    /// The next entry's header, after skipping whatever the caller left of the previous
    /// entry's data; `None` at the end of the archive (a zero block, or the end of the
    /// stream on a block boundary).
    pub(crate) fn next_entry(&mut self) -> Result<Option<Header>> {
        let mut pending = Pending::default();
        loop {
            self.skip_rest()?;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? || !self.is_header(&block)? {
                return Ok(None);
            }
            verify_checksum(&block)?;
            let typeflag = block[156];
            let size = u64::try_from(numeric(&block[124..136], "size")?)
                .map_err(|_| bad("negative size"))?;
            if !matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
                return self.header(&block, size, pending).map(Some);
            }
            self.start_data(size);
            match typeflag {
                b'x' => pending.pax = parse_pax(&self.special_data(size, "PAX header")?)?,
                // Go hands a global header to its caller as an entry, which containerd
                // ignores; what was pending for the next entry is dropped with it.
                b'g' => pending = Pending::default(),
                b'L' => {
                    pending.long_name = Some(trim_nul(&self.special_data(size, "GNU long name")?));
                }
                _ => {
                    pending.long_link = Some(trim_nul(&self.special_data(size, "GNU long link")?));
                }
            }
        }
    }

    /// Whether `block` starts an entry: a zero block ends the archive when the next block is
    /// zero too or the stream ends; a zero block followed by anything else is an error, as
    /// in Go.
    fn is_header(&mut self, block: &[u8; BLOCK]) -> Result<bool> {
        if block.iter().any(|b| *b != 0) {
            return Ok(true);
        }
        let mut next = [0u8; BLOCK];
        if self.read_block(&mut next)? && next.iter().any(|b| *b != 0) {
            return Err(bad("a zero block followed by more entries"));
        }
        Ok(false)
    }

    fn header(&mut self, block: &[u8; BLOCK], size: u64, pending: Pending) -> Result<Header> {
        let field = |range: std::ops::Range<usize>, what: &str| numeric(&block[range], what);
        let magic = &block[257..263];
        let gnu = magic == b"ustar " && &block[263..265] == b" \x00";
        // Go: "ustar\0" is USTAR/PAX whatever the version bytes; with "tar\0" at the end of
        // the block it is star, whose prefix is shorter.
        let prefix = match (magic == b"ustar\x00", &block[508..512] == b"tar\x00") {
            (true, false) => cstr(&block[345..500]),
            (true, true) => cstr(&block[345..476]),
            (false, _) => &[],
        };
        let Pending {
            pax,
            long_name,
            long_link,
        } = pending;
        let path = match long_name.or(pax.path) {
            Some(p) => p,
            None if prefix.is_empty() => cstr(&block[0..100]).to_vec(),
            None => [prefix, b"/", cstr(&block[0..100])].concat(),
        };
        let link = long_link
            .or(pax.link)
            .unwrap_or_else(|| cstr(&block[157..257]).to_vec());
        let size = pax.size.unwrap_or(size);
        let typeflag = block[156];
        let kind = match typeflag {
            b'0' | b'7' => EntryKind::Regular,
            0 if path.ends_with(b"/") => EntryKind::Dir,
            0 => EntryKind::Regular,
            b'1' => EntryKind::HardLink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::Char,
            b'4' => EntryKind::Block,
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            b'S' if gnu => EntryKind::Regular,
            // containerd refuses what it cannot create ("unhandled tar header type").
            other => {
                return Err(bad(format!(
                    "unsupported entry type {:?} for {}",
                    other as char,
                    String::from_utf8_lossy(&path)
                )));
            }
        };
        let sparse = if typeflag == b'S' && gnu {
            Some(self.gnu_sparse_map(block, size)?)
        } else {
            None
        };
        // Links, devices, fifos and directories have no data, whatever their size says
        // (Go's isHeaderOnlyType): reading one's "data" would skip real entries.
        let header_only = !matches!(kind, EntryKind::Regular);
        self.start_data(if header_only { 0 } else { size });
        let mtime = match pax.mtime {
            Some(t) => t,
            None => (field(136..148, "mtime")?, 0),
        };
        let id = |v: i64, what: &str| {
            u32::try_from(v).map_err(|_| bad(format!("{what} {v} out of range")))
        };
        let uid = id(pax.uid.map_or_else(|| field(108..116, "uid"), Ok)?, "uid")?;
        let gid = id(pax.gid.map_or_else(|| field(116..124, "gid"), Ok)?, "gid")?;
        let dev = if matches!(kind, EntryKind::Char | EntryKind::Block) {
            (
                field(329..337, "device major")? as u32,
                field(337..345, "device minor")? as u32,
            )
        } else {
            (0, 0)
        };
        Ok(Header {
            kind,
            path,
            link,
            dev,
            sparse,
            meta: Meta {
                mode: field(100..108, "mode")? as u32 & 0o7777,
                uid,
                gid,
                // containerd's boundTime: a time before 1970 becomes 1970.
                mtime: if mtime.0 < 0 || mtime.1 < 0 {
                    (0, 0)
                } else {
                    mtime
                },
                xattrs: pax.xattrs.into_iter().collect(),
            },
        })
    }

    /// The extents of an old GNU sparse file: four in the header, 21 per extension block
    /// that follows it (before the data).
    fn gnu_sparse_map(&mut self, block: &[u8; BLOCK], size: u64) -> Result<SparseMap> {
        let mut extents = Vec::new();
        let unsigned = |raw: &[u8], what: &str| {
            u64::try_from(numeric(raw, what)?).map_err(|_| bad(format!("negative {what}")))
        };
        let mut push = |raw: &[u8]| -> Result<()> {
            let offset = unsigned(&raw[0..12], "sparse offset")?;
            let len = unsigned(&raw[12..24], "sparse length")?;
            if offset != 0 || len != 0 {
                extents.push((offset, len));
            }
            Ok(())
        };
        for i in 0..4 {
            push(&block[386 + i * 24..386 + (i + 1) * 24])?;
        }
        let real_size = unsigned(&block[483..495], "sparse size")?;
        let mut extended = block[482] != 0;
        let mut blocks = 0;
        // Extension blocks sit between the header and the data, outside `size` (the
        // previous entry is fully skipped by now).
        while extended {
            blocks += 1;
            if blocks > MAX_SPARSE_BLOCKS {
                return Err(bad(format!(
                    "sparse map of more than {MAX_SPARSE_BLOCKS} extension blocks"
                )));
            }
            let mut ext = [0u8; BLOCK];
            if !self.read_block(&mut ext)? {
                return Err(bad("truncated sparse map"));
            }
            for i in 0..21 {
                push(&ext[i * 24..(i + 1) * 24])?;
            }
            extended = ext[504] != 0;
        }
        let mut stored = 0u64;
        let mut end = 0u64;
        for &(offset, len) in &extents {
            if offset < end {
                return Err(bad("sparse extents overlap or go backwards"));
            }
            end = offset
                .checked_add(len)
                .filter(|e| *e <= real_size)
                .ok_or_else(|| bad("sparse extent past the file's end"))?;
            stored = stored
                .checked_add(len)
                .ok_or_else(|| bad("sparse extents overflow"))?;
        }
        if stored != size {
            return Err(bad(format!(
                "sparse extents hold {stored} bytes, the entry {size}"
            )));
        }
        Ok(SparseMap { extents, real_size })
    }

    /// The next piece of the current entry's data, in place; `None` when it is all handed
    /// out. A piece is valid until the next call.
    pub(crate) fn data(&mut self) -> Result<Option<&[u8]>> {
        self.data_at_most(u64::MAX)
    }

    /// Exactly `n` bytes of the current entry's data, into `out` (for sparse extents).
    pub(crate) fn data_exact(
        &mut self,
        mut n: u64,
        mut out: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        while n > 0 {
            let piece = self
                .data_at_most(n)?
                .ok_or_else(|| bad("truncated entry data"))?;
            n -= piece.len() as u64;
            out(piece)?;
        }
        Ok(())
    }

    /// Like [`TarStream::data`], at most `max` bytes.
    fn data_at_most(&mut self, max: u64) -> Result<Option<&[u8]>> {
        self.input.consume(self.handed_out);
        self.handed_out = 0;
        let want = self.remaining.min(max);
        if want == 0 {
            return Ok(None);
        }
        let buf = self.input.fill_buf().map_err(read_err)?;
        if buf.is_empty() {
            return Err(bad("truncated entry data"));
        }
        let n = buf.len().min(usize::try_from(want).unwrap_or(usize::MAX));
        self.remaining -= n as u64;
        self.handed_out = n;
        Ok(Some(&buf[..n]))
    }

    fn start_data(&mut self, size: u64) {
        self.remaining = size;
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    }

    /// Skips what is left of the current entry and its padding.
    fn skip_rest(&mut self) -> Result<()> {
        self.input.consume(self.handed_out);
        self.handed_out = 0;
        let mut left = self.remaining.saturating_add(self.padding);
        while left > 0 {
            let buf = self.input.fill_buf().map_err(read_err)?;
            if buf.is_empty() {
                return Err(bad("truncated entry data"));
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            self.input.consume(n);
            left -= n as u64;
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    /// Reads one block; `false` at a clean end of stream.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            let buf = self.input.fill_buf().map_err(read_err)?;
            if buf.is_empty() {
                return if filled == 0 {
                    Ok(false)
                } else {
                    Err(bad("truncated header"))
                };
            }
            let n = buf.len().min(BLOCK - filled);
            block[filled..filled + n].copy_from_slice(&buf[..n]);
            self.input.consume(n);
            filled += n;
        }
        Ok(true)
    }

    /// The whole data of an extension entry.
    fn special_data(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_SPECIAL {
            return Err(bad(format!(
                "{what} of {size} bytes (at most {MAX_SPECIAL})"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        self.data_exact(size, |piece| {
            data.extend_from_slice(piece);
            Ok(())
        })?;
        Ok(data)
    }
}

/// The header checksum: the sum of its bytes with the checksum field read as spaces,
/// unsigned (POSIX) or signed (some old tars), as Go accepts either.
fn verify_checksum(block: &[u8; BLOCK]) -> Result<()> {
    let want = octal(&block[148..156]).map_err(|e| bad(format!("checksum: {e}")))?;
    let field = 8 * u64::from(b' ');
    let unsigned = block.iter().map(|b| u64::from(*b)).sum::<u64>()
        - block[148..156].iter().map(|b| u64::from(*b)).sum::<u64>()
        + field;
    if want == unsigned {
        return Ok(());
    }
    let signed = block.iter().map(|b| i64::from(*b as i8)).sum::<i64>()
        - block[148..156]
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
fn numeric(field: &[u8], what: &str) -> Result<i64> {
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
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

fn trim_nul(data: &[u8]) -> Vec<u8> {
    cstr(data).to_vec()
}

/// Parses PAX records (`LENGTH KEY=VALUE\n`, LENGTH counting the whole record) as Go does:
/// a later record for a key wins, an empty value keeps the header's own field (xattrs
/// excepted: containerd sets them from the raw records), a NUL in a key or a path is an error.
fn parse_pax(mut data: &[u8]) -> Result<Pax> {
    let mut pax = Pax::default();
    while !data.is_empty() {
        // Some writers pad the records with NULs.
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| bad("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("PAX record length"))?;
        if len < 5 || len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("malformed PAX record"));
        }
        let record = &data[space + 1..len - 1];
        data = &data[len..];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| bad("PAX record without '='"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        if key.is_empty() || key.contains(&0) {
            return Err(bad("PAX record with a bad key"));
        }
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            pax.xattrs
                .insert(OsString::from_vec(name.to_vec()), value.to_vec());
            continue;
        }
        if key.starts_with(b"GNU.sparse.") {
            return Err(Error::NotImplemented(
                "PAX sparse files (GNU.sparse.*) in a layer".into(),
            ));
        }
        if matches!(key, b"path" | b"linkpath") && value.contains(&0) {
            return Err(bad("NUL in a PAX path"));
        }
        if value.is_empty() {
            continue;
        }
        let decimal = |what: &str| -> Result<i64> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("PAX {what} {:?}", String::from_utf8_lossy(value))))
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.link = Some(value.to_vec()),
            b"size" => {
                pax.size =
                    Some(u64::try_from(decimal("size")?).map_err(|_| bad("negative PAX size"))?);
            }
            b"uid" => pax.uid = Some(decimal("uid")?),
            b"gid" => pax.gid = Some(decimal("gid")?),
            b"mtime" => pax.mtime = Some(pax_time(value).ok_or_else(|| bad("PAX mtime"))?),
            // atime, ctime, uname, gname, comment, charset, ...: not applied.
            _ => {}
        }
    }
    Ok(pax)
}

/// Parses a PAX time (`seconds[.fraction]`, possibly negative) as (seconds, nanoseconds).
fn pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    Some((secs, if s.starts_with('-') { -nanos } else { nanos }))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A header block with a correct checksum.
    fn block_with(typeflag: u8, size_field: &[u8]) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..4].copy_from_slice(b"file");
        b[100..107].copy_from_slice(b"0000644");
        b[124..124 + size_field.len()].copy_from_slice(size_field);
        b[156] = typeflag;
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|x| u64::from(*x)).sum();
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        b
    }

    #[test]
    fn huge_sizes_end_in_an_error_not_an_overflow() {
        // i64::MAX, the largest size Go accepts.
        let mut size = [0xffu8; 12];
        size[..5].copy_from_slice(&[0x80, 0, 0, 0, 0x7f]);
        let mut tar = block_with(b'0', &size).to_vec();
        tar.extend_from_slice(&[b'x'; 1024]);
        let mut t = TarStream::new(&tar[..]);
        let h = t.next_entry().unwrap().unwrap();
        assert_eq!(h.kind, EntryKind::Regular);
        assert!(matches!(t.next_entry(), Err(Error::InvalidLayer(_))));
    }

    #[test]
    fn endless_sparse_maps_are_refused() {
        let mut header = block_with(b'S', b"00000000000");
        header[257..265].copy_from_slice(b"ustar  \0");
        header[482] = 1;
        header[148..156].fill(b' ');
        let sum: u64 = header.iter().map(|x| u64::from(*x)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut ext = [0u8; BLOCK];
        ext[504] = 1;
        let mut tar = header.to_vec();
        for _ in 0..MAX_SPARSE_BLOCKS + 1 {
            tar.extend_from_slice(&ext);
        }
        let err = TarStream::new(&tar[..]).next_entry().unwrap_err();
        assert!(err.to_string().contains("extension blocks"), "{err}");
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
                    (148..156, _) => i64::from(b' '),
                    (_, true) => i64::from(*b as i8),
                    (_, false) => i64::from(*b),
                })
                .sum()
        };
        for signed in [false, true] {
            let v = sum(signed);
            let mut b = block;
            b[148..155].copy_from_slice(format!("{v:06o}\0").as_bytes());
            assert!(verify_checksum(&b).is_ok(), "signed={signed}");
            b[0] ^= 1;
            assert!(verify_checksum(&b).is_err(), "signed={signed}, corrupted");
        }
    }

    #[test]
    fn pax_records_are_split_by_length() {
        let value = b"a\nb=c";
        let rec = |k: &str, v: &[u8]| {
            let body = [k.as_bytes(), b"=", v, b"\n"].concat();
            // The length counts its own digits.
            let len = (1..)
                .map(|digits| body.len() + 1 + digits)
                .find(|l| l.to_string().len() + 1 + body.len() == *l)
                .unwrap();
            [len.to_string().as_bytes(), b" ", &body].concat()
        };
        let data = [
            rec("SCHILY.xattr.security.capability", value),
            rec("path", b"x/y"),
            rec("size", b"12"),
        ]
        .concat();
        let p = parse_pax(&data).unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"x/y"[..]));
        assert_eq!(p.size, Some(12));
        assert_eq!(
            p.xattrs.into_iter().collect::<Vec<_>>(),
            vec![(OsString::from("security.capability"), value.to_vec())]
        );
        assert!(parse_pax(b"5 a=b\n").is_err());
        assert!(parse_pax(b"99 path=x\n").is_err());
        // An empty value keeps the header's field.
        assert_eq!(parse_pax(b"8 path=\n").unwrap().path, None);
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b"1.x"), None);
    }
}
