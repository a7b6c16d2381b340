#!/usr/bin/env bash
# Makes a containerd release's binaries available on a Debian 12 (bookworm) machine without
# installing or upgrading anything system-wide, and prints the directory holding them
# (containerd, ctr, containerd-shim-runc-v2, ...) as the only line on stdout. Progress goes to
# stderr.
#
#   scripts/e2e/containerd.sh RELEASE [--check]
#
#   RELEASE   1.7: Debian 13 "trixie"'s containerd 1.7.24~ds1-*
#             2.1: Debian unstable's containerd 2.1.9+ds1-*
#
# How: a private apt configuration under $CACHE/apt-<suite> (its own sources list naming
# that suite of the Debian mirror the system's apt sources use, its own state/lists/cache
# dirs, no system apt.conf.d hooks, no system preferences), `apt-get update` + `apt-get
# download containerd=<version>` with it, then `dpkg -x` into $CACHE/containerd-<RELEASE>.
# The .deb is never installed, /etc/apt and dpkg's database are never touched, libc is
# never upgraded.
#
# Idempotent: if $CACHE/containerd-<RELEASE>/usr/bin/containerd exists and `containerd
# --version` reports that release, nothing is downloaded; the path is just printed. A
# downloaded .deb is reused. With --check, nothing is downloaded: the path is printed if the
# binaries are there, else it fails.
#
# Environment:
#   STRATA_E2E_CACHE          cache dir (default /var/cache/strata-e2e)
#   STRATA_E2E_DEBIAN_MIRROR  Debian mirror URI to use instead of the one found in
#                             /etc/apt/sources.list{,.d/*} (e.g. http://deb.debian.org/debian)
#
# Needs root for the first run only if $CACHE is not writable otherwise.
#
# The binaries are dynamically linked against libc only and run on bookworm's glibc 2.36 as
# they are (no wrapper or private libc needed).
#
# Start the daemon with the directory first in PATH: containerd looks up
# containerd-shim-runc-v2 in PATH before its own directory, so otherwise bookworm's 1.6.20 shim
# in /usr/bin would be used. The shim runs `runc` from PATH (bookworm's /usr/sbin/runc).
#
# Usage: bin=$(scripts/e2e/containerd.sh 1.7) &&
#        PATH=$bin:$PATH "$bin/containerd" --config config.toml
set -euo pipefail

release=${1:-}
check_only=false
[[ ${2:-} == --check ]] && check_only=true
case $release in
1.7) suite=trixie want_version='1.7.24~ds1-*' ;;
2.1) suite=unstable want_version='2.1.9+ds1-*' ;;
*)
	echo "usage: $0 1.7|2.1 [--check]" >&2
	exit 2
	;;
esac
cache=${STRATA_E2E_CACHE:-/var/cache/strata-e2e}
dest=$cache/containerd-$release
bindir=$dest/usr/bin
aptdir=$cache/apt-$suite

log() { echo "containerd-$release: $*" >&2; }

# Prints the version line if $1/containerd runs and is of $release.
is_ready() {
	local out
	[[ -x $1/containerd && -x $1/ctr && -x $1/containerd-shim-runc-v2 ]] || return 1
	out=$("$1/containerd" --version 2>/dev/null) || return 1
	[[ $out =~ [[:space:]]v?${release//./\\.}\.[0-9] ]] || return 1
	echo "$out"
}

if v=$(is_ready "$bindir"); then
	log "already present: $v"
	echo "$bindir"
	exit 0
fi
if $check_only; then
	log "containerd $release is not in $bindir: run scripts/e2e/containerd.sh $release (as .ci/run does)"
	exit 1
fi

mkdir -p "$cache"
# Serialise concurrent runs.
exec 9>"$cache/.containerd-$release.lock"
flock 9
if v=$(is_ready "$bindir"); then
	log "already present: $v"
	echo "$bindir"
	exit 0
fi

arch=$(dpkg --print-architecture)
# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
default_keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# Finds the Debian mirror (and its Signed-By keyring if it names a file) that the system's apt
# sources use for the release's main suite ($codename, not -security/-updates). Prints
# "URI KEYRING" (KEYRING may be empty). Reads one-line *.list and deb822 *.sources files.
find_mirror() {
	local files=()
	[[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
	local f
	for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] && files+=("$f")
	done
	((${#files[@]})) || return 0
	awk -v codename="$codename" '
		function flush() {
			if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled !~ /^[Nn]o$/ && uris != "") {
				n = split(suites, s, /[ \t]+/)
				for (i = 1; i <= n; i++) if (s[i] == codename) {
					split(uris, u, /[ \t]+/)
					print u[1], (signed ~ /^\// ? signed : "")
					found = 1
					exit
				}
			}
			types = uris = suites = signed = enabled = ""
		}
		FNR == 1 { flush() }
		FILENAME ~ /\.sources$/ {
			if ($0 ~ /^[ \t]*$/) { flush(); next }
			if ($0 ~ /^#/ || $0 ~ /^[ \t]/) next   # comments, continuation lines
			key = tolower($0); sub(/:.*/, "", key)
			val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
			if (key == "types") types = val
			else if (key == "uris") uris = val
			else if (key == "suites") suites = val
			else if (key == "signed-by") signed = val
			else if (key == "enabled") enabled = val
			next
		}
		{
			# one-line format: deb [opts] uri suite comp...
			sub(/#.*/, "")
			if ($1 != "deb") next
			line = $0; sub(/^[ \t]*deb[ \t]+/, "", line)
			opts = ""
			if (line ~ /^\[/) { opts = line; sub(/\].*/, "", opts); sub(/^[^\]]*\][ \t]*/, "", line) }
			split(line, w, /[ \t]+/)
			if (w[2] == codename) {
				kr = ""
				if (match(opts, /signed-by=[^ \t\]]+/)) kr = substr(opts, RSTART + 10, RLENGTH - 10)
				print w[1], (kr ~ /^\// ? kr : "")
				found = 1
				exit
			}
		}
		END { if (!found) flush() }
	' "${files[@]}"
}

mirror=${STRATA_E2E_DEBIAN_MIRROR:-}
keyring=
if [[ -z $mirror ]]; then
	read -r mirror keyring < <(find_mirror) || true
fi
if [[ -z $mirror ]]; then
	mirror=http://deb.debian.org/debian
	log "no Debian mirror for '$codename' found in /etc/apt sources; using $mirror"
fi
[[ -n $keyring && -f $keyring ]] || keyring=$default_keyring
if [[ ! -f $keyring ]]; then
	log "keyring $keyring not found (package debian-archive-keyring)"
	exit 1
fi

# --- private apt configuration -------------------------------------------------------------
mkdir -p "$aptdir"/{etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,lists/partial,cache/archives/partial,debs}
: >"$aptdir/status"
cat >"$aptdir/etc/sources.list" <<EOF
# Written by scripts/e2e/containerd.sh; used only with APT_CONFIG=$aptdir/apt.conf
deb [signed-by=$keyring] $mirror $suite main
EOF

# Keep the system's proxy and Release-date settings (needed if the mirror is a proxy or a
# snapshot), but nothing else: the system's apt.conf.d hooks (Update::Post-Invoke and friends)
# must not run for this private update.
passthrough=$(apt-config dump 2>/dev/null |
	grep -E '^Acquire::([a-z]+::Proxy|Check-Valid-Until|Check-Date|Max-ValidTime)( |::)' || true)

cat >"$aptdir/apt.conf" <<EOF
// Written by scripts/e2e/containerd.sh. Private apt configuration: nothing under /etc/apt
// or /var/lib/{apt,dpkg} is read for packages or written.
Dir::Etc "$aptdir/etc/";
Dir::Etc::main "/dev/null";
Dir::Etc::parts "$aptdir/etc/apt.conf.d/";
Dir::Etc::sourcelist "$aptdir/etc/sources.list";
Dir::Etc::sourceparts "$aptdir/etc/sources.list.d/";
Dir::Etc::preferences "$aptdir/etc/preferences";
Dir::Etc::preferencesparts "$aptdir/etc/preferences.d/";
Dir::State "$aptdir/";
Dir::State::lists "$aptdir/lists/";
Dir::State::status "$aptdir/status";
Dir::State::extended_states "$aptdir/extended_states";
Dir::Cache "$aptdir/cache/";
Dir::Cache::archives "$aptdir/cache/archives/";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Log "$aptdir/log/";
APT::Architecture "$arch";
APT::Architectures { "$arch"; };
Acquire::Languages "none";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
APT::Get::List-Cleanup "true";
$passthrough
EOF
export APT_CONFIG=$aptdir/apt.conf
unset APT_CONFIG_EXTRA 2>/dev/null || true

# apt drops privileges to _apt for downloads; let it write the download dir.
if [[ $(id -u) == 0 ]] && id -u _apt >/dev/null 2>&1; then
	chown _apt "$aptdir/debs"
fi

# Prints the newest downloaded containerd .deb whose version matches the glob $1.
find_deb() {
	local f fv best='' bestv=''
	for f in "$aptdir"/debs/containerd_*_"$arch".deb; do
		[[ -f $f ]] || continue
		fv=$(dpkg-deb -f "$f" Version) || continue
		# shellcheck disable=SC2053 # $1 is a glob on purpose
		[[ $fv == $1 ]] || continue
		if [[ -z $best ]] || dpkg --compare-versions "$fv" gt "$bestv"; then
			best=$f bestv=$fv
		fi
	done
	[[ -n $best ]] && echo "$best"
}

# Reuse an already downloaded .deb if it matches the wanted version.
deb=$(find_deb "$want_version") || true

if [[ -z $deb ]]; then
	log "apt-get update ($mirror $suite main, private config $APT_CONFIG)"
	apt-get -q update >&2
	versions=$(apt-cache madison containerd | awk -F'|' '{gsub(/ /, "", $2); print $2}')
	version=
	for v in $versions; do
		# shellcheck disable=SC2053
		if [[ $v == $want_version ]]; then version=$v; break; fi
	done
	if [[ -z $version ]]; then
		log "no containerd version matching '$want_version' in $mirror $suite (found: ${versions:-none})"
		exit 1
	fi
	log "apt-get download containerd=$version"
	(cd "$aptdir/debs" && apt-get -q download "containerd=$version" >&2)
	deb=$(find_deb "$version") || {
		log "download of containerd=$version left no .deb in $aptdir/debs"
		exit 1
	}
	# Drop debs of other versions.
	for f in "$aptdir"/debs/*.deb; do
		[[ $f == "$deb" ]] || rm -f "$f"
	done
fi

# --- extract ------------------------------------------------------------------------------
log "extracting $(basename "$deb") into $dest"
tmp=$(mktemp -d "$cache/.containerd-$release.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dpkg -x "$deb" "$tmp"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
chmod 755 "$dest"

if ! v=$(is_ready "$bindir"); then
	log "extracted binaries in $bindir do not run or are not $release:"
	"$bindir/containerd" --version >&2 || true
	exit 1
fi
log "ready: $v"
echo "$bindir"
