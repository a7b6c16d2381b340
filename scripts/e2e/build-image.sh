#!/usr/bin/env bash
# Builds, without network, a small OCI image archive for the containerd end-to-end test,
# from Debian's static busybox:
#   layer 1: /bin/busybox and applet symlinks, the usual mount-point dirs, /etc/a, /etc/b,
#            /data/keep/x, /data/old/{y,z}, /data/gone/f
#   layer 2: changes /etc/a, deletes /etc/b and /data/gone with whiteouts (.wh.b,
#            .wh.gone), adds /etc/c and /data/old/w
#   layer 3: makes /data/old opaque (.wh..wh..opq) and adds /data/old/new
#   EXTRA_LAYERS more layers, layer 3+N adding /extra/fN containing "extra N"
# Layers are gzip-compressed tars with numeric owners, fixed mtimes and sorted names, so the
# same arguments always give the same digests. index.json names the image NAME through the
# org.opencontainers.image.ref.name annotation, which `ctr images import` uses; give a full
# reference such as example.test/e2e:1 so ctr does not add a prefix. The image's command is
# /bin/sh, or the JSON array in IMAGE_CMD (e.g. '["/bin/sleep","3600"]' for a pod sandbox).
# BIG_MB=N adds /big, N MiB of random data, to layer 1 (a layer slow enough to interrupt;
# its digest differs on every build).
#
# Usage: [IMAGE_CMD=JSON] [BIG_MB=N] build-image.sh OUT.tar NAME [EXTRA_LAYERS]
set -euo pipefail

if (($# < 2 || $# > 3)); then
	echo "usage: $0 OUT.tar NAME [EXTRA_LAYERS]" >&2
	exit 2
fi
out=$1
name=$2
extra=${3:-0}
busybox=/bin/busybox
applets=(sh ls cat find sort grep wc echo test mkdir rm sleep)
mtime=@1577836800 # 2020-01-01T00:00:00Z

case "$(dpkg --print-architecture)" in
amd64) arch=amd64 ;;
arm64) arch=arm64 ;;
i386) arch=386 ;;
ppc64el) arch=ppc64le ;;
s390x) arch=s390x ;;
riscv64) arch=riscv64 ;;
*)
	echo "$0: unsupported architecture $(dpkg --print-architecture)" >&2
	exit 1
	;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022
image=$work/image
blobs=$image/blobs/sha256
mkdir -p "$blobs"

sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Stores file $1 as a blob; prints its digest.
store_blob() {
	local digest
	digest=$(sha256 "$1")
	mv "$1" "$blobs/$digest"
	echo "$digest"
}

layer_descs=()
diff_ids=()

# Packs directory $1 as the next layer.
add_layer() {
	local dir=$1 tar=$work/layer.tar digest
	# Top-level entries by name, so the archive holds no "./" entry.
	local entries
	mapfile -t entries < <(cd "$dir" && LC_ALL=C ls -A)
	tar --create --file="$tar" --directory="$dir" --format=gnu --sort=name \
		--numeric-owner --owner=0 --group=0 --mtime="$mtime" -- "${entries[@]}"
	diff_ids+=("\"sha256:$(sha256 "$tar")\"")
	gzip -n -c "$tar" >"$tar.gz"
	rm "$tar"
	local gz_size
	gz_size=$(size "$tar.gz")
	digest=$(store_blob "$tar.gz")
	layer_descs+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$gz_size}")
}

# Layer 1: the base.
l=$work/l1
mkdir -p "$l/bin" "$l/dev" "$l/proc" "$l/sys" "$l/run" "$l/tmp" \
	"$l/etc" "$l/data/keep" "$l/data/old" "$l/data/gone"
cp "$busybox" "$l/bin/busybox"
chmod 0755 "$l/bin/busybox"
for a in "${applets[@]}"; do
	ln -s busybox "$l/bin/$a"
done
chmod 1777 "$l/tmp"
echo a1 >"$l/etc/a"
echo b1 >"$l/etc/b"
echo x1 >"$l/data/keep/x"
echo y1 >"$l/data/old/y"
echo z1 >"$l/data/old/z"
echo f1 >"$l/data/gone/f"
if [ -n "${BIG_MB:-}" ]; then
	head -c "$((BIG_MB * 1024 * 1024))" /dev/urandom >"$l/big"
fi
add_layer "$l"

# Layer 2: a change, whiteouts of a file and of a directory, additions.
l=$work/l2
mkdir -p "$l/etc" "$l/data/old"
echo a2 >"$l/etc/a"
: >"$l/etc/.wh.b"
echo c2 >"$l/etc/c"
: >"$l/data/.wh.gone"
echo w2 >"$l/data/old/w"
add_layer "$l"

# Layer 3: an opaque directory.
l=$work/l3
mkdir -p "$l/data/old"
: >"$l/data/old/.wh..wh..opq"
echo new3 >"$l/data/old/new"
add_layer "$l"

for ((n = 1; n <= extra; n++)); do
	l=$work/x$n
	mkdir -p "$l/extra"
	echo "extra $n" >"$l/extra/f$n"
	add_layer "$l"
	rm -rf "$l"
done

join() {
	local IFS=,
	echo "$*"
}

config=$work/config.json
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":%s},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
	"$arch" "${IMAGE_CMD:-[\"/bin/sh\"]}" "$(join "${diff_ids[@]}")" >"$config"
config_size=$(size "$config")
config_digest=$(store_blob "$config")

manifest=$work/manifest.json
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
	"$config_digest" "$config_size" "$(join "${layer_descs[@]}")" >"$manifest"
manifest_size=$(size "$manifest")
manifest_digest=$(store_blob "$manifest")

printf '{"imageLayoutVersion":"1.0.0"}' >"$image/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
	"$manifest_digest" "$manifest_size" "$arch" "$name" >"$image/index.json"

tar --create --file="$out" --directory="$image" --format=gnu --sort=name \
	--numeric-owner --owner=0 --group=0 --mtime="$mtime" -- oci-layout index.json blobs
