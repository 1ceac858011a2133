#!/usr/bin/env bash
# bench/authenticated_frames.sh: what `--authenticate-frames` (a keyed BLAKE3 MAC on every frame)
# costs, measured in one run on one machine.
#   1. `autopaxos local` at batch size 100, 16-byte values, durable: without and with the MAC,
#      alternated (plain, MACed, plain, MACed) so that drift on a shared machine hits both alike;
#   2. `autopaxos bench <role>` for the proxy leader (many small frames) and the batcher (large
#      batches) without and with the MAC, each with its wire ceiling measured the same way.
#
# Writes bench/results/authenticated-frames-YYYYMMDD-HHMMSS.json with every command, its JSON output
# and the machine, and prints the ratios. Usage: bench/authenticated_frames.sh [--duration 10s]
set -euo pipefail

duration=10s
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

source "$(dirname "$0")/common.sh"
out="bench/results/authenticated-frames-$stamp.json"

for i in 1 2; do
    run local-plain "$bin" local --duration "$duration" --batch-size 100 --value-size 16 --json
    run local-mac "$bin" local --duration "$duration" --batch-size 100 --value-size 16 --authenticate-frames --json
done
for role in proxy-leader batcher; do
    run "$role-plain" "$bin" bench "$role" --duration 5s --batch-size 100 --json
    run "$role-mac" "$bin" bench "$role" --duration 5s --batch-size 100 --authenticate-frames --json
done

python3 - "$machine" "$out" "${runs[@]}" <<'PY'
import json, sys
machine, path, runs = sys.argv[1], sys.argv[2], [json.loads(r) for r in sys.argv[3:]]
json.dump({"machine": machine, "runs": runs}, open(path, "w"), indent=2)
by = lambda label: [r["result"] for r in runs if r["label"] == label]
print(f"machine: {machine}")
mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
plain, mac = by("local-plain"), by("local-mac")
for name, rs in [("plain", plain), ("MACed", mac)]:
    for r in rs:
        print(f"local {name:5}: {r['cmds_per_sec']:>12,.0f} cmds/s  p50 {r['p50_us']} us  p99 {r['p99_us']} us")
print(f"local MACed / plain: {mean(mac, 'cmds_per_sec') / mean(plain, 'cmds_per_sec'):.2f}")
for role in ["proxy-leader", "batcher"]:
    p, m = by(f"{role}-plain")[0], by(f"{role}-mac")[0]
    print(f"bench {role}: plain {p['msgs_per_sec']:,.0f} msgs/s ({p['ratio_to_ceiling']:.2f} of its ceiling), "
          f"MACed {m['msgs_per_sec']:,.0f} msgs/s ({m['ratio_to_ceiling']:.2f} of its ceiling): "
          f"{m['msgs_per_sec'] / p['msgs_per_sec']:.2f}")
PY
echo "wrote $out" >&2
