#!/usr/bin/env bash
# Runs containerd's own content store test suite (content/testsuite: ContentSuite and
# ContentCrossNSSharedSuite, 14 subtests) through containerd's gRPC content client against a
# containerd-compatible unix socket, and prints the `go test -v` output. The Go side is
# tests/contentsuite/contentsuite_test.go (each test in a namespace of its own, under a lease).
#
#   scripts/e2e/content-suite.sh --build
#   scripts/e2e/content-suite.sh SOCKET [go test flags, e.g. -test.run 'Suite/Writer$']
#
# --build installs what is missing and builds the test binary (what .ci/run and the tests'
# first root test do); a run installs and builds nothing, and fails naming this script
# when the binary is not there.
#
# Exit status: 0 if every test passed, nonzero otherwise (or if the build failed, or no test
# ran). The last line on stdout is a summary: "content-suite: N passed, N failed, N skipped".
#
# What it needs, installed with apt-get only if missing (`apt-get update` only then):
#   golang-go                                (Go 1.19 on Debian 12 bookworm)
#   golang-github-containerd-containerd-dev  (containerd 1.6.20 source + its -dev deps)
# The test binary is built with `go test -c` in GOPATH mode (GO111MODULE=off,
# GOPATH=<private>:/usr/share/gocode), offline (GOPROXY=off), once: it is cached under
# $CACHE/content-suite/, keyed by the Go source, `go version` and the versions of the installed
# golang-* packages (Go and the packaged Go sources), and rebuilt only when one of these changes.
#
# Environment:
#   STRATA_E2E_CACHE            cache dir (default /var/cache/strata-e2e)
#   STRATA_CONTENT_SUITE_TIMEOUT  go test -test.timeout for the whole run (default 10m)
#
# Needs root for the apt-get step (when something is missing) and if $CACHE is not writable.
set -euo pipefail

socket=${1:-}
if [[ -z $socket ]]; then
	echo "usage: $0 --build | SOCKET [go test flags]" >&2
	exit 2
fi
shift
build=false
if [[ $socket == --build ]]; then
	build=true
else
	[[ -S $socket ]] || { echo "content-suite: $socket is not a unix socket" >&2; exit 2; }
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../../tests/contentsuite" && pwd)
cache=${STRATA_E2E_CACHE:-/var/cache/strata-e2e}/content-suite
log() { echo "content-suite: $*" >&2; }

# 1. Toolchain and containerd source from Debian, only if missing.
pkgs=(golang-go golang-github-containerd-containerd-dev)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})) && ! $build; then
	log "missing ${missing[*]}: run scripts/e2e/content-suite.sh --build (as .ci/run does)"
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
bin=$cache/contentsuite-$key.test
if [[ ! -x $bin ]] && ! $build; then
	log "no test binary for this source: run scripts/e2e/content-suite.sh --build (as .ci/run does)"
	exit 1
fi
if [[ ! -x $bin ]]; then
	mkdir -p "$cache/gopath"
	log "building $bin"
	start=$SECONDS
	(cd "$src" && go test -c -o "$bin.tmp.$$" .)
	rm -f "$cache"/contentsuite-*.test # stale builds
	mv "$bin.tmp.$$" "$bin"
	log "built in $((SECONDS - start))s"
fi

$build && exit 0

# 3. Run. The suite's temp dirs (unused by this store) go to a private dir, removed after.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "running against $socket"
rc=0
STRATA_CONTENT_SUITE_ADDRESS=$socket TMPDIR=$tmp \
	"$bin" -test.v -test.count=1 -test.timeout="${STRATA_CONTENT_SUITE_TIMEOUT:-10m}" "$@" |
	tee "$tmp/out" || rc=$?

# 4. A plain summary of the subtests (the suite's tests) as the last line; a run that ran
#    none (e.g. a -test.run matching nothing) fails too.
count() { grep -cE "^ +--- $1: " "$tmp/out" || true; }
passed=$(count PASS) failed=$(count FAIL) skipped=$(count SKIP)
echo "content-suite: $passed passed, $failed failed, $skipped skipped"
((rc == 0 && passed == 0)) && rc=1
exit "$rc"
