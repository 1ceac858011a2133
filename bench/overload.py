#!/usr/bin/env python3
"""Overload (issue 14): open-loop load at 1x, 2x and 4x the cluster's measured capacity.

Runs `autopaxos local` (the whole f=1 cluster in one process, loopback TCP, in memory):
  1. capacity: closed-loop runs (`--clients 8192`); the median goodput is the capacity;
  2. for each multiple m of 1, 2, 4: open-loop runs offering m x capacity (`--rate`), with
     `--clients 16384` sessions (more than the leader's window, its queue and a batcher's held
     batches hold, about 13,000 commands, so that the cluster must shed; few enough that what is
     admitted is served well within the clients' 0.2 s retry timeout).
Each point is run --repeat times (the machine is shared and noisy); the table shows the median run.
Reports per run: goodput (acknowledged commands/s) and its ratio to the capacity (goal >= 0.9),
p50/p99 latency of accepted requests, busy replies/s, arrivals refused at the client (every session
busy), and the process's VmRSS sampled every second (every node of the cluster lives in it).

The leader's window is `--max-in-flight-slots 50` (50 batches of 100 commands). With the default
1000, the queues alone hold about 0.4 s of work at this machine's capacity, twice the clients'
retry timeout, and each slot would take longer than the leader's 50 ms resend timeout: latency
would be bound by timeouts, and re-proposals and retried duplicates would eat the capacity. At 100
this still happened in one run of nine (a stall at 4x); at 50 a slot's round trip stays about
20 ms.

Usage: bench/overload.py [--duration 8s] [--repeat 3] [--sessions 16384] [--binary target/release/autopaxos]
Writes bench/results/overload-<date>.{txt,json}.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
COMMON = ["--in-memory", "--batch-size", "100", "--value-size", "16"]
WINDOW = ["--max-in-flight-slots", "50"]  # --window replaces it


def run(binary, duration, extra):
    cmd = [binary, "local", "--duration", duration, "--json"] + COMMON + WINDOW + extra
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    lines = out.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    report["command"] = " ".join(["autopaxos"] + cmd[1:])
    report["summary"] = "\n".join(lines[:-1])
    return report


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def machine():
    model = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout
    return {
        "cpu": model.split(":", 1)[-1].strip(),
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "load_average_at_start": os.getloadavg(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="8s")
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "target", "release", "autopaxos"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=16384, help="open-loop client sessions")
    ap.add_argument("--window", type=int, default=50, help="the leader's window (--max-in-flight-slots)")
    args = ap.parse_args()
    WINDOW[1] = str(args.window)

    result = {"machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    lines = [f"machine: {result['machine']}"]
    capacity_runs = [run(args.binary, args.duration, ["--clients", "8192"]) for _ in range(args.repeat)]
    capacity = median([r["cmds_per_sec"] for r in capacity_runs])
    result["capacity_runs"] = capacity_runs
    result["capacity_cmds_per_sec"] = capacity
    for r in capacity_runs:
        lines += [f"$ {r['command']}", r["summary"], ""]
    each = ", ".join("{:,.0f}".format(r["cmds_per_sec"]) for r in capacity_runs)
    lines.append(f"capacity (median closed-loop goodput of {args.repeat}): {capacity:,.0f} cmds/s (runs: {each})\n")

    result["open_loop"] = []
    table = ["| offered | goodput | / capacity | p50 accepted | p99 accepted | busy replies/s | refused at client/s | VmRSS min–max (MiB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in (1, 2, 4):
        rate = int(m * capacity)
        runs = []
        for _ in range(args.repeat):
            r = run(args.binary, args.duration, ["--clients", str(args.sessions), "--rate", str(rate)])
            r["multiple"] = m
            r["goodput_ratio"] = r["cmds_per_sec"] / capacity
            result["open_loop"].append(r)
            lines += [f"$ {r['command']}", r["summary"], ""]
            runs.append(r)
        runs.sort(key=lambda r: r["cmds_per_sec"])
        r = runs[len(runs) // 2]
        ratios = ", ".join("{:.2f}".format(x["goodput_ratio"]) for x in runs)
        lines.append(f"{m}x: goodput ratios of the runs: {ratios}\n")
        rss = r["rss_kib"]
        table.append(
            f"| {m}x ({r['offered_per_sec']:,.0f}/s) | {r['cmds_per_sec']:,.0f}/s | **{r['goodput_ratio']:.2f}** "
            f"| {r['p50_us'] / 1000:.0f} ms | {r['p99_us'] / 1000:.0f} ms | {r['busy_per_sec']:,.0f} "
            f"| {r['refused_at_client_per_sec']:,.0f} | {min(rss) / 1024:.0f}–{max(rss) / 1024:.0f} |"
        )
    lines += table
    text = "\n".join(lines)
    print(text)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(HERE, "results", f"overload-{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(base + ".txt", "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {base}.json and {base}.txt")


if __name__ == "__main__":
    main()
