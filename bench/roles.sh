#!/usr/bin/env bash
# bench/roles.sh: every role's maximum throughput on one core, against the wire ceiling measured in
# the same run (`autopaxos bench <role>`), at batch sizes 1 and 100 with 16-byte values.
#
# Writes bench/results/roles-YYYYMMDD-HHMMSS.{json,csv} with the exact commands and the machine.
# Issue 4's target: every role reaches at least 0.5 of its wire ceiling at batch size 100.
#
# Usage: bench/roles.sh [--duration 5s] [--help]
set -euo pipefail

duration=5s
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

source "$(dirname "$0")/common.sh"
json="bench/results/roles-$stamp.json"
csv="bench/results/roles-$stamp.csv"

rows=()
for role in batcher proposer proxy-leader acceptor replica unbatcher; do
    for batch in 1 100; do
        cmd="$bin bench $role --duration $duration --batch-size $batch --value-size 16 --json"
        echo "== $cmd" >&2
        line="$($cmd | tail -n 1)"
        rows+=("$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["command"]=sys.argv[2]; print(json.dumps(r))' "$line" "$cmd")")
    done
done
python3 - "$machine" "$json" "$csv" "${rows[@]}" <<'PY'
import csv, json, sys
machine, path, csv_path, rows = sys.argv[1], sys.argv[2], sys.argv[3], [json.loads(r) for r in sys.argv[4:]]
json.dump({"machine": machine, "runs": rows}, open(path, "w"), indent=2)
fields = ["role", "batch_size", "msgs_per_sec", "cmds_per_sec", "bytes_per_sec", "p50_us", "p99_us",
          "wire_ceiling_msgs_per_sec", "ratio_to_ceiling", "role_busy", "mock_busy", "mock_saturated", "command"]
with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
print(f"{'role':<13} {'batch':>5} {'msgs/s':>11} {'cmds/s':>12} {'ceiling':>11} {'ratio':>6} {'role busy':>9} {'mock busy':>9}")
for r in rows:
    flag = "  (mock saturated)" if r["mock_saturated"] else ""
    print(f"{r['role']:<13} {r['batch_size']:>5} {r['msgs_per_sec']:>11,.0f} {r['cmds_per_sec']:>12,.0f} "
          f"{r['wire_ceiling_msgs_per_sec']:>11,.0f} {r['ratio_to_ceiling']:>6.2f} {r['role_busy']:>8.0%} {r['mock_busy']:>8.0%}{flag}")
PY
echo "wrote $json and $csv" >&2
