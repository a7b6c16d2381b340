#!/usr/bin/env bash
# Builds one of Strata's Go helpers (tests/contentsuite, tests/applyclient) against
# Debian's packaged containerd 1.6 source, offline, in GOPATH mode, once: the binary is
# cached under $CACHE/NAME/, keyed by the Go source, `go version` and the versions of the
# installed golang-* packages, and rebuilt only when one of these changes. Prints its path.
#
#   scripts/e2e/go-build.sh --build|--built test|cmd NAME SRC_DIR
#
# --build installs what is missing (apt-get, `apt-get update` only then) and builds;
# --built installs and builds nothing and fails, naming CALLER (env, default this script),
# when the binary is not there. `test` builds the package's tests (`go test -c`), `cmd` the
# package itself (`go build`).
#
# What it needs: golang-go (Go 1.19 on Debian 12 bookworm) and
# golang-github-containerd-containerd-dev (containerd 1.6.20 source and its -dev deps).
# Environment: STRATA_E2E_CACHE, the cache (default /var/cache/strata-e2e); CALLER, the
# command to name in messages. Needs root for apt-get and if the cache is not writable.
set -euo pipefail

[[ $# == 4 && $1 =~ ^--(build|built)$ && $2 =~ ^(test|cmd)$ ]] || {
	echo "usage: $0 --build|--built test|cmd NAME SRC_DIR" >&2
	exit 2
}
build=false
[[ $1 == --build ]] && build=true
kind=$2 name=$3 src=$(cd "$4" && pwd)
cache=${STRATA_E2E_CACHE:-/var/cache/strata-e2e}/$name
caller=${CALLER:-$0}
log() { echo "$name: $*" >&2; }

# 1. Toolchain and containerd source from Debian, only if missing.
pkgs=(golang-go golang-github-containerd-containerd-dev)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})) && ! $build; then
	log "missing ${missing[*]}: run $caller --build (as .ci/run does)"
	exit 1
fi
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# 2. Build once (cached by the inputs' hash), GOPATH mode, offline.
export GO111MODULE=off GOPROXY=off GOFLAGS= GOTOOLCHAIN=local CGO_ENABLED=0
export GOPATH=$cache/gopath:/usr/share/gocode GOCACHE=$cache/gocache
key=$({
	cat "$src"/*.go
	go version
	dpkg-query -W -f='${Package} ${Version}\n' 'golang-*' 2>/dev/null | sort
} | sha256sum | cut -c1-16)
bin=$cache/$name-$key
if [[ ! -x $bin ]] && ! $build; then
	log "no binary for this source: run $caller --build (as .ci/run does)"
	exit 1
fi
if [[ ! -x $bin ]]; then
	mkdir -p "$cache/gopath"
	log "building $bin"
	start=$SECONDS
	case $kind in
	test) (cd "$src" && go test -c -o "$bin.tmp.$$" .) >&2 ;;
	cmd) (cd "$src" && go build -o "$bin.tmp.$$" .) >&2 ;;
	esac
	mv "$bin.tmp.$$" "$bin"
	for old in "$cache/$name"-*; do [[ $old == "$bin" ]] || rm -f "$old"; done # stale builds
	log "built in $((SECONDS - start))s"
fi
echo "$bin"
