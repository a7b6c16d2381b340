# shellcheck shell=bash
# What the pull benchmarks share (scripts/bench/pull, scripts/bench/pull-ctr2): a registry on
# a loopback port holding the images of lib/pull-images.sh, the timed loop that
# alternates the contenders run by run, each run on fresh roots, and the result table.
#
#   pull_workdir: makes $work (a new directory under $BENCH) and $pids, and on exit unmounts
#       what is mounted under $work, kills $pids and deletes $work (lib/settle.sh's
#       delete_trees)
#   pull_registry: starts Debian's docker-registry in $work (plain HTTP), pushes the images
#       into it, sets $registry (host:port); the registry process joins $pids
#   pull_containerd_config DIR: writes DIR/config.toml for a containerd of its own under
#       DIR (builtin overlayfs, CRI off; its socket DIR/containerd.sock)
#   pull_loop: for each image and run, calls time_strata DIR REF and time_containerd DIR
#       REF (functions the script defines, printing seconds), the first of them alternating
#       run by run, each from the same memory state (untimed: `sync`, the page cache
#       dropped, then the registry's files and the contenders' programs read back in), so a
#       run neither pays for the one before's writeback nor finds memory filled by the
#       trees of the runs before (on this machine both contenders slowed 1.5-2x once the
#       page cache had filled); prints every run and the table (medians, containerd/strata
#       ratio). Needs $warm: the programs to read in.
#   until_started PID: waits until daemon PID has finished starting: its CPU time unchanged
#       over 100 ms (at most 3 s). Its socket answers before that: Strata builds its
#       registry clients (~0.25 s of a core), containerd loads plugins. The clock starts
#       after, for both contenders, so it measures the pull, not a daemon's start.
# Needs $runs, $images, lib/settle.sh and ratio_line (lib/contenders.sh).

pull_workdir() {
  work=$(mktemp -d "$BENCH/pull-XXXXXX")
  pids=()
  trap pull_cleanup EXIT
}

pull_cleanup() {
  for m in $(awk -v w="$work" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  delete_trees "$work"
}

pull_registry() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  registry=127.0.0.1:$port
  mkdir -p "$work/registry"
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
    "$work/registry" "$registry" >"$work/registry.yml"
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  for name in "${pull_image_names[@]}"; do
    skopeo copy --quiet --dest-tls-verify=false "oci:$images/$name:1" "docker://$registry/bench/$name:1"
  done
  echo "pull-bench: images in $registry:$(for name in "${pull_image_names[@]}"; do printf ' %s %s,' "$(du -sh "$images/$name" | cut -f1)" "$name"; done)" >&2
}

pull_containerd_config() {
  local dir=$1
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
}

until_started() {
  local pid=$1 before after
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  for _ in $(seq 30); do
    before=$after
    sleep 0.1
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    [ "$after" != "$before" ] || return 0
  done
}

pull_same_start() {
  sync
  echo 1 >/proc/sys/vm/drop_caches
  find "$work/registry" -type f -exec cat {} + >/dev/null
  cat "${warm[@]}" >/dev/null
}

pull_loop() {
  declare -A results
  local name ref i order who t
  for name in "${pull_image_names[@]}"; do
    ref=$registry/bench/$name:1
    for ((i = 1; i <= runs; i++)); do
      if ((i % 2)); then order="strata containerd"; else order="containerd strata"; fi
      for who in $order; do
        pull_same_start
        t=$("time_$who" "$work/$name-$who-$i" "$ref")
        results[$name-$who]+="$t "
        echo "pull-bench: $name run $i: $who ${t}s" >&2
      done
    done
  done
  echo
  printf '%-8s %-12s %-12s %s\n' image containerd strata "ratio (containerd/strata)"
  for name in "${pull_image_names[@]}"; do
    ratio_line "$name" 8 2 "${results[$name-containerd]}" "${results[$name-strata]}"
  done
}
