#!/usr/bin/env bash
# bench/peers.sh — autopaxos against its peers, on this one machine, each measured by the same tool.
#
# What it measures:
#   1. RESP (bench/resp_peers.py): `redis-benchmark -t set,get -d 16` (50 clients), pipelined
#      (-P 40) and not, against Redis with no persistence, Redis with `appendonly yes` and
#      `appendfsync always` (the durable, unreplicated anchor), and autopaxos's RESP gateway in front
#      of a local f=1 cluster, durable and --in-memory. Ratios: durable gateway / durable Redis (goal
#      >= 1.0) and durable gateway / Redis with no persistence (goal >= 0.5).
#   2. etcd — `etcdctl check perf` against a 3-member etcd cluster (three processes on loopback,
#      fsync to the local disk): a REPLICATED Raft key-value store. Its puts carry 1 KiB values, so
#      autopaxos is measured with the same value size:
#   3. autopaxos — `autopaxos local --duration 10s --batch-size 100 --value-size 1024
#      --state-machine kv --json`, whose last stdout line is one JSON object.
# All share the same 2-core box, so every number here is "clients + all replicas on one machine",
# not a distributed deployment.
#
# Caveats that the table also states:
#   * `etcdctl check perf` is a PASS/FAIL check, not a saturation benchmark: each --load is a
#     rate-limited open loop (s=150, m=1000, l=8000, xl=15000 writes/s; 50/200/500/1000 clients),
#     always 60 s, keys 256 B, values 1 KiB, and it prints no percentiles (only slowest request and
#     stddev). If it reaches >90% of its rate limit it says PASS and the figure is only a lower bound
#     on etcd's capacity. Default here is --etcd-load xl so the figure is etcd's capacity.
#   * Redis latencies are per request inside a 40-deep pipeline.
#
# Usage: bench/peers.sh [--quick] [--skip-etcd] [--etcd-load s|m|l|xl] [--help]
#   AUTOPAXOS=path  autopaxos binary (default: target/release/autopaxos under the repo root;
#                   built with `cargo build --release` if missing).
# Writes bench/results/peers-YYYYMMDD-HHMMSS.json. Exit status: 0 if every part produced its
# figures, 1 if any part (including autopaxos) failed; peers' figures are reported regardless.
# Servers listen on 127.0.0.1 only and are all stopped on exit (trap), success or failure.

set -euo pipefail

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
}

QUICK=0
SKIP_ETCD=0
ETCD_LOAD=xl
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --skip-etcd) SKIP_ETCD=1 ;;
        --etcd-load)
            [ $# -ge 2 ] || { echo "peers.sh: --etcd-load needs a value" >&2; exit 2; }
            ETCD_LOAD=$2
            shift
            ;;
        --etcd-load=*) ETCD_LOAD=${1#*=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "peers.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$ETCD_LOAD" in
    s | m | l | xl) ;;
    *) echo "peers.sh: --etcd-load must be s, m, l or xl" >&2; exit 2 ;;
esac

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
AUTOPAXOS=${AUTOPAXOS:-$REPO_ROOT/target/release/autopaxos}

if [ "$QUICK" = 1 ]; then
    REDIS_N=300000
    AP_DURATION=3s
else
    REDIS_N=2000000
    AP_DURATION=10s
fi

START_EPOCH=$(date +%s)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
# Percent of all CPUs busy over one second, from /proc/stat (a lagging load average is no use here).
cpu_busy_pct() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[1] - x[1]; i = y[2] - x[2]; printf "%.0f\n", (t > 0 ? 100 * (t - i) / t : 0) }'
}
CPU_BUSY_START=$(cpu_busy_pct)
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=$REPO_ROOT/bench/results
RESULT_FILE=$RESULTS_DIR/peers-$STAMP.json
WORK=$(mktemp -d "${TMPDIR:-/tmp}/autopaxos-peers.XXXXXX")

# ---------------------------------------------------------------- cleanup: every server we start
PIDS=()
CHILD=""
POLICY_RC_CREATED=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$? pid
    if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null || true; fi
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded wait, then force.
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$POLICY_RC_CREATED" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[peers] %s\n' "$*" >&2; }

# Every command whose output feeds a figure, as it was run (shell-quoted).
CMDS_FILE=$WORK/commands.txt
: >"$CMDS_FILE"
record_cmd() {
    local a q line=""
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then q=$a; else printf -v q '%q' "$a"; fi
        line+="${line:+ }$q"
    done
    printf '%s\n' "$line" >>"$CMDS_FILE"
}

# ---------------------------------------------------------------- 1. install what is missing
SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(sudo); fi
APT_UPDATED=0
apt_install() {
    # Installs Debian packages quietly. The redis-server and etcd-server packages ship init scripts:
    # a policy-rc.d that denies service starts keeps apt from launching system-wide daemons.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod +x /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        "${SUDO[@]}" apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "installing: $*"
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "$@" >"$WORK/apt.log" 2>&1; then
        cat "$WORK/apt.log" >&2
        log "apt-get install $* failed"
        exit 1
    fi
    if [ "$POLICY_RC_CREATED" = 1 ]; then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
}

NEED=()
command -v redis-server >/dev/null || NEED+=(redis-server)
command -v redis-benchmark >/dev/null || NEED+=(redis-tools)
if [ "$SKIP_ETCD" = 0 ]; then
    command -v etcd >/dev/null || NEED+=(etcd-server)
    command -v etcdctl >/dev/null || NEED+=(etcd-client)
fi
command -v python3 >/dev/null || NEED+=(python3)
if [ ${#NEED[@]} -gt 0 ]; then apt_install "${NEED[@]}"; fi

# ---------------------------------------------------------------- helpers
USED_PORTS=" "
free_port() {
    # A port nothing listens on right now (the kernel picks), distinct from ones handed out already.
    local p
    while :; do
        p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
        case "$USED_PORTS" in *" $p "*) continue ;; esac
        USED_PORTS="$USED_PORTS$p "
        echo "$p"
        return
    done
}

# Run a bounded load command in the background and wait for it, so that a signal to this script
# is handled at once (bash defers traps while a foreground child runs) and the EXIT trap can stop it.
run_waited() {
    local out=$1 err=$2 rc=0
    shift 2
    if [ "$out" = "$err" ]; then "$@" >"$out" 2>&1 & else "$@" >"$out" 2>"$err" & fi
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

OVERALL_RC=0
fail_part() {
    log "FAILED: $*"
    OVERALL_RC=1
}

# Figures (empty = unknown); exported to the JSON writer at the end.
# Figures of the RESP part come back as one JSON object (RESP_JSON).
ETCD_OPS="" ETCD_SLOWEST_S="" ETCD_STDDEV_S="" ETCD_VERDICT="" ETCD_STATUS="not run" ETCD_RAW=""
AP_OPS="" AP_P50_US="" AP_P99_US="" AP_JSON="" AP_STATUS="not run" AP_ERROR=""

# ---------------------------------------------------------------- 2. RESP: Redis and the gateway
RESP_JSON="" RESP_STATUS="not run"
run_resp() {
    local out=$WORK/resp.json
    local cmd=(python3 "$SCRIPT_DIR/resp_peers.py" --requests "$REDIS_N" --requests-unpipelined "$((REDIS_N / 20))" --out "$out")
    record_cmd "${cmd[@]}"
    log "resp: ${cmd[*]}"
    if AUTOPAXOS="$AUTOPAXOS" run_waited "$WORK/resp.txt" "$WORK/resp.err" "${cmd[@]}"; then
        RESP_STATUS="ok"
    else
        RESP_STATUS="failed: $(tail -n 3 "$WORK/resp.err" | tr '\n' ' ')"
        fail_part "resp: $RESP_STATUS"
    fi
    cat "$WORK/resp.txt" >&2
    if [ -s "$out" ]; then
        RESP_JSON=$(cat "$out")
        python3 - "$out" >>"$CMDS_FILE" <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["commands"]:
    print(c)
PY
    fi
}

# ---------------------------------------------------------------- 3. etcd (3 members)
run_etcd() {
    # --election-timeout 5000 (default 1000) only raises etcd's server-side request timeout
    # (5 s + 2 x election timeout = 15 s instead of 7 s). etcdctl 3.4's check perf deletes all of its
    # keys (~230k x 1 KiB after an l/xl run) in ONE request before it prints any figure; on this
    # machine that delete_range takes ~6.5 s to apply, so with the default it sometimes times out
    # and the run yields nothing. No member fails during the run, so elections never happen and the
    # steady-state write path is unchanged.
    local i cluster="" endpoints="" names=(m1 m2 m3) cports=() pports=()
    for i in 0 1 2; do
        cports+=("$(free_port)")
        pports+=("$(free_port)")
        cluster+="${cluster:+,}${names[$i]}=http://127.0.0.1:${pports[$i]}"
        endpoints+="${endpoints:+,}127.0.0.1:${cports[$i]}"
    done
    for i in 0 1 2; do
        local dir=$WORK/etcd/${names[$i]}
        mkdir -p "$dir"
        local member=(etcd --name "${names[$i]}" --data-dir "$dir/data"
            --listen-client-urls "http://127.0.0.1:${cports[$i]}"
            --advertise-client-urls "http://127.0.0.1:${cports[$i]}"
            --listen-peer-urls "http://127.0.0.1:${pports[$i]}"
            --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}"
            --initial-cluster "$cluster" --initial-cluster-token autopaxos-peers
            --initial-cluster-state new --heartbeat-interval 100 --election-timeout 5000
            --logger zap --log-outputs "$dir/etcd.log")
        record_cmd "${member[@]}"
        "${member[@]}" >"$dir/stdout.log" 2>&1 &
        PIDS+=($!)
    done
    local health=(etcdctl --endpoints="$endpoints" --dial-timeout=2s --command-timeout=3s endpoint health)
    record_cmd "${health[@]}"
    local ok=0 t
    for t in $(seq 1 30); do
        if "${health[@]}" >"$WORK/etcd/health.txt" 2>&1; then ok=1; break; fi
        sleep 1
    done
    if [ "$ok" = 0 ]; then
        ETCD_STATUS="etcd cluster not healthy within 30 s: $(tr '\n' ' ' <"$WORK/etcd/health.txt")"
        fail_part "$ETCD_STATUS"
        return
    fi
    log "etcd: 3 members healthy after ~${t} s ($endpoints)"
    local perf=(etcdctl --endpoints="$endpoints" check perf --load="$ETCD_LOAD")
    record_cmd timeout 180 "${perf[@]}"
    log "etcd: ${perf[*]}   (always 60 s)"
    local out=$WORK/etcd/perf.txt prc=0
    run_waited "$out" "$out" timeout 180 "${perf[@]}" || prc=$?
    # Drop the progress bar (carriage-return redraws) and keep the verdict lines.
    ETCD_RAW=$(tr '\r' '\n' <"$out" | grep -Ev 'Boo*m|^ *[0-9]+ / [0-9]+' | sed '/^[[:space:]]*$/d' || true)
    local parsed
    if ! parsed=$(python3 - "$out" <<'PY'
import re, sys
t = open(sys.argv[1], errors="replace").read().replace("\r", "\n")
m = re.search(r"Throughput (?:is|too low:) (\d+) writes/s", t)
if not m:
    sys.exit(1)
slow = re.search(r"Slowest request took(?: too long:)? ([0-9.]+)s", t)
sd = re.search(r"Stddev (?:is|too high:) ([0-9.]+)s", t)
lines = [l.strip() for l in t.splitlines() if l.strip() in ("PASS", "FAIL")]
print(m.group(1), slow.group(1) if slow else "-", sd.group(1) if sd else "-", lines[-1] if lines else "-")
PY
    ); then
        ETCD_STATUS="check perf produced no throughput figure (exit $prc): $(printf '%s' "$ETCD_RAW" | tail -n 1)"
        fail_part "$ETCD_STATUS"
        log "etcd: last warnings from the members' logs:"
        grep -h '"level":"warn"' "$WORK"/etcd/m?/etcd.log | tail -n 4 | cut -c1-300 >&2 || true
        return
    fi
    read -r ETCD_OPS ETCD_SLOWEST_S ETCD_STDDEV_S ETCD_VERDICT <<<"$parsed"
    [ "$ETCD_SLOWEST_S" = "-" ] && ETCD_SLOWEST_S=""
    [ "$ETCD_STDDEV_S" = "-" ] && ETCD_STDDEV_S=""
    [ "$ETCD_VERDICT" = "-" ] && ETCD_VERDICT=""
    ETCD_STATUS="ok"
    log "etcd: $ETCD_OPS writes/s, slowest ${ETCD_SLOWEST_S}s, stddev ${ETCD_STDDEV_S}s, check perf said ${ETCD_VERDICT:-nothing}"
}

# ---------------------------------------------------------------- 4. autopaxos
run_autopaxos() {
    if [ ! -x "$AUTOPAXOS" ]; then
        if [ "$AUTOPAXOS" = "$REPO_ROOT/target/release/autopaxos" ]; then
            log "autopaxos: $AUTOPAXOS missing; cargo build --release"
            record_cmd cargo build --release --quiet
            if ! (cd "$REPO_ROOT" && cargo build --release --quiet); then
                AP_STATUS="cargo build --release failed"
                AP_ERROR=$AP_STATUS
                fail_part "autopaxos: $AP_STATUS"
                return
            fi
        else
            AP_STATUS="AUTOPAXOS=$AUTOPAXOS is not an executable"
            AP_ERROR=$AP_STATUS
            fail_part "autopaxos: $AP_STATUS"
            return
        fi
    fi
    local dur_s=${AP_DURATION%s}
    local cmd=("$AUTOPAXOS" local --duration "$AP_DURATION" --batch-size 100 --value-size 1024
        --state-machine kv --json)
    record_cmd timeout "$((dur_s + 120))" "${cmd[@]}"
    log "autopaxos: ${cmd[*]}"
    local out=$WORK/autopaxos.out err=$WORK/autopaxos.err arc=0
    run_waited "$out" "$err" timeout "$((dur_s + 120))" "${cmd[@]}" || arc=$?
    if [ "$arc" != 0 ]; then
        AP_ERROR=$(tail -n 5 "$err" "$out" 2>/dev/null | grep -v '^==>' | sed '/^$/d' | tr '\n' ' ')
        if [ "$arc" = 124 ]; then
            AP_STATUS="timed out after $((dur_s + 120)) s"
        else
            AP_STATUS="exited $arc"
        fi
        fail_part "autopaxos run ${AP_STATUS}: ${AP_ERROR}"
        return
    fi
    local last parsed
    last=$(sed '/^[[:space:]]*$/d' "$out" | tail -n 1)
    if ! parsed=$(printf '%s' "$last" | python3 -c '
import json, sys
o = json.loads(sys.stdin.read())
missing = [k for k in ("cmds_per_sec", "p50_us", "p99_us", "batch_size", "clients", "duration_s") if k not in o]
if missing:
    sys.exit("missing keys: " + ", ".join(missing))
print(float(o["cmds_per_sec"]), o["p50_us"], o["p99_us"])
' 2>"$WORK/ap.parse.err"); then
        AP_STATUS="last stdout line is not the expected JSON object"
        AP_ERROR="$(tail -n 1 "$WORK/ap.parse.err"); last line: ${last:0:300}"
        fail_part "autopaxos: $AP_STATUS ($AP_ERROR)"
        return
    fi
    AP_JSON=$last
    read -r AP_OPS AP_P50_US AP_P99_US <<<"$parsed"
    AP_STATUS="ok"
    log "autopaxos: $AP_OPS cmds/s, p50 ${AP_P50_US} us, p99 ${AP_P99_US} us"
}

# autopaxos first: it builds the binary if missing, which the RESP part runs too.
run_autopaxos
run_resp
if [ "$SKIP_ETCD" = 0 ]; then run_etcd; else ETCD_STATUS="skipped (--skip-etcd)"; fi

# ---------------------------------------------------------------- 5. table + JSON
ver() { "$@" 2>&1 | head -n 1 || true; }
mkdir -p "$RESULTS_DIR"

export QUICK SKIP_ETCD ETCD_LOAD REDIS_N AP_DURATION STAMP START_EPOCH END_EPOCH RESULT_FILE CMDS_FILE
export RESP_JSON RESP_STATUS
export ETCD_OPS ETCD_SLOWEST_S ETCD_STDDEV_S ETCD_VERDICT ETCD_STATUS ETCD_RAW
export AP_OPS AP_P50_US AP_P99_US AP_JSON AP_STATUS AP_ERROR AUTOPAXOS
V_REDIS=$(ver redis-server --version)
V_REDIS_BENCH=$(ver redis-benchmark --version)
V_ETCD="" V_ETCDCTL="" V_AUTOPAXOS="" V_RUSTC=""
if command -v etcd >/dev/null; then V_ETCD=$(ver etcd --version); fi
if command -v etcdctl >/dev/null; then V_ETCDCTL=$(ver etcdctl version); fi
if [ -x "$AUTOPAXOS" ]; then V_AUTOPAXOS=$(ver "$AUTOPAXOS" --version); fi
if command -v rustc >/dev/null; then V_RUSTC=$(ver rustc --version); fi
M_NPROC=$(nproc)
M_MODEL=$(grep -m1 'model name' /proc/cpuinfo | sed 's/^[^:]*: *//' || echo unknown)
M_KERNEL=$(uname -srm)
M_TMPFS=$(df -PT "$WORK" | awk 'NR==2 {print $2}')
END_EPOCH=$(date +%s)
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
export LOADAVG_START LOADAVG_END CPU_BUSY_START
export V_REDIS V_REDIS_BENCH V_ETCD V_ETCDCTL V_AUTOPAXOS V_RUSTC M_NPROC M_MODEL M_KERNEL M_TMPFS

python3 - <<'PY'
import json, os
e = os.environ
def num(k):
    v = e.get(k, "")
    try:
        return float(v) if v not in ("", "-") else None
    except ValueError:
        return None
etcd, ap = num("ETCD_OPS"), num("AP_OPS")
resp = json.loads(e["RESP_JSON"]) if e.get("RESP_JSON") else None
ap_obj = None
if e.get("AP_JSON"):
    ap_obj = json.loads(e["AP_JSON"])
load_limits = {"s": 150, "m": 1000, "l": 8000, "xl": 15000}
etcd_limit = load_limits[e["ETCD_LOAD"]]
etcd_capped = etcd is not None and etcd > 0.9 * etcd_limit
res = {
    "benchmark": "peers",
    "timestamp": e["STAMP"],
    "quick": e["QUICK"] == "1",
    "runtime_s": int(e["END_EPOCH"]) - int(e["START_EPOCH"]),
    "machine": {"nproc": int(e["M_NPROC"]), "cpu_model": e["M_MODEL"], "kernel": e["M_KERNEL"],
                "scratch_fs": e["M_TMPFS"],
                "cpu_busy_pct_before_start": float(e["CPU_BUSY_START"]),
                "loadavg_1_5_15_start": [float(x) for x in e["LOADAVG_START"].split()],
                "loadavg_1_5_15_end": [float(x) for x in e["LOADAVG_END"].split()]},
    "versions": {"redis-server": e["V_REDIS"], "redis-benchmark": e["V_REDIS_BENCH"],
                 "etcd": e["V_ETCD"] or None, "etcdctl": e["V_ETCDCTL"] or None,
                 "autopaxos": e["V_AUTOPAXOS"] or None, "rustc": e["V_RUSTC"] or None},
    "commands": [l for l in open(e["CMDS_FILE"]).read().splitlines() if l],
    "resp": {"status": e["RESP_STATUS"], "requests_pipelined": int(e["REDIS_N"]), "value_bytes": 16,
             "clients": 50, "figures": resp},
    "etcd": {"status": e["ETCD_STATUS"], "members": 3, "load": e["ETCD_LOAD"],
             "load_rate_limit_writes_per_sec": etcd_limit,
             "throughput_is_lower_bound": etcd_capped,
             "writes_per_sec": etcd, "slowest_s": num("ETCD_SLOWEST_S"), "stddev_s": num("ETCD_STDDEV_S"),
             "p50": None, "p99": None, "key_bytes": 256, "value_bytes": 1024, "duration_s": 60,
             "check_perf_verdict": e["ETCD_VERDICT"] or None, "raw_output": e["ETCD_RAW"] or None},
    "autopaxos": {"status": e["AP_STATUS"], "binary": e["AUTOPAXOS"], "duration": e["AP_DURATION"],
                  "cmds_per_sec": ap, "p50_us": num("AP_P50_US"), "p99_us": num("AP_P99_US"),
                  "error": e["AP_ERROR"] or None, "json": ap_obj},
    "ratios": {"autopaxos_over_etcd_1KiB": ap / etcd if ap and etcd else None,
               **((resp or {}).get("ratios") or {})},
}
with open(e["RESULT_FILE"], "w") as f:
    json.dump(res, f, indent=2)
    f.write("\n")

def fmt_ops(v):
    return f"{v:,.0f}" if v is not None else "-"
def fmt_us(v):
    return f"{v:,.0f} us" if v is not None else "-"
rows = []
if e["SKIP_ETCD"] == "1":
    rows.append(("etcd (3 members, Raft)", "-", "-", "-", "skipped"))
else:
    note = e["ETCD_STATUS"]
    if etcd is not None:
        note = (f"check perf --load={e['ETCD_LOAD']}: {e['ETCD_VERDICT'] or '?'}; put 1 KiB; "
                f"slowest {e['ETCD_SLOWEST_S'] or '?'} s, stddev {e['ETCD_STDDEV_S'] or '?'} s")
        if etcd_capped:
            note += f"; RATE-LIMITED at {etcd_limit}/s (lower bound)"
    rows.append(("etcd (3 members, Raft)", (">= " if etcd_capped else "") + fmt_ops(etcd), "n/a", "n/a", note))
ap_note = "kv, batch 100, 1 KiB values (as etcd's)" if ap is not None else f"FAILED: {e['AP_STATUS']}"
rows.append(("autopaxos local", fmt_ops(ap), fmt_us(num("AP_P50_US")), fmt_us(num("AP_P99_US")), ap_note))
hdr = ("system", "ops/s", "p50", "p99", "notes")
w = [max(len(r[i]) for r in rows + [hdr]) for i in range(4)]
line = lambda r: "  ".join([r[0].ljust(w[0]), r[1].rjust(w[1]), r[2].rjust(w[2]), r[3].rjust(w[3]), r[4]])
print()
print(line(hdr))
print(line(tuple("-" * x for x in w) + ("-----",)))
for r in rows:
    print(line(r))
print()
re_ = res["ratios"]["autopaxos_over_etcd_1KiB"]
print("autopaxos / etcd (1 KiB values both):  " + (f"{re_:.3f}x" if re_ is not None else "n/a")
      + (" (etcd figure is a lower bound)" if re_ is not None and etcd_capped else ""))
if ap is None:
    detail = e["AP_ERROR"] if e["AP_ERROR"] and e["AP_ERROR"] != e["AP_STATUS"] else ""
    print(f"\nautopaxos did not produce a result: {e['AP_STATUS']}" + (f": {detail}" if detail else ""))
busy = float(e["CPU_BUSY_START"])
if busy > 20:
    print(f"\nWARNING: the CPUs were {busy:.0f}% busy in the second before this started: "
          "something else was running, so the figures above may be depressed by contention.")
print(f"\nresults: {e['RESULT_FILE']}  (run time {res['runtime_s']} s)")
PY

exit "$OVERALL_RC"
