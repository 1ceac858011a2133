#!/usr/bin/env python3
"""bench/pause_unbatcher.py: the load while one of two unbatchers is paused (SIGSTOP).

Runs the f=1 cluster of bench/teaching.py (one process per node, loopback, durable) with a second
unbatcher (node 11), under `autopaxos client` (--clients, default 128). After 12 s of load unbatcher
10 is SIGSTOPped for 10 s, then resumed. Each run prints the load's commands/s per second and the
mean and lowest second of the pause against the mean of seconds 5-11; every run goes to
bench/results/pause-unbatcher-YYYYMMDD-HHMMSS.json with the machine.

Usage: bench/pause_unbatcher.py [--runs 3] [--clients 128]
(AUTOPAXOS=path/to/binary picks the binary, as for teaching.py.)
"""
import argparse, os, signal, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import teaching as T  # noqa: E402  (the cluster and the client's progress lines)

T.ROLES = T.ROLES + [(11, "unbatcher", None)]


def one_run(clients):
    c = T.Cluster("")
    try:
        T.start_all(c)
        load, err = c.client(40, clients=clients)
        time.sleep(12)
        os.kill(c.procs[10].pid, signal.SIGSTOP)
        time.sleep(10)
        os.kill(c.procs[10].pid, signal.SIGCONT)
        time.sleep(8)
        load.kill()
        return T.progress(err)
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=128)
    args = ap.parse_args()
    runs = []
    for i in range(args.runs):
        rate = dict(one_run(args.clients))
        steady = statistics.mean(v for t, v in rate.items() if 5 <= t <= 11)
        paused = [v for t, v in rate.items() if 13 <= t <= 21]
        run = {"per_second": sorted(rate.items()), "steady": steady,
               "paused_mean_of_steady": statistics.mean(paused) / steady,
               "paused_lowest_of_steady": min(paused) / steady}
        runs.append(run)
        print(f"run {i + 1}: steady {steady:,.0f} cmds/s; paused seconds 13-21: mean "
              f"{run['paused_mean_of_steady']:.2f}, lowest {run['paused_lowest_of_steady']:.2f} of steady; "
              "seconds 10-24: " + " ".join(f"{v:,.0f}" for t, v in sorted(rate.items()) if 10 <= t <= 24),
              flush=True)
    T.write_result("pause-unbatcher", {"command": " ".join(sys.argv), "clients": args.clients, "runs": runs})


if __name__ == "__main__":
    main()
