# Sourced by the benchmarks that create many files under $BENCH (the benchmark directory).
#
# ext4 without a journal skips a deleted inode for 60 s, or 360 s while its inode-table
# block is dirty (fs/ext4/ialloc.c, recently_deleted), and creating files next to it
# dirties that block again: creating many files within ~6 minutes of deleting many is
# 5-20x slower, for every contender. Benchmarks delete their trees only at the end, through
# delete_trees, which records when; settle, before timing, waits until that window has
# passed. STRATA_BENCH_NO_SETTLE=1 skips the wait. Deletions by other processes on the same
# filesystem can still skew a run: check the per-run lines.

# Deletes trees and syncs, noting when (see settle).
delete_trees() {
  rm -rf "$@"
  sync
  date +%s >"$BENCH/.last-delete"
}

# Waits until ext4 reuses the inodes of the last deletion without scanning past them:
# 360 s (RECENTCY_MIN + RECENTCY_DIRTY) plus a margin.
settle() {
  local last left
  [ -z "${STRATA_BENCH_NO_SETTLE:-}" ] || return 0
  last=$(cat "$BENCH/.last-delete" 2>/dev/null || echo 0)
  left=$((last + 370 - $(date +%s)))
  if [ "$left" -gt 0 ]; then
    echo "waiting ${left}s for ext4 to release the inodes of the last deletion ..." >&2
    sleep "$left"
  fi
}
