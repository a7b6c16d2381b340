//! containerd's configuration for a test: this test's paths, then the documented block for
//! the release read verbatim from docs/containerd.md (socket, root and platform replaced),
//! then what the CRI plugin needs on this machine.

use std::path::{Path, PathBuf};

use super::Containerd;

/// A TOML string holding `path`.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.to_str().expect("UTF-8 path").to_owned()).to_string()
}

/// What a containerd's CRI plugin needs on this machine beyond the documented configuration.
pub struct CriSetup {
    /// `config_path`: a `hosts.toml` per registry host (plain HTTP on loopback).
    pub hosts_dir: PathBuf,
    /// The pod sandbox ("pause") image.
    pub sandbox_image: String,
}

/// The documented configuration for `release` (docs/containerd.md): the TOML block after
/// the line `<!-- e2e: containerd <release> -->`, with its socket, root and platform
/// replaced by this test's.
fn readme_config(release: Containerd, strata: &Path, strata_root: &Path) -> String {
    const DOC: &str = include_str!("../../../../docs/containerd.md");
    let marker = format!("<!-- e2e: containerd {} -->", release.readme_name());
    let after = DOC
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/containerd.md has no {marker}"))
        .1;
    let block = after
        .trim_start()
        .strip_prefix("```toml\n")
        .and_then(|b| b.split_once("```"))
        .unwrap_or_else(|| panic!("no TOML block after {marker}"))
        .0;
    block
        .replace("\"/run/strata/strata.sock\"", &toml_path(strata))
        .replace("\"/var/lib/strata\"", &toml_path(strata_root))
        .replace(
            "\"linux/amd64\"",
            &format!("\"linux/{}\"", imagestore::oci::architecture()),
        )
}

/// The configuration of a containerd under `dir` using the Strata daemon serving `strata`
/// (its socket) for `strata_root`: this test's paths, then the documented configuration for
/// the release as it is, then (with `cri`) what the CRI plugin needs on this machine.
pub(super) fn containerd_config(
    release: Containerd,
    dir: &Path,
    socket: &Path,
    strata: &Path,
    strata_root: &Path,
    cri: Option<&CriSetup>,
) -> String {
    let v3 = release == Containerd::V2_1;
    let q = |name: &str| {
        if v3 {
            format!("'{name}'")
        } else {
            format!("\"{name}\"")
        }
    };
    let mut disabled = vec![
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.blockfile",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.erofs",
        "io.containerd.snapshotter.v1.zfs",
    ];
    if cri.is_none() {
        // Slow to start, and unused.
        disabled.push("io.containerd.grpc.v1.cri");
    }
    let disabled: Vec<String> = disabled.iter().map(|p| format!("\"{p}\"")).collect();
    let readme = readme_config(release, strata, strata_root);
    let (header, readme) = readme
        .split_once('\n')
        .expect("the documented configuration starts with its version");
    let mut config = format!(
        r#"{header}
root = {root}
state = {state}
disabled_plugins = [{disabled}]

[grpc]
  address = {socket}

# No collection at startup, so none runs before the test's first removal (a late startup
# collection could take `ctr snapshots view`'s snapshot before the test labels it a GC root).
[plugins.{gc}]
  startup_delay = "0s"

[plugins.{opt}]
  path = {opt_path}
{readme}"#,
        root = toml_path(&dir.join("root")),
        state = toml_path(&dir.join("state")),
        disabled = disabled.join(", "),
        socket = toml_path(socket),
        gc = q("io.containerd.gc.v1.scheduler"),
        opt = q("io.containerd.internal.v1.opt"),
        opt_path = toml_path(&dir.join("opt")),
    );
    if let Some(cri) = cri {
        // runc here cannot lower oom_score_adj; pulls find the test registries through
        // hosts.toml files; the sandbox image comes from a test registry too.
        let (hosts, sandbox) = (toml_path(&cri.hosts_dir), &cri.sandbox_image);
        config += &if v3 {
            format!(
                r#"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = {hosts}
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{sandbox}"
"#
            )
        } else {
            format!(
                r#"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{sandbox}"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = {hosts}
"#
            )
        };
    }
    config
}
