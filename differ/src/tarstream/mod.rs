//! Reading a tar stream for apply: headers (v7, ustar, GNU), PAX records parsed by their
//! length prefix (so values may hold any byte, newlines included, as binary
//! `security.capability` xattrs do), GNU long names and old-style GNU sparse maps, with each
//! entry's data handed out in place from the decoder's buffers.
//!
//! The header block's layout is in [`block`], PAX records in [`pax`]; this module reads the
//! stream: extension entries folded into the next entry, data handed out in place.
//!
//! What it accepts follows Go's `archive/tar`, which containerd's own applier uses: a PAX
//! `size` overrides the header's, later PAX headers add to earlier ones, global headers are
//! ignored, and a v7 regular file whose name ends in `/` is a directory. Extension entries are
//! capped at 1 MiB, so a hostile header cannot make apply buffer without bound.

mod block;
mod pax;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, BufRead};

use self::block::{
    BLOCK, EXT_IS_EXTENDED, HeaderBlock, SIZE, SPARSE_EXTENT, SPARSE_EXTENTS_PER_BLOCK, TYPEFLAG,
    cstr, numeric, verify_checksum,
};
use self::pax::{Pax, parse_pax};
use crate::{Error, Result};
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
            let typeflag = block[TYPEFLAG];
            let size =
                u64::try_from(numeric(&block[SIZE], "size")?).map_err(|_| bad("negative size"))?;
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

    /// The entry that `block` starts, with the pending extensions folded in.
    fn header(&mut self, block: &[u8; BLOCK], size: u64, pending: Pending) -> Result<Header> {
        let raw = HeaderBlock(block);
        let Pending {
            pax,
            long_name,
            long_link,
        } = pending;
        let path = long_name.or(pax.path).unwrap_or_else(|| raw.path());
        let link = long_link.or(pax.link).unwrap_or_else(|| raw.link_name());
        let size = pax.size.unwrap_or(size);
        let kind = raw.kind(&path)?;
        let sparse = if raw.is_gnu_sparse() {
            Some(self.gnu_sparse_map(&raw, size)?)
        } else {
            None
        };
        // Links, devices, fifos and directories have no data, whatever their size says
        // (Go's isHeaderOnlyType): reading one's "data" would skip real entries.
        let header_only = !matches!(kind, EntryKind::Regular);
        self.start_data(if header_only { 0 } else { size });
        let dev = if matches!(kind, EntryKind::Char | EntryKind::Block) {
            raw.device()?
        } else {
            (0, 0)
        };
        Ok(Header {
            kind,
            path,
            link,
            dev,
            sparse,
            meta: meta(&raw, pax.uid, pax.gid, pax.mtime, pax.xattrs)?,
        })
    }

    /// The extents of an old GNU sparse file: four in the header, 21 per extension block
    /// that follows it (before the data).
    fn gnu_sparse_map(&mut self, raw: &HeaderBlock, size: u64) -> Result<SparseMap> {
        let mut extents = Vec::new();
        let unsigned = |raw: &[u8], what: &str| {
            u64::try_from(numeric(raw, what)?).map_err(|_| bad(format!("negative {what}")))
        };
        let half = SPARSE_EXTENT / 2;
        let mut push = |raw: &[u8]| -> Result<()> {
            let offset = unsigned(&raw[..half], "sparse offset")?;
            let len = unsigned(&raw[half..], "sparse length")?;
            if offset != 0 || len != 0 {
                extents.push((offset, len));
            }
            Ok(())
        };
        for extent in raw.sparse_extents() {
            push(extent)?;
        }
        let real_size = unsigned(raw.sparse_real_size(), "sparse size")?;
        let mut extended = raw.sparse_extended();
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
            for extent in ext.chunks(SPARSE_EXTENT).take(SPARSE_EXTENTS_PER_BLOCK) {
                push(extent)?;
            }
            extended = ext[EXT_IS_EXTENDED] != 0;
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

    /// Bytes of the current entry's data not yet handed out.
    pub(crate) fn data_len(&self) -> u64 {
        self.remaining
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

/// Owner, mode, time and xattrs from the header block, PAX values (`uid`, `gid`, `mtime`)
/// winning.
fn meta(
    raw: &HeaderBlock,
    uid: Option<i64>,
    gid: Option<i64>,
    mtime: Option<(i64, i64)>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
) -> Result<Meta> {
    let id =
        |v: i64, what: &str| u32::try_from(v).map_err(|_| bad(format!("{what} {v} out of range")));
    let uid = id(uid.map_or_else(|| raw.uid(), Ok)?, "uid")?;
    let gid = id(gid.map_or_else(|| raw.gid(), Ok)?, "gid")?;
    let mtime = match mtime {
        Some(t) => t,
        None => (raw.mtime()?, 0),
    };
    Ok(Meta {
        mode: raw.mode()?,
        uid,
        gid,
        // containerd's boundTime: a time before 1970 becomes 1970.
        mtime: if mtime.0 < 0 || mtime.1 < 0 {
            (0, 0)
        } else {
            mtime
        },
        xattrs: xattrs.into_iter().collect(),
    })
}

fn trim_nul(data: &[u8]) -> Vec<u8> {
    cstr(data).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
