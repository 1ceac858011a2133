#!/usr/bin/env bash
# bench/jepsen.sh: the long run of the Jepsen-style harness (`autopaxos jepsen`): a cluster of 12
# processes on loopback (f=1, durable, two RESP gateways), 8 clients reading, writing and
# compare-and-setting over RESP, and every nemesis (SIGKILL + restart, SIGSTOP/SIGCONT, partitions
# through the harness's proxies, mixes) for --duration (default 10 minutes), then 10 s of recovery;
# the whole history is checked for linearizability, key by key.
#
# Usage: bench/jepsen.sh [--duration 600s] [--seed N] [--help]
#   AUTOPAXOS=path  the binary (default target/release/autopaxos; built if missing)
# Writes bench/results/jepsen-YYYYMMDD-HHMMSS.{txt,json} (the report, the machine, the command).
# Exit status: the harness's (1 if the history is not linearizable or the cluster did not serve again).
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;; esac
duration=600s
seed=()
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift ;;
        --seed) seed=(--seed "$2"); shift ;;
        *) echo "jepsen.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${AUTOPAXOS:-$root/target/release/autopaxos}
[ -x "$bin" ] || (cd "$root" && cargo build --release)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
machine="$(nproc) cores, $cpu, Linux $(uname -r)"
stamp=$(date +%Y%m%d-%H%M%S)
out=$root/bench/results/jepsen-$stamp
cmd=("$bin" jepsen --duration "$duration" --recovery 10s "${seed[@]}" --json)
echo "machine: $machine" | tee "$out.txt"
echo "command: ${cmd[*]}" | tee -a "$out.txt"
status=0
"${cmd[@]}" > "$out.out" 2> "$out.err" || status=$?
{ grep -v '^{' "$out.out" || true; } | tee -a "$out.txt"
tail -1 "$out.out" | python3 -c '
import json, sys
report = json.loads(sys.stdin.read())
report["machine"], report["command"] = sys.argv[1], sys.argv[2]
json.dump(report, open(sys.argv[3], "w"), indent=1)
' "$machine" "${cmd[*]}" "$out.json" || echo "no JSON report (see $out.err)"
rm -f "$out.out"
if [ "$status" = 0 ]; then rm -f "$out.err"; else echo "jepsen.sh: the harness failed (exit $status); its log: $out.err" >&2; fi
exit "$status"
