#!/usr/bin/env bash
# bench/histograms.sh: what the latency histograms in /metrics cost `autopaxos local`, measured in
# one run on one machine. Every run serves /metrics (scraped once a second, as a close Prometheus
# would) and differs only in AUTOPAXOS_HISTOGRAMS: `off` records no histogram, unset records every
# one (client command latency per command, role stages per batch or slot, fsync per sync). Runs
# alternate (off, on, off, on, ...) so that drift on a shared machine hits both alike; a last pair
# without any metrics shows what the exporter and counters cost on top.
#
# Writes bench/results/histograms-YYYYMMDD-HHMMSS.json with every command, its JSON output and the
# machine, and prints each pair's ratio and the ratio of the means.
# Usage: bench/histograms.sh [--duration 8s] [--pairs 5]
set -euo pipefail

duration=8s
pairs=5
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --pairs) pairs="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

source "$(dirname "$0")/common.sh"
out="bench/results/histograms-$stamp.json"
port=16990
last_scrape="$(mktemp)"
trap 'rm -f "$last_scrape"' EXIT

run() { # run LABEL HISTOGRAMS(on|off|none): one `local`, scraped every second while it runs
    local label="$1" mode="$2"
    local args=(local --duration "$duration" --batch-size 100 --value-size 16 --json)
    [ "$mode" != none ] && args+=(--metrics-addr "127.0.0.1:$port")
    echo "== AUTOPAXOS_HISTOGRAMS=$mode $bin ${args[*]}" >&2
    local tmp
    tmp="$(mktemp)"
    if [ "$mode" = off ]; then
        AUTOPAXOS_HISTOGRAMS=off "$bin" "${args[@]}" > "$tmp" &
    else
        "$bin" "${args[@]}" > "$tmp" &
    fi
    local pid=$! scrapes=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if [ "$mode" != none ] && python3 - "$port" "$last_scrape" <<'PY' 2>/dev/null; then scrapes=$((scrapes + 1)); fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
if data.startswith(b"HTTP/1.1 200"):
    open(sys.argv[2], "wb").write(data.split(b"\r\n\r\n", 1)[1])
sys.exit(0 if data.startswith(b"HTTP/1.1 200") else 1)
PY
    done
    wait "$pid"
    local line
    line="$(tail -n 1 "$tmp")"
    rm -f "$tmp"
    runs+=("$(python3 -c 'import json,sys; print(json.dumps({"label": sys.argv[1], "histograms": sys.argv[2], "scrapes": int(sys.argv[3]), "result": json.loads(sys.argv[4])}))' "$label" "$mode" "$scrapes" "$line")")
}

for i in $(seq "$pairs"); do
    run "off-$i" off
    run "on-$i" on
done
run none none
run on-last on
# What one observation costs, on its own (a loop of 50 million).
cost_line="$(cargo test --release --lib record_cost -- --ignored --nocapture 2>/dev/null | grep 'histogram record:')"

python3 - "$machine" "$out" "$last_scrape" "$cost_line" "${runs[@]}" <<'PY'
import json, re, sys, statistics
machine, path, scrape, cost_line = sys.argv[1:5]
runs = [json.loads(r) for r in sys.argv[5:]]
# Observations per client command, from the last scrape of the last run.
observations = commands = 0.0
for line in open(scrape):
    if not line.strip() or line.startswith("#"):
        continue
    name = line.split("{")[0].split(" ")[0]
    value = float(line.rsplit(" ", 1)[1])
    if name.endswith("_seconds_count"):
        observations += value
    if name == "autopaxos_commands_in_total" and 'role="client"' in line:
        commands += value
ns = float(re.search(r"([0-9.]+) ns per observation", cost_line).group(1))
per_command = observations / commands if commands else float("nan")
json.dump({"machine": machine, "runs": runs, "record_ns": ns, "observations_per_command": per_command},
          open(path, "w"), indent=2)
print(f"machine: {machine}")
for r in runs:
    x = r["result"]
    print(f"{r['label']:8} histograms {r['histograms']:4}: {x['cmds_per_sec']:>10,.0f} cmds/s  p50 {x['p50_us']} us  "
          f"p99 {x['p99_us']} us  ({r['scrapes']} scrapes)")
off = [r["result"]["cmds_per_sec"] for r in runs if r["label"].startswith("off-")]
on = [r["result"]["cmds_per_sec"] for r in runs if r["label"].startswith("on-") and r["label"] != "on-last"]
ratios = [b / a for a, b in zip(off, on)]
print("pairs, on / off: " + ", ".join(f"{x:.3f}" for x in ratios))
print(f"mean on / mean off: {statistics.mean(on) / statistics.mean(off):.3f}   "
      f"median pair ratio: {statistics.median(ratios):.3f}")
none = [r["result"]["cmds_per_sec"] for r in runs if r["label"] == "none"][0]
last = [r["result"]["cmds_per_sec"] for r in runs if r["label"] == "on-last"][0]
print(f"everything on (exporter, counters, histograms) / no metrics at all: {last / none:.3f}")
cpu = last * per_command * ns / 1e9
print(f"{cost_line.strip()}; {per_command:.3f} observations per command: at {last:,.0f} cmds/s that is "
      f"{cpu * 1e3:.2f} ms of CPU per second ({cpu * 100:.2f}% of one core)")
PY
echo "wrote $out" >&2
