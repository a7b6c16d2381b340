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
# The test binary is built once and cached by scripts/e2e/go-build.sh (GOPATH mode, offline).
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
log() { echo "content-suite: $*" >&2; }

# 1. Toolchain, containerd source and the test binary (scripts/e2e/go-build.sh).
bin=$(CALLER=scripts/e2e/content-suite.sh "$here/go-build.sh" "$($build && echo --build || echo --built)" \
	test content-suite "$src")
$build && exit 0

# 2. Run. The suite's temp dirs (unused by this store) go to a private dir, removed after.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "running against $socket"
rc=0
STRATA_CONTENT_SUITE_ADDRESS=$socket TMPDIR=$tmp \
	"$bin" -test.v -test.count=1 -test.timeout="${STRATA_CONTENT_SUITE_TIMEOUT:-10m}" "$@" |
	tee "$tmp/out" || rc=$?

# 3. A plain summary of the subtests (the suite's tests) as the last line; a run that ran
#    none (e.g. a -test.run matching nothing) fails too.
count() { grep -cE "^ +--- $1: " "$tmp/out" || true; }
passed=$(count PASS) failed=$(count FAIL) skipped=$(count SKIP)
echo "content-suite: $passed passed, $failed failed, $skipped skipped"
((rc == 0 && passed == 0)) && rc=1
exit "$rc"
