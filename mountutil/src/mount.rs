//! Mounting the mount descriptions a snapshotter returns, the way containerd's mount code
//! does, plus temporary mounts that are always undone.
//!
//! Overlay mounts go through the new mount API (`fsopen("overlay")` with one `lowerdir+` per
//! layer), which has no one-page limit on the option string. Kernels without `lowerdir+` get
//! the classic mount(2) data string, compacted to paths relative to the layers' common parent
//! and mounted from a thread with its own working directory, so the daemon's never changes.
//!
//! This module makes the syscalls (through rustix); turning options into flags, data strings
//! and compacted `lowerdir=` lists, and the [`Mount`] description itself, are in `options.rs`.

use std::ffi::{CStr, CString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

pub use crate::options::Mount;
use crate::options::{
    MS_REC, compact_lowerdirs, data_cstring, mount_attr, page_size, parse_options,
};
use crate::{Error, Result};

/// Most lower layers one overlay mount can stack (the kernel's `OVL_MAX_STACK`).
pub const OVERLAY_MAX_LOWERS: usize = 500;

/// Mounts every mount in `mounts`, in order, on `target` (later ones stack on earlier ones).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                let _ = unmount(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    if m.fstype == "overlay" {
        mount_overlay(m, target)
    } else {
        mount_legacy(m, target)
    }
}

fn mount_err(fstype: &str, target: &Path, e: impl Into<std::io::Error>) -> Error {
    Error::Mount {
        fstype: fstype.to_string(),
        target: target.to_path_buf(),
        source: e.into(),
    }
}

/// One classic mount(2) call, `mount(source, target, fstype, flags, data)` plus `MS_REMOUNT`
/// when `remount`, made through the rustix call that passes the same arguments the kernel
/// acts on. It tells the cases apart in the kernel's own order (`path_mount`):
/// - remount (of a bind mount too): `mount_remount`, which adds `MS_REMOUNT` and passes no
///   source or type, which the kernel ignores for a remount anyway;
/// - bind: `mount_bind`/`mount_bind_recursive`; the kernel takes only `MS_REC` from the
///   flags on creating a bind mount and ignores type and data (hence the read-only remount
///   after it);
/// - anything else is a new mount, which needs a type: without one the kernel says `EINVAL`.
fn mount_syscall(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: MountFlags,
    remount: bool,
    data: Option<&CStr>,
) -> rustix::io::Result<()> {
    if remount {
        rustix::mount::mount_remount(target, flags, data.unwrap_or(c""))
    } else if flags.contains(MountFlags::BIND) {
        if flags.contains(MS_REC) {
            rustix::mount::mount_bind_recursive(source, target)
        } else {
            rustix::mount::mount_bind(source, target)
        }
    } else {
        let fstype = fstype.ok_or(Errno::INVAL)?;
        rustix::mount::mount(source, target, fstype, flags, data)
    }
}

fn mount_legacy(m: &Mount, target: &Path) -> Result<()> {
    let parsed = parse_options(&m.options);
    let fstype = (m.fstype != "bind").then_some(m.fstype.as_str());
    let err = |e: Errno| mount_err(&m.fstype, target, e);
    let data = data_cstring(&parsed.data).map_err(err)?;
    let bind = parsed.flags.contains(MountFlags::BIND);
    // A bind mount ignores MS_RDONLY on creation: bind first, then remount read-only.
    let first = if bind {
        parsed.flags & !MountFlags::RDONLY
    } else {
        parsed.flags
    };
    mount_syscall(
        &m.source,
        target,
        fstype,
        first,
        parsed.remount,
        data.as_deref(),
    )
    .map_err(err)?;
    if bind && parsed.flags.contains(MountFlags::RDONLY) {
        // mount(NULL, target, NULL, flags | MS_REMOUNT, ""): with MS_BIND set the kernel
        // only reconfigures the mount's flags and never reads the data.
        if let Err(e) = rustix::mount::mount_remount(target, parsed.flags, c"") {
            let _ = unmount(target);
            return Err(err(e));
        }
    }
    if !parsed.propagation.is_empty() {
        rustix::mount::mount_change(target, parsed.propagation).map_err(err)?;
    }
    Ok(())
}

/// Whether the running kernel accepts `lowerdir+` (Linux 6.8+); learnt on first use.
static LOWERDIR_PLUS_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

fn mount_overlay(m: &Mount, target: &Path) -> Result<()> {
    let lowers = m.lowerdirs();
    if lowers.len() > OVERLAY_MAX_LOWERS {
        return Err(Error::InvalidMount(format!(
            "overlay has {} lower layers; the kernel stacks at most {OVERLAY_MAX_LOWERS}",
            lowers.len()
        )));
    }
    if !LOWERDIR_PLUS_UNSUPPORTED.load(Ordering::Relaxed) {
        match mount_overlay_fsconfig(m, &lowers, target) {
            Err(FsconfigError::NoLowerdirPlus) => {
                LOWERDIR_PLUS_UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            Err(FsconfigError::Failed(e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
    mount_overlay_legacy(m, target)
}

enum FsconfigError {
    NoLowerdirPlus,
    Failed(Error),
}

fn mount_overlay_fsconfig(
    m: &Mount,
    lowers: &[&str],
    target: &Path,
) -> std::result::Result<(), FsconfigError> {
    let fail = |step: &str, e: rustix::io::Errno| {
        FsconfigError::Failed(mount_err(
            "overlay",
            target,
            std::io::Error::other(format!("{step}: {e}")),
        ))
    };
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| fail("fsopen", e))?;
    let mut attrs = MountAttrFlags::empty();
    for (i, lower) in lowers.iter().enumerate() {
        if let Err(e) = rustix::mount::fsconfig_set_string(&fs, "lowerdir+", *lower) {
            if i == 0 && e == rustix::io::Errno::INVAL {
                return Err(FsconfigError::NoLowerdirPlus);
            }
            return Err(fail(&format!("lowerdir+ {lower}"), e));
        }
    }
    for o in &m.options {
        if o.starts_with("lowerdir=") {
            continue;
        }
        if let Some(attr) = mount_attr(o) {
            attrs |= attr;
        } else if let Some((k, v)) = o.split_once('=') {
            rustix::mount::fsconfig_set_string(&fs, k, v).map_err(|e| fail(o, e))?;
        } else {
            rustix::mount::fsconfig_set_flag(&fs, o.as_str()).map_err(|e| fail(o, e))?;
        }
    }
    rustix::mount::fsconfig_create(&fs).map_err(|e| fail("create", e))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| fail("fsmount", e))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| fail("move_mount", e))
}

fn mount_overlay_legacy(m: &Mount, target: &Path) -> Result<()> {
    let (options, workdir) = compact_lowerdirs(&m.options);
    let parsed = parse_options(&options);
    let data = parsed.data.join(",");
    if data.len() >= page_size() {
        return Err(Error::InvalidMount(format!(
            "overlay options are {} bytes even after compaction; a page holds {}",
            data.len(),
            page_size()
        )));
    }
    let (flags, remount) = (parsed.flags, parsed.remount);
    let Some(dir) = workdir else {
        return CString::new(data)
            .map_err(|_| Errno::INVAL)
            .and_then(|data| {
                let fstype = Some("overlay");
                mount_syscall("overlay", target, fstype, flags, remount, Some(&data))
            })
            .map_err(|e| mount_err("overlay", target, e));
    };
    // Relative lowerdirs resolve against the working directory: mount from a thread that
    // unshares its filesystem context, so the process's working directory never moves.
    let target_abs = std::path::absolute(target).map_err(|e| Error::io("resolve", target, e))?;
    let data = CString::new(data).map_err(|_| Error::InvalidMount("NUL in options".into()))?;
    std::thread::spawn(move || -> io::Result<()> {
        // nix, not rustix, for this one call: rustix 1.x only has `unshare_unsafe` (its safe
        // `unshare` is deprecated), and this crate has no unsafe code. CLONE_FS gives this
        // thread its own working directory and nothing else.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
        rustix::process::chdir(&dir)?;
        mount_syscall(
            "overlay",
            &target_abs,
            Some("overlay"),
            flags,
            remount,
            Some(&data),
        )?;
        Ok(())
    })
    .join()
    .map_err(|_| Error::InvalidMount("overlay mount thread panicked".into()))?
    .map_err(|e| mount_err("overlay", target, e))
}

/// Unmounts `target`, retrying while it is busy, and detaching it as a last resort.
pub fn unmount(target: &Path) -> Result<()> {
    for _ in 0..50 {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::BUSY) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                return Err(Error::Unmount {
                    target: target.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
    tracing::warn!(target = %target.display(), "mount still busy, detaching");
    rustix::mount::unmount(target, UnmountFlags::DETACH).map_err(|e| Error::Unmount {
        target: target.to_path_buf(),
        source: e.into(),
    })
}

/// Mounts stacked on a fresh directory, undone (and the directory removed) on drop, also
/// when unwinding from a panic.
#[derive(Debug)]
pub struct TempMount {
    dir: PathBuf,
    layers: usize,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl TempMount {
    /// Mounts `mounts` on a new directory under `parent`.
    pub fn new(mounts: &[Mount], parent: &Path) -> Result<Self> {
        let name = format!(
            "tmpmount-{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        if let Err(e) = mount_all(mounts, &dir) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(TempMount {
            dir,
            layers: mounts.len(),
        })
    }

    /// Where the mounts are.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmounts and removes the directory, reporting failure.
    pub fn release(mut self) -> Result<()> {
        self.undo()
    }

    fn undo(&mut self) -> Result<()> {
        while self.layers > 0 {
            unmount(&self.dir)?;
            self.layers -= 1;
        }
        std::fs::remove_dir(&self.dir).map_err(|e| Error::io("remove", &self.dir, e))
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if self.layers > 0
            && let Err(e) = self.undo()
        {
            tracing::error!(error = %e, dir = %self.dir.display(), "leaking temporary mount");
        }
    }
}

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo (whose paths
/// escape spaces and other bytes as `\NNN` octal).
pub fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(out)
}

fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Undoes temporary mounts a crashed process left under `dir` (detaching each), then
/// removes the emptied mount-point directories. Never deletes anything still mounted.
pub fn reclaim_temp_mounts(dir: &Path) -> Result<()> {
    for point in mount_points_under(dir)? {
        if point != dir {
            tracing::warn!(mount = %point.display(), "detaching leaked temporary mount");
            rustix::mount::unmount(&point, UnmountFlags::DETACH).map_err(|e| Error::Unmount {
                target: point.clone(),
                source: e.into(),
            })?;
        }
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
    Ok(())
}

/// Runs `f` with `mounts` mounted on a temporary directory under `parent`.
pub fn with_temp_mount<T>(
    mounts: &[Mount],
    parent: &Path,
    f: impl FnOnce(&Path) -> T,
) -> Result<T> {
    let tm = TempMount::new(mounts, parent)?;
    let out = f(tm.path());
    tm.release()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }

    fn running_as_root(test: &str) -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{test} needs root under CI"
        );
        eprintln!("SKIP {test}: needs root");
        false
    }

    #[test]
    fn legacy_overlay_mount_compacts_long_lowerdirs() {
        if !running_as_root("legacy_overlay_mount_compacts_long_lowerdirs") {
            return;
        }
        let base = std::env::temp_dir().join(format!(
            "mountutil-legacy-{}-with-a-long-name-to-overflow-the-page",
            std::process::id()
        ));
        let layers = base.join("snapshots");
        let mut lowers = Vec::new();
        for i in 0..150 {
            let fs = layers.join(i.to_string()).join("fs");
            std::fs::create_dir_all(&fs).unwrap();
            std::fs::write(fs.join(format!("f{i}")), i.to_string()).unwrap();
            lowers.push(fs.to_string_lossy().into_owned());
        }
        let target = base.join("mnt");
        std::fs::create_dir_all(&target).unwrap();
        let m = Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}", lowers.join(":"))],
        };
        assert!(m.options[0].len() > page_size());
        let cwd = std::env::current_dir().unwrap();
        mount_overlay_legacy(&m, &target).unwrap();
        assert_eq!(
            std::env::current_dir().unwrap(),
            cwd,
            "working directory moved"
        );
        let read = (0..150).all(|i| {
            std::fs::read_to_string(target.join(format!("f{i}"))).ok() == Some(i.to_string())
        });
        unmount(&target).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
        assert!(read, "every lower layer's file is visible");
    }

    /// The mount options and optional (propagation) fields of the mount on `point`.
    fn mountinfo_of(point: &Path) -> (String, String) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .rfind(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(point))
            .expect("mounted");
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-").unwrap();
        (f[5].to_string(), f[6..sep].join(" "))
    }

    #[test]
    fn legacy_mounts_set_the_flags_their_options_ask_for() {
        if !running_as_root("legacy_mounts_set_the_flags_their_options_ask_for") {
            return;
        }
        let base = std::env::temp_dir().join(format!("mountutil-flags-{}", std::process::id()));
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        let mount = |fstype: &str, source: &Path, options: &[&str]| Mount {
            fstype: fstype.into(),
            source: source.to_string_lossy().into_owned(),
            options: options.iter().map(|o| o.to_string()).collect(),
        };

        // ro on a bind: bound, then remounted read-only; propagation in a call of its own.
        mount_all(&[mount("bind", &src, &["ro", "rbind", "rprivate"])], &dst).unwrap();
        let (opts, optional) = mountinfo_of(&dst);
        assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
        assert!(!optional.contains("shared:"), "private: {optional}");
        let write = std::fs::write(dst.join("f"), "x").unwrap_err();
        assert_eq!(write.raw_os_error(), Some(Errno::ROFS.raw_os_error()));
        unmount(&dst).unwrap();

        // Flags and data of a new mount.
        mount_all(
            &[mount(
                "tmpfs",
                Path::new("tmpfs"),
                &["nosuid", "nodev", "size=1m"],
            )],
            &dst,
        )
        .unwrap();
        let (opts, _) = mountinfo_of(&dst);
        for want in ["rw", "nosuid", "nodev"] {
            assert!(opts.split(',').any(|o| o == want), "{want} in {opts}");
        }
        unmount(&dst).unwrap();

        // A `bind` mount without a bind option has no type: the kernel's EINVAL, as before.
        let err = mount_all(&[mount("bind", &src, &["ro"])], &dst).unwrap_err();
        assert!(matches!(err, Error::Mount { .. }), "{err:?}");
        assert_eq!(err.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
        // Unmounting what is not mounted is the kernel's EINVAL, as an Unmount error.
        let err = unmount(&dst).unwrap_err();
        assert!(matches!(err, Error::Unmount { .. }), "{err:?}");
        assert_eq!(err.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
