//! Mount descriptions and their option strings, turned into what the syscalls take: mount(2)
//! flags, propagation flags and the data string for the classic API, per-mount attributes
//! for the new mount API, and the `lowerdir=` compaction that makes long overlay stacks fit
//! in one page.
//!
//! Pure functions only; the syscalls are in `mount.rs`, which re-exports [`Mount`].

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{MountAttrFlags, MountFlags, MountPropagationFlags};

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

/// `MS_REC` as a mount(2) flag: rustix files it under the propagation flags only, but
/// `rbind` needs it next to `MS_BIND`.
pub(crate) const MS_REC: MountFlags =
    MountFlags::from_bits_retain(MountPropagationFlags::REC.bits());

/// Flag options of mount(2): (name, set?, flag). `remount` is not here: rustix adds
/// `MS_REMOUNT` itself in `mount_remount`, so it is parsed into [`ParsedOptions::remount`].
const FLAG_OPTIONS: &[(&str, bool, MountFlags)] = &[
    ("async", false, MountFlags::SYNCHRONOUS),
    ("atime", false, MountFlags::NOATIME),
    ("bind", true, MountFlags::BIND),
    ("defaults", false, MountFlags::empty()),
    ("dev", false, MountFlags::NODEV),
    ("diratime", false, MountFlags::NODIRATIME),
    ("dirsync", true, MountFlags::DIRSYNC),
    ("exec", false, MountFlags::NOEXEC),
    ("mand", true, MountFlags::PERMIT_MANDATORY_FILE_LOCKING),
    ("noatime", true, MountFlags::NOATIME),
    ("nodev", true, MountFlags::NODEV),
    ("nodiratime", true, MountFlags::NODIRATIME),
    ("noexec", true, MountFlags::NOEXEC),
    ("nomand", false, MountFlags::PERMIT_MANDATORY_FILE_LOCKING),
    ("norelatime", false, MountFlags::RELATIME),
    ("nostrictatime", false, MountFlags::STRICTATIME),
    ("nosuid", true, MountFlags::NOSUID),
    ("rbind", true, MountFlags::BIND.union(MS_REC)),
    ("relatime", true, MountFlags::RELATIME),
    ("ro", true, MountFlags::RDONLY),
    ("rw", false, MountFlags::RDONLY),
    ("strictatime", true, MountFlags::STRICTATIME),
    ("suid", false, MountFlags::NOSUID),
    ("sync", true, MountFlags::SYNCHRONOUS),
];

const PROPAGATION_OPTIONS: &[(&str, MountPropagationFlags)] = &[
    ("private", MountPropagationFlags::PRIVATE),
    (
        "rprivate",
        MountPropagationFlags::PRIVATE.union(MountPropagationFlags::REC),
    ),
    ("shared", MountPropagationFlags::SHARED),
    (
        "rshared",
        MountPropagationFlags::SHARED.union(MountPropagationFlags::REC),
    ),
    ("slave", MountPropagationFlags::DOWNSTREAM),
    (
        "rslave",
        MountPropagationFlags::DOWNSTREAM.union(MountPropagationFlags::REC),
    ),
    ("unbindable", MountPropagationFlags::UNBINDABLE),
    (
        "runbindable",
        MountPropagationFlags::UNBINDABLE.union(MountPropagationFlags::REC),
    ),
];

/// Options split into mount(2) flags, propagation flags and the data string's parts.
#[derive(Debug, PartialEq)]
pub(crate) struct ParsedOptions {
    /// mount(2) flags, without `MS_REMOUNT`.
    pub(crate) flags: MountFlags,
    /// The `remount` option (`MS_REMOUNT`) was given.
    pub(crate) remount: bool,
    /// Propagation flags, applied with a call of their own.
    pub(crate) propagation: MountPropagationFlags,
    /// Everything else, for the data string.
    pub(crate) data: Vec<String>,
}

pub(crate) fn parse_options(options: &[String]) -> ParsedOptions {
    let mut parsed = ParsedOptions {
        flags: MountFlags::empty(),
        remount: false,
        propagation: MountPropagationFlags::empty(),
        data: Vec::new(),
    };
    for o in options {
        if o == "remount" {
            parsed.remount = true;
        } else if let Some((_, set, flag)) = FLAG_OPTIONS.iter().find(|(n, _, _)| n == o) {
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

/// Per-mount attributes of the new mount API that correspond to classic flag options.
pub(crate) fn mount_attr(option: &str) -> Option<MountAttrFlags> {
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

/// The data string of mount(2), `None` when empty. A NUL in it is `EINVAL`, as for a NUL in
/// a path passed to rustix.
pub(crate) fn data_cstring(data: &[String]) -> rustix::io::Result<Option<CString>> {
    let data = data.join(",");
    if data.is_empty() {
        return Ok(None);
    }
    CString::new(data).map(Some).map_err(|_| Errno::INVAL)
}

pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// Rewrites `lowerdir=` relative to the lowers' common parent directory when the data string
/// would not fit in a page, as containerd does. Returns the options and that directory.
pub(crate) fn compact_lowerdirs(options: &[String]) -> (Vec<String>, Option<PathBuf>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(opts: &[&str]) -> Vec<String> {
        opts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_and_data() {
        let p = parse_options(&strings(&[
            "ro",
            "rbind",
            "nosuid",
            "index=off",
            "rprivate",
        ]));
        assert_eq!(
            p.flags,
            MountFlags::RDONLY | MountFlags::BIND | MS_REC | MountFlags::NOSUID
        );
        assert!(!p.remount);
        assert_eq!(
            p.propagation,
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC
        );
        assert_eq!(p.data, vec!["index=off".to_string()]);
    }

    #[test]
    fn flag_bits_are_the_kernels() {
        // The values of <linux/mount.h>, so the syscalls get the same bits as before.
        assert_eq!(MountFlags::RDONLY.bits(), 1);
        assert_eq!(MountFlags::BIND.bits(), 4096);
        assert_eq!(MS_REC.bits(), 16384);
        assert_eq!(
            parse_options(&strings(&["rbind"])).flags.bits(),
            4096 | 16384
        );
        assert_eq!(parse_options(&strings(&["bind"])).flags.bits(), 4096);
        assert_eq!(MountPropagationFlags::DOWNSTREAM.bits(), 1 << 19);
    }

    #[test]
    fn remount_is_parsed_apart() {
        let p = parse_options(&strings(&["remount", "ro", "bind"]));
        assert!(p.remount);
        assert_eq!(p.flags, MountFlags::RDONLY | MountFlags::BIND);
        assert!(p.data.is_empty());
    }

    #[test]
    fn rw_clears_ro() {
        let p = parse_options(&strings(&["ro", "rw"]));
        assert!(!p.flags.contains(MountFlags::RDONLY));
    }

    #[test]
    fn new_api_attributes() {
        assert_eq!(mount_attr("ro"), Some(MountAttrFlags::MOUNT_ATTR_RDONLY));
        assert_eq!(mount_attr("defaults"), Some(MountAttrFlags::empty()));
        assert_eq!(mount_attr("index=off"), None);
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
}
