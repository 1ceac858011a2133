# bench/common.sh: what every bench script does before measuring; sourced after its arguments are
# parsed. Moves to the repository's root and sets
#   bin      the binary: $AUTOPAXOS, else target/release/autopaxos (built if missing)
#   stamp    the UTC time, for result file names under bench/results/ (created)
#   machine  cores, CPU model and kernel, recorded with every result
# and defines `run LABEL CMD...`, which runs CMD and appends {label, command, result: its last
# output line, a --json object} to the array `runs`.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin="${AUTOPAXOS:-target/release/autopaxos}"
[ -x "$bin" ] || cargo build --release
mkdir -p bench/results
stamp="$(date -u +%Y%m%d-%H%M%S)"
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), Linux $(uname -r)"

runs=()
run() {
    local label="$1"; shift
    echo "== $*" >&2
    local line
    line="$("$@" | tail -n 1)"
    runs+=("$(python3 -c 'import json,sys; print(json.dumps({"label": sys.argv[1], "command": sys.argv[2], "result": json.loads(sys.argv[3])}))' "$label" "$*" "$line")")
}
