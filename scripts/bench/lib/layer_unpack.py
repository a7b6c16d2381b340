#!/usr/bin/env python3
"""Helpers for scripts/bench/layer-unpack (standard library only).

  rootfs-list OUT          choose ~300 MB / ~15k entries of /usr; write their paths (relative
                           to /, NUL-separated, parents first, sorted) for `tar --null -T OUT`
  smallfiles OUT.tar       100,000 source-like files of 0-4 KiB in ~340 directories
  bigfile OUT.tar MIB      one MIB-MiB file of real binaries/text in pieces, ~2.5x gzip ratio
  report RESULTS META_DIR  medians, table and PASS/FAIL lines from the benchmark's TSV

Everything is deterministic for a given machine (fixed seeds, sorted walks, hash sampling).
"""

import hashlib
import io
import os
import random
import stat
import statistics
import sys
import tarfile

MTIME = 1700000000  # fixed mtime for generated entries


# ---------------------------------------------------------------------------------------
# rootfs: a hash-sampled subset of this machine's /usr, keeping the tree's shape.

# (source, sampling rate). Binary-heavy trees are sampled thinly (they hold the bytes),
# small-file trees densely (they hold the entries): about 300 MB and 15k entries in all.
ROOTFS_SOURCES = [
    ("usr/bin", 0.25),
    ("usr/sbin", 1.0),
    ("usr/libexec", 0.25),
    ("usr/lib/x86_64-linux-gnu", 0.11),
    ("usr/lib/python3", 0.8),
    ("usr/share", 0.15),
    ("usr/include", 0.30),
]
MAX_FILE = 32 << 20  # leave out the odd huge library so one file doesn't dominate


def sampled(path, rate):
    h = int.from_bytes(hashlib.md5(path.encode("utf-8", "surrogateescape")).digest()[:4], "big")
    return h < rate * 2**32


def rootfs_list(out):
    chosen = set()
    nbytes = 0
    seen_inodes = set()
    for src, rate in ROOTFS_SOURCES:
        top = "/" + src
        if not os.path.isdir(top):
            continue
        for root, dirs, files in os.walk(top):
            dirs.sort()
            names = sorted(files)
            # Symlinks to directories show up in `dirs`; keep them as symlinks, don't descend.
            names += [d for d in dirs if os.path.islink(os.path.join(root, d))]
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
            for name in names:
                path = os.path.join(root, name)
                st = os.lstat(path)
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_size > MAX_FILE:
                    continue
                # Every name of a multiply-linked file in /usr/bin (bzip2/bzcat/bunzip2,
                # perl/perl5.x, ...), so the layer has a few hard links.
                multi = stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and src == "usr/bin"
                if not (multi or sampled(path, rate)):
                    continue
                chosen.add(path[1:])
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen_inodes:
                    seen_inodes.add((st.st_dev, st.st_ino))
                    nbytes += st.st_size
    # Every ancestor directory, so the tree keeps its structure (and their modes/owners).
    for p in list(chosen):
        parts = p.split("/")
        for i in range(1, len(parts)):
            chosen.add("/".join(parts[:i]))
    ordered = sorted(chosen, key=lambda p: p.split("/"))  # parents first, by name per dir
    with open(out, "wb") as f:
        for p in ordered:
            f.write(os.fsencode(p) + b"\0")
    print(f"  rootfs: {len(ordered)} entries, {nbytes / 1e6:.0f} MB of file data "
          f"from {', '.join('/' + s for s, _ in ROOTFS_SOURCES)}")


# ---------------------------------------------------------------------------------------
# Corpus of real bytes from this machine, for smallfiles (text) and bigfile (mixed).

def corpus(sources, limit, text_only=False):
    """Up to `limit` bytes from the sorted regular files under `sources` (equal shares)."""
    share = limit // len(sources)
    parts = []
    for src in sources:
        got = 0
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as f:
                        data = f.read(share - got)
                except OSError:
                    continue
                if text_only and b"\0" in data[:4096]:
                    continue
                parts.append(data)
                got += len(data)
                if got >= share:
                    break
            if got >= share:
                break
    return b"".join(parts)


def tarinfo(name, kind, size=0, mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = mode
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""  # like `tar --numeric-owner`
    return ti


def smallfiles(out, count=100_000):
    rng = random.Random(20240601)
    text = corpus(["/usr/include", "/usr/lib/python3", "/usr/share/perl"], 48 << 20,
                  text_only=True)
    exts = [".c", ".h", ".py", ".go", ".rs", ".js", ".md", ".txt"]
    # 20 packages x 16 modules = 320 leaf directories (+ 21 above them).
    leaves = [f"src/pkg{p:02d}/mod{m:02d}" for p in range(20) for m in range(16)]
    files = []
    for i in range(count):
        leaf = leaves[rng.randrange(len(leaves))]
        name = f"{leaf}/file{i:06d}{exts[rng.randrange(len(exts))]}"
        size = 0 if rng.random() < 0.02 else rng.randint(1, 4096)
        files.append((name, size))
    files.sort()
    nbytes = 0
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        dirs = sorted({"src"} | {l.rsplit("/", 1)[0] for l in leaves} | set(leaves))
        entries = [(d, None) for d in dirs] + files
        entries.sort(key=lambda e: e[0].split("/"))
        for name, size in entries:
            if size is None:
                tar.addfile(tarinfo(name, tarfile.DIRTYPE, mode=0o755))
                continue
            # Start at a line boundary so each file reads like a piece of source.
            off = rng.randrange(len(text) - 8192)
            nl = text.find(b"\n", off, off + 4096)
            off = nl + 1 if nl >= 0 else off
            data = text[off:off + size]
            tar.addfile(tarinfo(name, tarfile.REGTYPE, len(data)), io.BytesIO(data))
            nbytes += len(data)
    print(f"  smallfiles: {count} files ({nbytes / 1e6:.0f} MB) in {len(dirs)} directories")


class MixedStream(io.RawIOBase):
    """`size` bytes of pieces (4-256 KiB) cut at random offsets from a 64 MiB pool of real
    binaries, libraries, docs and headers; 5% of pieces are random bytes (like embedded
    compressed assets). The pool is far larger than gzip's 32 KiB and zstd -3's 2 MiB
    windows, so the repetition doesn't make it unrealistically compressible: ~2.5x gzip."""

    def __init__(self, size, seed=7):
        self.left = size
        self.rng = random.Random(seed)
        self.pool = corpus(["/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/share/doc",
                            "/usr/include", "/usr/share/perl"], 64 << 20)
        self.buf = b""

    def readable(self):
        return True

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.left
        n = min(n, self.left)
        pieces, have = [self.buf], len(self.buf)
        while have < n:
            ln = self.rng.randint(4 << 10, 256 << 10)
            if self.rng.random() < 0.05:
                pieces.append(self.rng.randbytes(ln))
            else:
                off = self.rng.randrange(len(self.pool) - ln)
                pieces.append(self.pool[off:off + ln])
            have += ln
        data = b"".join(pieces)
        out, self.buf = data[:n], data[n:]
        self.left -= n
        return out


def bigfile(out, mib):
    size = int(mib) << 20
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT, copybufsize=4 << 20) as tar:
        tar.addfile(tarinfo("opt", tarfile.DIRTYPE, mode=0o755))
        tar.addfile(tarinfo("opt/data", tarfile.DIRTYPE, mode=0o755))
        tar.addfile(tarinfo("opt/data/blob.bin", tarfile.REGTYPE, size), MixedStream(size))
    print(f"  bigfile: opt/data/blob.bin, {size} bytes")


# ---------------------------------------------------------------------------------------
# Report.

CONTENDERS = ["strata", "tar", "decomp"]
# Each stage of an apply alone (scripts/bench/layer-unpack runs them): Strata's decompression
# to /dev/null, OpenSSL's SHA-256 of the blob and of the tar, and GNU tar extracting the
# uncompressed tar into a fresh directory (writing the tree, recorded under gzip only).
STAGES = ["inflate", "digest_blob", "digest_tar", "write"]
LAYERS = ["rootfs", "smallfiles", "bigfile"]
COMPS = ["gzip", "zstd"]


def row(cells, widths):
    """One table line: the first two columns (layer, compression) left-aligned, the rest
    right-aligned."""
    return "  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                     for i, (c, w) in enumerate(zip(cells, widths)))


def report(results, meta_dir):
    runs = {}  # (layer, comp, contender) -> [(secs, rss_kib)]
    failures = {}
    with open(results) as f:
        for line in f:
            layer, comp, who, _run, secs, rss, rc = line.split()[:7]
            key = (layer, comp, who)
            if rc == "0":
                runs.setdefault(key, []).append((float(secs), int(rss)))
            else:
                failures[key] = failures.get(key, 0) + 1

    def meta(layer):
        m = {}
        with open(os.path.join(meta_dir, f"{layer}.meta")) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                m[k] = v
        return m

    def med(key):
        r = runs.get(key)
        return statistics.median(s for s, _ in r) if r else None

    def peak(key):
        r = runs.get(key)
        return max(k for _, k in r) / 1024 if r else None

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    rows = []
    header = ("layer", "comp", "MB", "strata s", "MB/s", "tar s", "MB/s", "decomp s", "MB/s",
              "tar/strata", "decomp/strata", "strata RSS", "tar RSS")
    widths = [10, 5, 6, 9, 6, 7, 6, 9, 6, 11, 14, 11, 9]
    line = row(header, widths)
    print(line)
    print("-" * len(line))
    ratios = {}
    for layer in LAYERS:
        if not os.path.exists(os.path.join(meta_dir, f"{layer}.meta")):
            continue
        mb = int(meta(layer)["tar_bytes"]) / 1e6
        for comp in COMPS:
            keys = [(layer, comp, c) for c in CONTENDERS]
            if not any(k in runs or k in failures for k in keys):
                continue
            s, t, d = (med(k) for k in keys)
            speed = lambda x: None if x is None else mb / x
            tr = t / s if s and t else None
            dr = d / s if s and d else None
            ratios[(layer, comp)] = (tr, dr, peak(keys[0]))
            cells = [layer, comp, fmt(mb, ".0f"), fmt(s, ".2f"), fmt(speed(s), ".0f"),
                     fmt(t, ".2f"), fmt(speed(t), ".0f"), fmt(d, ".2f"), fmt(speed(d), ".0f"),
                     fmt(tr, ".2f") + "x" if tr else "-", fmt(dr, ".2f") + "x" if dr else "-",
                     fmt(peak(keys[0]), ".1f") + " MiB" if peak(keys[0]) else "-",
                     fmt(peak(keys[1]), ".1f") + " MiB" if peak(keys[1]) else "-"]
            print(row(cells, widths))
            for k in keys:
                if k in failures:
                    print(f"  !! {k[2]} failed in {failures[k]} run(s) of {layer}/{comp}")
    n = {len(v) for v in runs.values()}
    print(f"(medians of {'/'.join(map(str, sorted(n)))} runs; MB = 10^6 bytes of uncompressed "
          "tar; ratios > 1 mean Strata is faster; RSS = peak over runs)")

    floors = floor_table(runs, ratios, med)
    api = api_table(runs, med)

    print("\nTargets:")
    passed = failed = 0

    def verdict(ok, shown, layer, comp, what):
        nonlocal passed, failed
        passed += ok
        failed += not ok
        print(f"  [{'PASS' if ok else 'FAIL'}] {layer:<10} {comp:<4}  {what:<34} got {shown}")

    for (layer, comp), (tar_ratio, _, rss) in ratios.items():
        verdict(tar_ratio is not None and tar_ratio >= 1.3,
                f"{tar_ratio:.2f}x" if tar_ratio else "no result", layer, comp,
                "Strata >= 1.3x GNU tar")
        if layer == "bigfile":
            verdict(rss is not None and rss < 64, f"{rss:.1f} MiB" if rss else "no result",
                    layer, comp, "peak RSS < 64 MiB")
    for (layer, comp), ratio in api.items():
        verdict(ratio is not None and ratio >= 3, f"{ratio:.2f}x" if ratio else "no result",
                layer, comp, "Strata >= 3x containerd's applier")
    if ("bigfile", "zstd") in floors:
        eff = floors[("bigfile", "zstd")]
        verdict(eff is not None and eff >= 1 / 1.3, f"{eff:.2f}" if eff else "no result",
                "bigfile", "zstd", "within 1.3x of the floor (>= 0.77)")
    print(f"targets: {passed} passed, {failed} failed")


def api_table(runs, med):
    """Prints the Diff-service contenders (containerd's applier and Strata's daemon through
    the same client); returns containerd's time / Strata's per layer and compression."""
    keys = sorted({(l, c) for (l, c, w) in runs if w in ("containerd", "strata-api")},
                  key=lambda k: (LAYERS.index(k[0]), COMPS.index(k[1])))
    if not keys:
        return {}
    print("\nThrough the Diff service (one Diff.Apply from the daemon's content store onto a new "
          "native snapshot, the same gRPC client):")
    header = ("layer", "comp", "containerd s", "strata s", "containerd/strata")
    widths = [10, 5, 12, 8, 17]
    print(row(header, widths))
    out = {}
    for layer, comp in keys:
        c, s = med((layer, comp, "containerd")), med((layer, comp, "strata-api"))
        out[(layer, comp)] = c / s if c and s else None
        cells = [layer, comp, "-" if c is None else f"{c:.2f}", "-" if s is None else f"{s:.2f}",
                 "-" if out[(layer, comp)] is None else f"{out[(layer, comp)]:.2f}x"]
        print(row(cells, widths))
    return out


def floor_table(runs, ratios, med):
    """Prints each layer's stages alone, the floor they give on this machine's cores and
    Strata's efficiency (floor / Strata's time); returns the efficiencies."""
    cores = os.cpu_count() or 1
    print(f"\nStages alone and the floor on {cores} cores (max of the longest stage and "
          "their sum / cores; efficiency = floor / Strata's time):")
    header = ("layer", "comp", "inflate s", "blob sha s", "tar sha s", "write s", "floor s",
              "strata s", "efficiency")
    widths = [10, 5, 9, 10, 9, 7, 7, 8, 10]
    print(row(header, widths))
    effs = {}
    for layer, comp in ratios:
        stages = [med((layer, comp, "inflate")), med((layer, comp, "digest_blob")),
                  med((layer, comp, "digest_tar")), med((layer, "gzip", "write"))]
        strata = med((layer, comp, "strata"))
        floor = None if None in stages else max(max(stages), sum(stages) / cores)
        eff = floor / strata if floor and strata else None
        effs[(layer, comp)] = eff
        cells = [layer, comp] + ["-" if v is None else f"{v:.2f}" for v in stages + [floor, strata]]
        cells.append("-" if eff is None else f"{eff:.2f}")
        print(row(cells, widths))
    return effs


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"rootfs-list": rootfs_list, "smallfiles": smallfiles, "bigfile": bigfile,
     "report": report}[cmd](*args)


if __name__ == "__main__":
    main()
