//! Feature probes for overlayfs and its backing filesystem, run once at start-up.

use std::fs;
use std::path::Path;

use rustix::fs::{Dir, FileType, Mode, OFlags};

use crate::{Error, Result};

/// Whether the overlay module has an `index` parameter, in which case containerd passes
/// `index=off` explicitly so the host's default cannot change behaviour.
pub fn overlay_index_param() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

/// Whether this process runs in a user namespace (not as the host's real root), where
/// overlayfs needs `userxattr` because `trusted.*` xattrs are out of reach.
pub fn in_user_namespace() -> bool {
    match fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// Whether the filesystem holding `dir` reports file types in directory entries (d_type),
/// which overlayfs needs; containerd refuses to start overlayfs without it.
pub fn supports_d_type(dir: &Path) -> Result<bool> {
    let probe = dir.join(format!(".d_type-probe-{}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| Error::io("create", &probe, e))?;
    let result = scan_for_regular_file(dir, &probe);
    let _ = fs::remove_file(&probe);
    result
}

fn scan_for_regular_file(dir: &Path, probe: &Path) -> Result<bool> {
    let name = probe.file_name().expect("probe has a name");
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", dir, e.into()))?;
    let entries = Dir::read_from(&fd).map_err(|e| Error::io("readdir", dir, e.into()))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("readdir", dir, e.into()))?;
        if entry.file_name().to_bytes() == name.as_encoded_bytes() {
            return Ok(entry.file_type() == FileType::RegularFile);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_has_d_type() {
        let dir = std::env::temp_dir().join(format!("dtype-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let r = supports_d_type(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            r.unwrap(),
            "the test machine's temp dir should support d_type"
        );
    }
}
