#!/usr/bin/env bash
# bench/local.sh: `autopaxos local` (a whole f=1 cluster and closed-loop clients in one process over
# loopback TCP, KV state machine, 16-byte values) at batch sizes 1, 10, 40 and 100.
#
# Writes bench/results/local-YYYYMMDD-HHMMSS.{json,csv}: one row per run with the exact command, the
# machine, and every figure `local --json` reports. Issue 3's target is >= 500,000 cmds/s at batch
# size 100 on a 2-core machine.
#
# Usage: bench/local.sh [--duration 10s] [--clients 2048] [--help]
set -euo pipefail

duration=10s
clients=2048
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --clients) clients="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

source "$(dirname "$0")/common.sh"
json="bench/results/local-$stamp.json"
csv="bench/results/local-$stamp.csv"

echo "batch_size,cmds_per_sec,p50_us,p90_us,p99_us,p999_us,max_us,clients,value_size,duration_s,command" > "$csv"
rows=()
for batch in 1 10 40 100; do
    cmd="$bin local --duration $duration --clients $clients --batch-size $batch --value-size 16 --state-machine kv --json"
    echo "== $cmd" >&2
    line="$($cmd | tail -n 1)"
    python3 - "$line" "$cmd" >> "$csv" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(",".join(str(r[k]) for k in ["batch_size", "cmds_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "clients", "value_size", "duration_s"]) + ',"' + sys.argv[2] + '"')
PY
    rows+=("$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["command"]=sys.argv[2]; print(json.dumps(r))' "$line" "$cmd")")
done
python3 - "$machine" "$json" "${rows[@]}" <<'PY'
import json, sys
machine, path, rows = sys.argv[1], sys.argv[2], [json.loads(r) for r in sys.argv[3:]]
json.dump({"machine": machine, "runs": rows}, open(path, "w"), indent=2)
print(f"{'batch':>6} {'cmds/s':>12} {'p50 us':>8} {'p99 us':>8}")
for r in rows:
    print(f"{r['batch_size']:>6} {r['cmds_per_sec']:>12,.0f} {r['p50_us']:>8} {r['p99_us']:>8}")
PY
echo "wrote $json and $csv" >&2
