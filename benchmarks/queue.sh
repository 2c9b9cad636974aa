#!/usr/bin/env bash
# Run a lane of benchmark commands one after another: pop the first line of QUEUEFILE, run it, repeat until
# the file is empty. Lines can be added (or removed) while the lane runs; each start and end goes to
# QUEUEFILE.status with its exit status. Each command gets one thread unless it sets its own, so two lanes
# on two cores never oversubscribe them (README, "The machine").
#
#   (nohup bash benchmarks/queue.sh runs/qA > /dev/null 2>&1 &)
#   echo 'semiseg --quiet --threads 1 benchmark benchmarks/la_ssl4_cpu.yaml --only cps --seeds 1 > runs/logs/cps_s1.log 2>&1' >> runs/qA
set -u
q=$1
while true; do
  cmd=$(head -n1 "$q" 2>/dev/null)
  [ -z "$cmd" ] && break
  sed -i '1d' "$q"
  echo "$(date -u +%FT%T) start: $cmd" >> "$q.status"
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} bash -c "$cmd"
  rc=$?
  echo "$(date -u +%FT%T) end rc=$rc: $cmd" >> "$q.status"
done
