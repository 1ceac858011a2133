#!/usr/bin/env python3
"""bench/snapshot_stall.py: the load while replicas with a big state write their snapshots.

Runs the f=1 cluster of bench/teaching.py (one process per node, loopback, durable) under
`autopaxos client` (--clients, default 64) writing values of --value-size bytes (default 4096) to
its 100,000 keys, so the replicas' state grows to hundreds of megabytes, and a snapshot every
--snapshot-interval slots (default 5,000: `replica_snapshot_interval_slots`) is big. (--verify: a
verifying client instead, whose small distinct writes grow the state slowly.) Prints the load's
commands/s per second, the median and lowest second once the state is big (from second 15), how
many seconds fell under a quarter of the median, each replica's snapshots with how long each took
to write (from the replicas' logs, for binaries that log it), and any verification. Every run goes
to bench/results/snapshot-stall-YYYYMMDD-HHMMSS.json with the machine.

Usage: bench/snapshot_stall.py [--runs 1] [--seconds 45] [--clients 64] [--value-size 4096]
                              [--snapshot-interval 5000] [--verify]
(AUTOPAXOS=path/to/binary picks the binary, as for teaching.py.)
"""
import argparse, glob, os, re, statistics, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import teaching as T  # noqa: E402  (the cluster and the client's progress lines)


def snapshots_logged(cluster):
    """(replica, slot, bytes, seconds) of every "snapshot saved" line in the replicas' logs."""
    found = []
    for id in (7, 8):
        for path in sorted(glob.glob(os.path.join(cluster.dir, f"node{id}-run*.err"))):
            for line in open(path, errors="replace"):
                m = re.search(r"snapshot saved in ([\d.]+)s.*slot=(\d+).*bytes=(\d+)", line)
                if m:
                    found.append((id, int(m.group(2)), int(m.group(3)), float(m.group(1))))
    return found


def one_run(seconds, clients, value_size, verify, interval):
    c = T.Cluster(f"replica_snapshot_interval_slots = {interval}")
    try:
        T.start_all(c)
        load, err = c.client(seconds, clients=clients, value_size=value_size, verify=verify)
        out, _ = load.communicate(timeout=seconds + 300)
        rates = T.progress(err)
        checked = [l.strip() for l in open(err).read().replace("\r", "\n").splitlines() if "verif" in l]
        return rates, snapshots_logged(c), load.returncode, checked
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=45)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--value-size", type=int, default=4096)
    ap.add_argument("--snapshot-interval", type=int, default=5000)
    ap.add_argument("--verify", action="store_true")
    args = ap.parse_args()
    runs = []
    for i in range(args.runs):
        rates, snaps, rc, verify = one_run(args.seconds, args.clients, args.value_size, args.verify, args.snapshot_interval)
        late = [v for t, v in rates if t >= 15]
        median = statistics.median(late) if late else 0.0
        run = {"per_second": rates, "median_from_15s": median,
               "lowest_from_15s_of_median": min(late) / median if median else None,
               "seconds_under_quarter_of_median": sum(1 for v in late if v < median / 4),
               "snapshots": [{"replica": r, "slot": s, "bytes": b, "seconds": t} for r, s, b, t in snaps],
               "client_exit": rc, "verification": verify}
        runs.append(run)
        print(f"run {i + 1}: median {median:,.0f} cmds/s from 15 s; lowest second "
              f"{run['lowest_from_15s_of_median'] or 0:.2f} of it; {run['seconds_under_quarter_of_median']} "
              f"seconds under a quarter; client exit {rc}", flush=True)
        print("  per second: " + " ".join(f"{v:,.0f}" for _, v in rates), flush=True)
        for r, s, b, t in snaps:
            print(f"  replica {r}: snapshot at slot {s}, {b / 2**20:,.0f} MiB, written in {t:.2f} s")
        for line in verify:
            print(f"  {line}")
    T.write_result("snapshot-stall", {"command": " ".join(sys.argv), "binary": T.BIN, "runs": runs})


if __name__ == "__main__":
    main()
