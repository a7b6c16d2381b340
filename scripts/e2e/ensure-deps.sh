#!/usr/bin/env bash
# Makes sure the programs the end-to-end tests need are installed: containerd (with ctr and
# containerd-shim-runc-v2), runc, a static busybox for the test image,
# systemd-socket-activate (socket activation without a running systemd), a registry
# (docker-registry) with skopeo to push the test image to it, and btrfs-progs (the size-limit
# tests' loop-mounted filesystem with quotas), and Python's grpcio from PyPI (gRPC's C core,
# the client that sends the socket's path as :authority).
# Installs only what is missing, with apt-get; `apt-get update` runs only if an install is
# needed. Idempotent. Needs root when something has to be installed. With --check, installs
# nothing and fails naming what is missing.
set -euo pipefail
check_only=false
[[ ${1:-} == --check ]] && check_only=true

# package:file-it-provides pairs.
required=(
	containerd:/usr/bin/containerd
	containerd:/usr/bin/ctr
	containerd:/usr/bin/containerd-shim-runc-v2
	runc:/usr/sbin/runc
	busybox-static:/bin/busybox
	systemd:/usr/bin/systemd-socket-activate
	docker-registry:/usr/bin/docker-registry
	skopeo:/usr/bin/skopeo
	btrfs-progs:/usr/bin/btrfs
	btrfs-progs:/usr/sbin/mkfs.btrfs
)

missing=()
for pair in "${required[@]}"; do
	pkg=${pair%%:*}
	file=${pair#*:}
	if [[ ! -x $file ]] && [[ " ${missing[*]} " != *" $pkg "* ]]; then
		missing+=("$pkg")
	fi
done

python_grpc=true
python3 -c 'import grpc' 2>/dev/null || python_grpc=false

if ((${#missing[@]} == 0)) && $python_grpc; then
	exit 0
fi

if $check_only; then
	$python_grpc || missing+=("python3 grpcio")
	echo "ensure-deps: missing ${missing[*]}: run scripts/e2e/ensure-deps.sh (as .ci/run does)" >&2
	exit 1
fi
if ((${#missing[@]})); then
	echo "ensure-deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! $python_grpc; then
	echo "ensure-deps: installing grpcio for python3" >&2
	python3 -m pip install -q --root-user-action=ignore grpcio
fi
