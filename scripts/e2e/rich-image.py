#!/usr/bin/env python3
"""A test image with every kind of entry a layer can carry, and tree captures to check it.

  rich-image.py build OUT_DIR NAME [ARCH...]
      an OCI image layout in OUT_DIR: image NAME, three layers (gzip, zstd, zstd), the last
      one with /arch naming the architecture; with several ARCHs (default: this machine's),
      an index with a manifest per architecture (linux/ARCH). OUT_DIR/expected.json is the
      first architecture's flattened tree, computed here from the layer entries.
  rich-image.py capture DIR
      the tree under DIR as the same JSON, on stdout

The layers hold directories, files and symlinks with assorted modes (setuid, sticky) and
owners, user.* xattrs on files and directories, hard links, a character device, then a
whiteout of a file and of a directory, an opaque directory, a file turned into a directory,
changed modes, owners and xattrs, a hard link whose header differs from its target's (the
shared inode takes the link header's owner, mode, xattrs and times, as containerd's applier
does), and a hard link and files in directories it does not declare (a setgid one among
them) in the last layer. The flattened tree is
computed from the tar entries with OCI's rules (a later entry replaces an earlier one,
`.wh.NAME` removes NAME, `.wh..wh..opq` empties its directory of what lower layers had), not
by any applier. A tree maps each path ("/" excluded) to its kind, mode, owner, content or
link target, device number, xattrs (user.* only: what a process sees of them), and, for
files, mtime and the group of paths sharing its inode.
"""

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

MTIME = 1577836800  # 2020-01-01T00:00:00Z
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def d(name, mode=0o755, uid=0, gid=0, xattrs=None):
    return ("dir", name, mode, uid, gid, xattrs or {}, None)


def f(name, data, mode=0o644, uid=0, gid=0, xattrs=None, mtime=MTIME):
    return ("file", name, mode, uid, gid, xattrs or {}, (data, mtime))


def link(name, target, mode=0o644, uid=0, gid=0):
    # A link entry's header is applied to the inode it shares, as containerd's applier
    # does (writers put the file's own attributes there).
    return ("link", name, mode, uid, gid, {}, target)


def sym(name, target, uid=0, gid=0):
    return ("sym", name, 0o777, uid, gid, {}, target)


def chr_dev(name, major, minor, mode=0o666):
    return ("chr", name, mode, 0, 0, {}, (major, minor))


LAYERS = [
    (
        "gzip",
        [
            d("etc"),
            f("etc/hostname", b"rich\n"),
            f("etc/shadow", b"root:*:1::::::\n", mode=0o640, gid=42),
            d("usr", xattrs={"user.dir": b"usr"}),
            d("usr/bin"),
            f("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o4755),
            link("usr/bin/tool-link", "usr/bin/tool", mode=0o4755),
            sym("usr/bin/t", "tool"),
            d("srv", mode=0o2775, gid=50),
            d("home", mode=0o755),
            d("home/user", mode=0o700, uid=1000, gid=1000),
            f("home/user/notes", b"one\n", mode=0o600, uid=1000, gid=1000,
              xattrs={"user.mime_type": b"text/plain", "user.empty": b""}),
            d("tmp", mode=0o1777),
            d("dev"),
            chr_dev("dev/null", 1, 3),
            d("var"),
            d("var/cache"),
            f("var/cache/a", b"cache a\n"),
            f("var/cache/b", b"cache b\n"),
            d("var/cache/sub"),
            f("var/cache/sub/c", b"cache c\n"),
            d("var/lib"),
            f("var/lib/state", b"state\n"),
            d("var/gone"),
            f("var/gone/x", b"x\n"),
            f("big", bytes(range(256)) * 4096),
            f("turns-dir", b"a file first\n"),
        ],
    ),
    (
        "zstd",
        [
            d("etc"),
            f("etc/hostname", b"rich-2\n", mtime=MTIME + 60),
            f("etc/" + WHITEOUT + "shadow", b""),
            d("var"),
            d("var/cache", mode=0o750, uid=5, gid=6),
            f("var/cache/" + OPAQUE, b""),
            f("var/cache/fresh", b"fresh\n"),
            f("var/" + WHITEOUT + "gone", b""),
            d("home"),
            d("home/user", mode=0o700, uid=1000, gid=1000),
            f("home/user/notes", b"two\n", mode=0o640, uid=1000, gid=1000,
              xattrs={"user.mime_type": b"text/markdown"}),
            d("turns-dir"),
            f("turns-dir/inside", b"now a directory\n"),
            d("opt", mode=0o755, uid=7, gid=8, xattrs={"user.opt": b"\x00\x01binary"}),
            f("opt/data", b"data\n" * 1000),
            link("opt/data-2", "opt/data"),
            # One whose header differs: the shared inode takes its mode and owner.
            link("opt/data-3", "opt/data", mode=0o600, uid=9, gid=9),
        ],
    ),
    (
        "zstd",
        [
            # Directories declared again carry all their attributes, as a differ writes them.
            d("usr", xattrs={"user.dir": b"usr"}),
            d("usr/bin"),
            f("usr/bin/new", b"new\n", mode=0o755),
            link("usr/bin/new-link", "usr/bin/new", mode=0o755),
            d("var"),
            d("var/lib"),
            f("var/lib/" + WHITEOUT + "state", b""),
            f("var/lib/state2", b"state 2\n", uid=33, gid=33),
            # Entries in directories this layer does not declare: the lower layers' copies
            # give those their owner, mode and xattrs (srv/ is setgid).
            f("home/user/later", b"later\n", uid=1000, gid=1000),
            f("opt/more", b"more\n"),
            f("srv/file", b"in a setgid directory\n"),
            # An opaque marker in a directory this layer does not declare: applied at once
            # with the layers below, this layer must be applied again on them (nothing
            # gives the directory its lower copy's mtime afterwards).
            f("srv/" + OPAQUE, b""),
        ],
    ),
]


def tar_layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, mode, uid, gid, xattrs, extra in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, MTIME
            info.uname = info.gname = ""
            info.pax_headers = {"SCHILY.xattr." + k: v.decode("latin-1") for k, v in xattrs.items()}
            data = None
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "file":
                data, info.mtime = extra
                info.type, info.size = tarfile.REGTYPE, len(data)
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = extra
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def flatten(layers):
    """The tree the layers make, by OCI's rules."""
    tree = {}
    inode = {}  # path -> inode id
    next_inode = [0]

    def drop(paths):
        for p in list(paths):
            del tree[p]
            inode.pop(p, None)

    def remove(path):
        drop(p for p in tree if p == path or p.startswith(path + "/"))

    for _, entries in layers:
        this_layer = set()
        for kind, name, mode, uid, gid, xattrs, extra in entries:
            path = "/" + name.strip("/")
            parent, base = path.rsplit("/", 1)
            if base == OPAQUE:
                # What lower layers had in the directory goes; this layer's entries stay.
                drop(p for p in tree if p.startswith(parent + "/") and p not in this_layer)
                continue
            this_layer.add(path)
            if base.startswith(WHITEOUT):
                remove(parent + "/" + base[len(WHITEOUT):])
                continue
            if kind == "link":
                target = "/" + extra
                remove(path)
                shared = tree[target]
                shared.update(mode=mode, uid=uid, gid=gid)
                shared["xattrs"].update(xattrs)
                if shared["kind"] == "f":
                    shared["mtime"] = MTIME
                tree[path] = shared
                inode[path] = inode[target]
                continue
            old = tree.get(path)
            if kind == "dir" and old is not None and old["kind"] == "d":
                # A directory entry over a directory changes its metadata, keeps its content.
                old.update(mode=mode, uid=uid, gid=gid, xattrs=xattrs)
                continue
            remove(path)
            entry = {"kind": {"dir": "d", "file": "f", "sym": "l", "chr": "c"}[kind],
                     "mode": mode & 0o7777 if kind != "sym" else 0o777,
                     "uid": uid, "gid": gid, "xattrs": dict(xattrs)}
            if kind == "file":
                entry["data"], entry["mtime"] = extra
            elif kind == "sym":
                entry["data"] = extra.encode()
            elif kind == "chr":
                entry["rdev"] = os.makedev(*extra)
            tree[path] = entry
            next_inode[0] += 1
            inode[path] = next_inode[0]
    return tree, inode


def as_json(tree, inode):
    groups = {}
    for p, i in inode.items():
        if p in tree and tree[p]["kind"] == "f":
            groups.setdefault(i, []).append(p)
    out = {}
    for p, e in sorted(tree.items()):
        row = {"kind": e["kind"], "mode": oct(e["mode"]), "uid": e["uid"], "gid": e["gid"],
               "xattrs": {k: v.hex() for k, v in sorted(e["xattrs"].items())}}
        if "data" in e:
            row["sha256"] = hashlib.sha256(e["data"]).hexdigest()
        if "rdev" in e:
            row["rdev"] = e["rdev"]
        if e["kind"] == "f":
            row["mtime"] = e["mtime"]
            row["links"] = sorted(groups[inode[p]])
        out[p] = row
    return out


def capture(root):
    rows, by_inode = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # a whiteout readdir lists but lookup hides
            rel = "/" + os.path.relpath(path, root)
            kind = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l",
                    stat.S_IFCHR: "c"}.get(stat.S_IFMT(st.st_mode), "?")
            xattrs = {}
            if kind != "l":
                for k in os.listxattr(path, follow_symlinks=False):
                    if k.startswith("user."):
                        xattrs[k] = os.getxattr(path, k, follow_symlinks=False).hex()
            row = {"kind": kind, "mode": oct(st.st_mode & 0o7777 if kind != "l" else 0o777),
                   "uid": st.st_uid, "gid": st.st_gid, "xattrs": dict(sorted(xattrs.items()))}
            if kind == "f":
                with open(path, "rb") as fh:
                    row["sha256"] = hashlib.sha256(fh.read()).hexdigest()
                row["mtime"] = int(st.st_mtime)
                by_inode.setdefault((st.st_dev, st.st_ino), []).append(rel)
                row["_inode"] = (st.st_dev, st.st_ino)
            elif kind == "l":
                row["sha256"] = hashlib.sha256(os.readlink(path).encode()).hexdigest()
            elif kind == "c":
                row["rdev"] = st.st_rdev
            rows[rel] = row
    for row in rows.values():
        if "_inode" in row:
            row["links"] = sorted(by_inode[row.pop("_inode")])
    return dict(sorted(rows.items()))


def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(f"{layout}/blobs/sha256", exist_ok=True)
    with open(f"{layout}/blobs/sha256/{digest}", "wb") as fh:
        fh.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def manifest_for(out, arch, layers_spec):
    layers, diff_ids = [], []
    for compression, entries in layers_spec:
        raw = tar_layer(entries)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        if compression == "gzip":
            packed = gzip.compress(raw, mtime=0)
            media = "application/vnd.oci.image.layer.v1.tar+gzip"
        else:
            packed = subprocess.run(["zstd", "-q", "-c", "-3"], input=raw, check=True,
                                    capture_output=True).stdout
            media = "application/vnd.oci.image.layer.v1.tar+zstd"
        layers.append({"mediaType": media, **blob(out, packed)})
    config = {"architecture": arch, "os": "linux", "config": {"Cmd": ["/usr/bin/tool"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **blob(out, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": layers}
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            **blob(out, json.dumps(manifest).encode()),
            "platform": {"architecture": arch, "os": "linux"}}


def layers_for(arch):
    (c3, top), lower = LAYERS[-1], LAYERS[:-1]
    return lower + [(c3, top + [f("arch", arch.encode() + b"\n")])]


def build(out, name, arches):
    manifests = [manifest_for(out, arch, layers_for(arch)) for arch in arches]
    if len(manifests) == 1:
        root = dict(manifests[0])
        del root["platform"]
    else:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": manifests}
        root = {"mediaType": "application/vnd.oci.image.index.v1+json",
                **blob(out, json.dumps(index).encode())}
    root["annotations"] = {"org.opencontainers.image.ref.name": name}
    with open(f"{out}/oci-layout", "w") as fh:
        fh.write('{"imageLayoutVersion":"1.0.0"}')
    with open(f"{out}/index.json", "w") as fh:
        json.dump({"schemaVersion": 2, "manifests": [root]}, fh)
    tree, inode = flatten(layers_for(arches[0]))
    with open(f"{out}/expected.json", "w") as fh:
        json.dump(as_json(tree, inode), fh, indent=1, sort_keys=True)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "build":
        os.makedirs(sys.argv[2], exist_ok=True)
        host = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
        build(sys.argv[2], sys.argv[3], sys.argv[4:] or [host])
    elif len(sys.argv) == 3 and sys.argv[1] == "capture":
        json.dump(capture(sys.argv[2]), sys.stdout, indent=1, sort_keys=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
