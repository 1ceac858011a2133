#!/usr/bin/env bash
# bench/durability.sh: what durability costs, measured in one run on one machine.
#   1. the disk: `autopaxos bench disk` (4 KiB write+fdatasync rate, synced 1 MiB bandwidth);
#   2. `autopaxos local` at batch size 100, 16-byte values: durable and --in-memory, alternated
#      (durable, in-memory, durable, in-memory) so that drift on a shared machine hits both alike;
#   3. `autopaxos bench acceptor` at batch size 100, durable and --in-memory, each as a ratio to the
#      wire ceiling measured in the same run.
#
# Writes bench/results/durability-YYYYMMDD-HHMMSS.json with every command, its JSON output and the
# machine, and prints the ratios. Usage: bench/durability.sh [--duration 10s] [--help]
# Run it on a quiet machine: a build in the background makes every sync many times slower.
set -euo pipefail

duration=10s
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

source "$(dirname "$0")/common.sh"
out="bench/results/durability-$stamp.json"
disk="$(df --output=source,fstype . | tail -n 1 | tr -s ' ')"
machine="$machine, data on $disk"

run disk "$bin" bench disk --data-dir . --json
for i in 1 2; do
    run local-durable "$bin" local --duration "$duration" --batch-size 100 --value-size 16 --json
    run local-in-memory "$bin" local --duration "$duration" --batch-size 100 --value-size 16 --in-memory --json
done
# With 4x the clients, closed-loop throughput depends less on latency (which a sync adds to).
run local-durable-8192 "$bin" local --duration "$duration" --batch-size 100 --value-size 16 --clients 8192 --json
run local-in-memory-8192 "$bin" local --duration "$duration" --batch-size 100 --value-size 16 --clients 8192 --in-memory --json
run acceptor-durable "$bin" bench acceptor --duration 5s --batch-size 100 --json
run acceptor-in-memory "$bin" bench acceptor --duration 5s --batch-size 100 --in-memory --json

python3 - "$machine" "$out" "${runs[@]}" <<'PY'
import json, sys
machine, path, runs = sys.argv[1], sys.argv[2], [json.loads(r) for r in sys.argv[3:]]
json.dump({"machine": machine, "runs": runs}, open(path, "w"), indent=2)
by = lambda label: [r["result"] for r in runs if r["label"] == label]
d = by("disk")[0]
print(f"machine: {machine}")
print(f"disk: {d['fdatasync_4k_per_sec']:.0f} fdatasync/s of 4 KiB writes (mean {d['sync_4k_mean_us']:.0f} us); "
      f"1 MiB synced writes {d['sync_write_1m_mb_per_sec']:.0f} MB/s")
durable, memory = by("local-durable"), by("local-in-memory")
for r in durable + memory:
    kind = "durable  " if r["durable"] else "in memory"
    extra = (f"; {r['acceptor_fsyncs_per_sec']:.0f} fsyncs/s per acceptor, {r['acceptor_records_per_fsync']:.1f} records per fsync"
             if r["durable"] else "")
    print(f"local {kind}: {r['cmds_per_sec']:>12,.0f} cmds/s  p50 {r['p50_us']} us  p99 {r['p99_us']} us{extra}")
mean = lambda rs: sum(r["cmds_per_sec"] for r in rs) / len(rs)
print(f"local durable / in-memory (2048 clients): {mean(durable) / mean(memory):.2f}")
d8, m8 = by("local-durable-8192")[0], by("local-in-memory-8192")[0]
print(f"local 8192 clients: durable {d8['cmds_per_sec']:,.0f} cmds/s (p50 {d8['p50_us']} us), "
      f"in memory {m8['cmds_per_sec']:,.0f} cmds/s (p50 {m8['p50_us']} us): {d8['cmds_per_sec'] / m8['cmds_per_sec']:.2f}")
for label in ["acceptor-durable", "acceptor-in-memory"]:
    r = by(label)[0]
    print(f"bench {label}: {r['msgs_per_sec']:,.0f} msgs/s, {r['ratio_to_ceiling']:.2f} of the wire ceiling")
PY
echo "wrote $out" >&2
