# shellcheck shell=bash
# What the benchmarks pitting Strata against containerd 1.7.24 share (scripts/bench/pull,
# scripts/bench/userns): their options, their set-up and their ratio lines. Needs $REPO.
#
#   bench_args NAME RUNS HELP_LINES "$@"   parses --runs N (default RUNS), --strata PATH and
#       -h/--help (prints the script's comment lines 2..HELP_LINES); sets $runs and $strata
#       and defines die, whose messages start with NAME
#   bench_setup   checks root, installs what is missing (scripts/e2e/ensure-deps.sh), sets
#       $bin to containerd 1.7's directory, builds target/release/strata unless --strata
#       named a binary, and makes $BENCH
#   ratio_line LABEL WIDTH DECIMALS "CONTAINERD TIMES" "STRATA TIMES"   prints the medians
#       and the ratio (containerd/strata; above 1 means Strata is faster), with the range
#       of the run-by-run ratios

bench_args() {
  bench_name=$1 runs=$2 bench_help=$3
  shift 3
  strata=""
  while [ $# -gt 0 ]; do
    case $1 in
      --runs) [ $# -ge 2 ] || die "--runs needs a value"; runs=$2; shift 2 ;;
      --strata) [ $# -ge 2 ] || die "--strata needs a value"; strata=$2; shift 2 ;;
      -h|--help) usage 0 ;;
      *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
  done
  [[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
}

usage() { sed -n "2,${bench_help}p" "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "$bench_name: $*" >&2; exit 2; }

bench_setup() {
  [ "$(id -u)" = 0 ] || die "needs root (mounts, containerd)"
  "$REPO/scripts/e2e/ensure-deps.sh"
  bin=$("$REPO/scripts/e2e/containerd.sh" 1.7)
  if [ -z "$strata" ]; then
    strata=$REPO/target/release/strata
    [ -x "$strata" ] || (cd "$REPO" && cargo build --release)
  fi
  mkdir -p "$BENCH"
}

ratio_line() {
  python3 - "$@" <<'PY'
import statistics, sys
label, width, decimals = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c, s = [float(x) for x in sys.argv[4].split()], [float(x) for x in sys.argv[5].split()]
mc, ms = statistics.median(c), statistics.median(s)
pairs = sorted(a / b for a, b in zip(c, s))
print(f"{label:<{width}} {mc:>8.{decimals}f} s   {ms:>8.{decimals}f} s   "
      f"{mc / ms:.2f}x (pairwise {pairs[0]:.2f}-{pairs[-1]:.2f}x)")
PY
}
