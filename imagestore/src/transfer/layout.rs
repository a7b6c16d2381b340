//! An image layout to import from: an OCI layout (`index.json`, `blobs/sha256/<hex>`) or a
//! docker archive (`manifest.json`, as `docker save` writes it), as a directory or a tar
//! archive of one, read in place (its entries are located once, then each file is read
//! from its offset in the archive).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{Result, TransferError};

/// Where a layout's files are.
pub enum Layout {
    Dir(PathBuf),
    /// The archive, and each regular file's (offset, size) in it, by its path.
    Archive(PathBuf, HashMap<String, (u64, u64)>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Layout {
    /// Opens the layout at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Ok(Layout::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(io(path))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive.entries().map_err(io(path))? {
            let entry = entry.map_err(io(path))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry.path().map_err(io(path))?;
            let name = name.to_string_lossy().trim_start_matches("./").to_string();
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Layout::Archive(path.to_path_buf(), entries))
    }

    /// Whether the layout has file `name`.
    pub fn has(&self, name: &str) -> bool {
        match self {
            Layout::Dir(dir) => dir.join(name).is_file(),
            Layout::Archive(_, entries) => entries.contains_key(name),
        }
    }

    /// A file of the layout, opened for reading.
    pub fn file(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        match self {
            Layout::Dir(dir) => {
                let p = dir.join(name);
                Ok(Box::new(File::open(&p).map_err(io(&p))?))
            }
            Layout::Archive(path, entries) => {
                let (offset, size) = *entries.get(name).ok_or_else(|| {
                    TransferError::Invalid(format!("{}: no {name} in the archive", path.display()))
                })?;
                let mut f = File::open(path).map_err(io(path))?;
                f.seek(SeekFrom::Start(offset)).map_err(io(path))?;
                Ok(Box::new(f.take(size)))
            }
        }
    }

    /// A whole (small) file of the layout.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.file(name)?
            .read_to_end(&mut out)
            .map_err(io(Path::new(name)))?;
        Ok(out)
    }

    /// Blob `digest`, opened for reading.
    pub fn open_blob(&self, digest: &str) -> Result<Box<dyn Read + Send>> {
        self.file(&blob_path(digest)?)
    }

    /// Blob `digest`, whole (for JSON documents).
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        self.read(&blob_path(digest)?)
    }
}

/// `blobs/<algorithm>/<hex>` of a digest.
fn blob_path(digest: &str) -> Result<String> {
    let (algorithm, hex) = digest
        .split_once(':')
        .filter(|(a, h)| !a.is_empty() && !h.is_empty() && !h.contains('/'))
        .ok_or_else(|| TransferError::Invalid(format!("bad digest {digest:?}")))?;
    Ok(format!("blobs/{algorithm}/{hex}"))
}
