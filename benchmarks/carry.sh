#!/usr/bin/env bash
# Carry benchmark work folders across sessions that get the same machine back with a fresh work tree.
#
# A CPU benchmark run takes 40-150 min; a session that stops mid-run loses it when the next session's
# work tree is laid anew (runs/ is git-ignored), although the machine itself may be handed back as it
# was. `save` copies runs/bench (checkpoints of runs in progress, preprocessing caches, finished pieces)
# outside the work tree; `restore` copies back what the fresh tree lacks, so `semiseg benchmark` resumes
# each run from its last checkpoint instead of step 0. Finished runs come back from the committed results
# files anyway; this only saves the unfinished ones and the preprocessing.
#
#   bash benchmarks/carry.sh save      # at the end of a session, runs still going (checkpoints are
#                                      # written temp-then-rename, so the copied checkpoint is whole)
#   bash benchmarks/carry.sh restore   # at the start of the next one, before any benchmark command
#
# SEMISEG_CARRY overrides the place (default /root/.semiseg-carry). A machine that was not kept has no
# carry folder: restore then says so and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
carry="${SEMISEG_CARRY:-/root/.semiseg-carry}/bench"
case "${1:-}" in
  save)
    [ -d runs/bench ] || { echo "carry: no runs/bench to save"; exit 0; }
    mkdir -p "$carry"
    cp -a runs/bench/. "$carry/"
    echo "carry: saved runs/bench to $carry ($(du -sh "$carry" | cut -f1))"
    ;;
  restore)
    [ -d "$carry" ] || { echo "carry: nothing at $carry (machine not kept); nothing restored"; exit 0; }
    mkdir -p runs/bench
    cp -a -n "$carry/." runs/bench/
    echo "carry: restored $carry into runs/bench (files already there kept)"
    ;;
  *)
    echo "usage: bash benchmarks/carry.sh save|restore" >&2
    exit 2
    ;;
esac
