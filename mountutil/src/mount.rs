//! Mounting the mount descriptions a snapshotter returns, the way containerd's mount code
//! does, plus temporary mounts that are always undone.
//!
//! Overlay mounts go through the new mount API (`fsopen("overlay")` with one `lowerdir+` per
//! layer), which has no one-page limit on the option string. Kernels without `lowerdir+` get
//! the classic mount(2) data string, compacted to paths relative to the layers' common parent
//! and mounted from a thread with its own working directory, so the daemon's never changes.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

use crate::{Error, Result};

/// Most lower layers one overlay mount can stack (the kernel's `OVL_MAX_STACK`).
pub const OVERLAY_MAX_LOWERS: usize = 500;

/// One mount, as containerd's `containerd.types.Mount` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    /// Filesystem type: `bind`, `overlay`, ...
    pub fstype: String,
    /// Source path, or `overlay`.
    pub source: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

impl Mount {
    /// A recursive bind mount of `source`, read-only when `readonly`.
    pub fn bind(source: &Path, readonly: bool) -> Self {
        Mount {
            fstype: "bind".into(),
            source: source.to_string_lossy().into_owned(),
            options: vec![if readonly { "ro" } else { "rw" }.into(), "rbind".into()],
        }
    }

    /// The lower directories of an overlay mount, highest priority first.
    pub fn lowerdirs(&self) -> Vec<&str> {
        self.option_value("lowerdir")
            .map(|v| v.split(':').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// The value of option `key=value`, if present (the last one wins, as in the kernel).
    pub fn option_value(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find_map(|o| o.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// Whether the bare option `flag` is present.
    pub fn has_option(&self, flag: &str) -> bool {
        self.options.iter().any(|o| o == flag)
    }
}

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

/// Flag options of mount(2): (name, set?, flag).
const FLAG_OPTIONS: &[(&str, bool, MsFlags)] = &[
    ("async", false, MsFlags::MS_SYNCHRONOUS),
    ("atime", false, MsFlags::MS_NOATIME),
    ("bind", true, MsFlags::MS_BIND),
    ("defaults", false, MsFlags::empty()),
    ("dev", false, MsFlags::MS_NODEV),
    ("diratime", false, MsFlags::MS_NODIRATIME),
    ("dirsync", true, MsFlags::MS_DIRSYNC),
    ("exec", false, MsFlags::MS_NOEXEC),
    ("mand", true, MsFlags::MS_MANDLOCK),
    ("noatime", true, MsFlags::MS_NOATIME),
    ("nodev", true, MsFlags::MS_NODEV),
    ("nodiratime", true, MsFlags::MS_NODIRATIME),
    ("noexec", true, MsFlags::MS_NOEXEC),
    ("nomand", false, MsFlags::MS_MANDLOCK),
    ("norelatime", false, MsFlags::MS_RELATIME),
    ("nostrictatime", false, MsFlags::MS_STRICTATIME),
    ("nosuid", true, MsFlags::MS_NOSUID),
    ("rbind", true, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    ("relatime", true, MsFlags::MS_RELATIME),
    ("remount", true, MsFlags::MS_REMOUNT),
    ("ro", true, MsFlags::MS_RDONLY),
    ("rw", false, MsFlags::MS_RDONLY),
    ("strictatime", true, MsFlags::MS_STRICTATIME),
    ("suid", false, MsFlags::MS_NOSUID),
    ("sync", true, MsFlags::MS_SYNCHRONOUS),
];

const PROPAGATION_OPTIONS: &[(&str, MsFlags)] = &[
    ("private", MsFlags::MS_PRIVATE),
    ("rprivate", MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
    ("shared", MsFlags::MS_SHARED),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", MsFlags::MS_SLAVE),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    ("runbindable", MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
];

/// Options split into mount(2) flags, propagation flags and the data string's parts.
#[derive(Debug, PartialEq)]
struct ParsedOptions {
    flags: MsFlags,
    propagation: MsFlags,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> ParsedOptions {
    let mut parsed = ParsedOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for o in options {
        if let Some((_, set, flag)) = FLAG_OPTIONS.iter().find(|(n, _, _)| n == o) {
            if *set {
                parsed.flags |= *flag;
            } else {
                parsed.flags &= !*flag;
            }
        } else if let Some((_, flag)) = PROPAGATION_OPTIONS.iter().find(|(n, _)| n == o) {
            parsed.propagation |= *flag;
        } else {
            parsed.data.push(o.clone());
        }
    }
    parsed
}

fn mount_err(fstype: &str, target: &Path, e: impl Into<std::io::Error>) -> Error {
    Error::Mount {
        fstype: fstype.to_string(),
        target: target.to_path_buf(),
        source: e.into(),
    }
}

fn mount_legacy(m: &Mount, target: &Path) -> Result<()> {
    let parsed = parse_options(&m.options);
    let data = parsed.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let fstype = (m.fstype != "bind").then_some(m.fstype.as_str());
    let err = |e: nix::Error| mount_err(&m.fstype, target, e);
    let bind = parsed.flags.contains(MsFlags::MS_BIND);
    // A bind mount ignores MS_RDONLY on creation: bind first, then remount read-only.
    let first = if bind {
        parsed.flags & !MsFlags::MS_RDONLY
    } else {
        parsed.flags
    };
    nix::mount::mount(Some(m.source.as_str()), target, fstype, first, data).map_err(err)?;
    if bind && parsed.flags.contains(MsFlags::MS_RDONLY) {
        let remount = parsed.flags | MsFlags::MS_REMOUNT;
        if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
        {
            let _ = unmount(target);
            return Err(err(e));
        }
    }
    if !parsed.propagation.is_empty() {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            parsed.propagation,
            None::<&str>,
        )
        .map_err(err)?;
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

/// Per-mount attributes of the new mount API that correspond to classic flag options.
fn mount_attr(option: &str) -> Option<MountAttrFlags> {
    Some(match option {
        "ro" => MountAttrFlags::MOUNT_ATTR_RDONLY,
        "nosuid" => MountAttrFlags::MOUNT_ATTR_NOSUID,
        "nodev" => MountAttrFlags::MOUNT_ATTR_NODEV,
        "noexec" => MountAttrFlags::MOUNT_ATTR_NOEXEC,
        "noatime" => MountAttrFlags::MOUNT_ATTR_NOATIME,
        "relatime" => MountAttrFlags::MOUNT_ATTR_RELATIME,
        "strictatime" => MountAttrFlags::MOUNT_ATTR_STRICTATIME,
        "nodiratime" => MountAttrFlags::MOUNT_ATTR_NODIRATIME,
        "rw" | "defaults" => MountAttrFlags::empty(),
        _ => return None,
    })
}

fn page_size() -> usize {
    rustix::param::page_size()
}

/// Rewrites `lowerdir=` relative to the lowers' common parent directory when the data string
/// would not fit in a page, as containerd does. Returns the options and that directory.
fn compact_lowerdirs(options: &[String]) -> (Vec<String>, Option<PathBuf>) {
    let total: usize = options.iter().map(|o| o.len() + 1).sum();
    let Some(idx) = options.iter().position(|o| o.starts_with("lowerdir=")) else {
        return (options.to_vec(), None);
    };
    if total < page_size() - 512 {
        return (options.to_vec(), None);
    }
    let lowers: Vec<&str> = options[idx]["lowerdir=".len()..].split(':').collect();
    let prefix = longest_common_prefix(&lowers);
    // Like Go's path.Dir: everything before the last '/'.
    let common_str = match prefix.rfind('/') {
        Some(i) if i > 0 => &prefix[..i],
        _ => return (options.to_vec(), None),
    };
    let common = Path::new(common_str);
    let mut relative = Vec::with_capacity(lowers.len());
    for l in &lowers {
        match l.strip_prefix(common_str).and_then(|r| r.strip_prefix('/')) {
            Some(r) if !r.is_empty() => relative.push(r),
            _ => return (options.to_vec(), None),
        }
    }
    let mut out = options.to_vec();
    out[idx] = format!("lowerdir={}", relative.join(":"));
    (out, Some(common.to_path_buf()))
}

fn longest_common_prefix<'a>(strs: &[&'a str]) -> &'a str {
    let Some(first) = strs.first() else { return "" };
    let mut len = first.len();
    for s in &strs[1..] {
        len = first
            .bytes()
            .zip(s.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    while !first.is_char_boundary(len) {
        len -= 1;
    }
    &first[..len]
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
    let Some(dir) = workdir else {
        return nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            parsed.flags,
            Some(data.as_str()),
        )
        .map_err(|e| mount_err("overlay", target, e));
    };
    // Relative lowerdirs resolve against the working directory: mount from a thread that
    // unshares its filesystem context, so the process's working directory never moves.
    let target_abs = std::path::absolute(target).map_err(|e| Error::io("resolve", target, e))?;
    let flags = parsed.flags;
    let data = CString::new(data).map_err(|_| Error::InvalidMount("NUL in options".into()))?;
    std::thread::spawn(move || -> nix::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
        nix::unistd::chdir(&dir)?;
        nix::mount::mount(
            Some("overlay"),
            &target_abs,
            Some("overlay"),
            flags,
            Some(data.as_c_str()),
        )
    })
    .join()
    .map_err(|_| Error::InvalidMount("overlay mount thread panicked".into()))?
    .map_err(|e| mount_err("overlay", target, e))
}

/// Unmounts `target`, retrying while it is busy, and detaching it as a last resort.
pub fn unmount(target: &Path) -> Result<()> {
    for _ in 0..50 {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::Error::EBUSY) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                return Err(Error::Unmount {
                    target: target.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
    tracing::warn!(target = %target.display(), "mount still busy, detaching");
    nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|e| Error::Unmount {
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
            nix::mount::umount2(&point, MntFlags::MNT_DETACH).map_err(|e| Error::Unmount {
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
    fn parses_flags_and_data() {
        let opts: Vec<String> = ["ro", "rbind", "nosuid", "index=off", "rprivate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = parse_options(&opts);
        assert_eq!(
            p.flags,
            MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID
        );
        assert_eq!(p.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(p.data, vec!["index=off".to_string()]);
    }

    #[test]
    fn rw_clears_ro() {
        let p = parse_options(&["ro".to_string(), "rw".to_string()]);
        assert!(!p.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn compacts_long_lowerdirs_to_common_parent() {
        let lowers: Vec<String> = (1..=200)
            .rev()
            .map(|i| format!("/var/lib/strata/snapshots/{i}/fs"))
            .collect();
        let opts = vec![
            "workdir=/var/lib/strata/snapshots/201/work".to_string(),
            format!("lowerdir={}", lowers.join(":")),
        ];
        let (out, dir) = compact_lowerdirs(&opts);
        assert_eq!(dir.as_deref(), Some(Path::new("/var/lib/strata/snapshots")));
        assert!(out[1].starts_with("lowerdir=200/fs:199/fs:"), "{}", out[1]);
        assert!(out[1].ends_with(":1/fs"));
        assert_eq!(out[0], opts[0]);
    }

    #[test]
    fn short_options_are_not_compacted() {
        let opts = vec!["lowerdir=/a/1/fs:/a/2/fs".to_string()];
        assert_eq!(compact_lowerdirs(&opts), (opts.clone(), None));
    }

    #[test]
    fn common_prefix_stops_at_difference() {
        assert_eq!(longest_common_prefix(&["/x/10/fs", "/x/1/fs"]), "/x/1");
        assert_eq!(longest_common_prefix(&["abc"]), "abc");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn lowerdirs_and_option_values() {
        let m = Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "upperdir=/u".into(),
                "lowerdir=/a:/b".into(),
                "userxattr".into(),
            ],
        };
        assert_eq!(m.lowerdirs(), vec!["/a", "/b"]);
        assert_eq!(m.option_value("upperdir"), Some("/u"));
        assert!(m.has_option("userxattr"));
        assert_eq!(m.option_value("workdir"), None);
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
}
