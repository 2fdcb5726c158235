#!/bin/bash
# Runs every benchmark for a few iterations (--smoke) so they do not rot.
# Checks only that each runs to the end and prints its section: no timing.
set -euo pipefail
for b in region_rtt_bench bulk_bench shm_bench irq_bench pipeline_bench \
         scale_bench reconnect_bench; do
  out=$("bench/$b" --smoke --cpu=-1)
  if ! grep -q '^## ' <<< "$out"; then
    echo "$b printed no report:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "$b: ok"
done
