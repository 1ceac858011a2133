#!/usr/bin/env bash
# bench/recovery.sh: recovery time of the stateful roles, from process start to serving, with the
# real binary as a user starts it: an acceptor whose write-ahead log holds --bytes of accepted
# batches, and a replica whose snapshot holds --bytes of key-value state. Each is started cold (its
# files evicted from the page cache) and warm; see `autopaxos bench recovery --help`.
#
# Writes bench/results/recovery-YYYYMMDD-HHMMSS.json: the exact command, the machine, and every
# figure `bench recovery --json` reports. Needs twice --bytes of free disk under $TMPDIR (one node
# at a time) and about 4x --bytes of memory while the replica's state is built.
#
# Usage: bench/recovery.sh [--bytes 1GiB] [--help]
set -euo pipefail

bytes=1GiB
while [ $# -gt 0 ]; do
    case "$1" in
        --bytes) bytes="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

source "$(dirname "$0")/common.sh"
json="bench/results/recovery-$stamp.json"

cmd="$bin bench recovery --bytes $bytes --json"
echo "== $cmd" >&2
line="$($cmd | tail -n 1)"
python3 - "$machine" "$json" "$cmd" "$line" <<'PY'
import json, sys
machine, path, cmd, line = sys.argv[1:5]
r = json.loads(line)
json.dump({"machine": machine, "command": cmd, "result": r}, open(path, "w"), indent=2)
print(f"{'node':>10} {'on disk MiB':>12} {'start':>6} {'listening ms':>13} {'serving ms':>11} {'read back ms':>13}")
for key in ["acceptor", "replica"]:
    n = r[key]
    for s in n["starts"]:
        logged = s["logged_recovery_ms"]
        print(f"{key + ' ' + str(n['node']):>10} {n['bytes_on_disk'] / 2**20:>12,.0f} {'cold' if s['cold'] else 'warm':>6} "
              f"{s['listening_ms']:>13,.1f} {s['serving_ms']:>11,.1f} {'-' if logged is None else f'{logged:,.1f}':>13}")
PY
echo "wrote $json" >&2
