#!/usr/bin/env python3
"""autopaxos's RESP gateway against Redis, measured by the same tool in one run (issue 13).

One `redis-benchmark -t set,get -d 16` (50 clients), pipelined (-P 40) and not (-P 1), against:
  redis          redis-server with no persistence (--save "" --appendonly no): the unreplicated,
                 in-memory upper bound on this machine;
  redis-aof      redis-server --appendonly yes --appendfsync always: the durable, unreplicated anchor
                 (every write fsynced before its reply);
  autopaxos      `autopaxos local --resp-addr` (f=1: 3 acceptors, 2 replicas, all durable, fsync
                 before every vote), the gateway in front;
  autopaxos-mem  the same with --in-memory (not crash-safe).
Everything shares this machine's cores and disk; each server is started alone, measured, stopped.
Prints every figure and the ratios the issue sets goals for: durable gateway / durable Redis (goal
>= 1.0) and durable gateway / Redis with no persistence (goal >= 0.5).

Usage: bench/resp_peers.py [--requests N] [--requests-unpipelined N] [--out FILE.json]
  AUTOPAXOS=path  the binary (default target/release/autopaxos)
"""

import argparse
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ping(port, limit=30.0, write=False):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            cmd = ["redis-cli", "-p", str(port)] + (["SET", "warmup", "1"] if write else ["PING"])
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
            if out.strip() in ("PONG", "OK"):
                return True
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.2)
    return False


def bench(port, pipeline, requests):
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-d", "16",
           "-c", "50", "-P", str(pipeline), "-n", str(requests), "-q", "--csv"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    rows = {r["test"]: r for r in csv.DictReader(io.StringIO(out.stdout))}
    figures = {}
    for test in ("SET", "GET"):
        r = rows[test]
        figures[test.lower()] = {"ops_per_sec": float(r["rps"]), "p50_ms": float(r["p50_latency_ms"]),
                                 "p99_ms": float(r["p99_latency_ms"])}
    return " ".join(cmd), figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2_000_000, help="requests per test with -P 40")
    ap.add_argument("--requests-unpipelined", type=int, default=100_000, help="requests per test with -P 1")
    ap.add_argument("--out", help="also write the figures here (JSON)")
    args = ap.parse_args()
    binary = os.environ.get("AUTOPAXOS", os.path.join(ROOT, "target/release/autopaxos"))
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"resp_peers: {tool} is missing (apt-get install redis-server redis-tools)")
    # On the disk the repository is on (not a tmpfs), for both durable systems alike.
    work = tempfile.mkdtemp(prefix="autopaxos-resp-peers-", dir=os.environ.get("TMPDIR", "/tmp"))
    targets = [
        ("redis", lambda p, d: ["redis-server", "--bind", "127.0.0.1", "--port", str(p), "--save", "",
                                "--appendonly", "no", "--dir", d, "--logfile", os.path.join(d, "log")]),
        ("redis-aof", lambda p, d: ["redis-server", "--bind", "127.0.0.1", "--port", str(p), "--save", "",
                                    "--appendonly", "yes", "--appendfsync", "always", "--dir", d,
                                    "--logfile", os.path.join(d, "log")]),
        ("autopaxos", lambda p, d: [binary, "local", "--resp-addr", f"127.0.0.1:{p}", "--data-dir", d]),
        ("autopaxos-mem", lambda p, d: [binary, "local", "--resp-addr", f"127.0.0.1:{p}", "--in-memory"]),
    ]
    results = {"machine": {}, "commands": [], "systems": {}}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    results["machine"] = {"nproc": os.cpu_count(), "cpu_model": cpu, "kernel": os.uname().release,
                          "redis": subprocess.run(["redis-server", "--version"], capture_output=True,
                                                  text=True).stdout.strip()}
    try:
        for name, command in targets:
            port = free_port()
            data = os.path.join(work, name)
            os.makedirs(data, exist_ok=True)
            cmd = command(port, data)
            results["commands"].append(" ".join(cmd))
            log = open(os.path.join(work, name + ".log"), "w")
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                if not wait_ping(port, write=True):
                    raise RuntimeError(f"{name} did not serve a write within 30 s")
                figures = {}
                for pipeline, requests in ((40, args.requests), (1, args.requests_unpipelined)):
                    print(f"[resp-peers] {name}: -P {pipeline}, {requests} requests", file=sys.stderr)
                    line, f = bench(port, pipeline, requests)
                    results["commands"].append(line)
                    figures[f"P{pipeline}"] = f
                results["systems"][name] = figures
            except Exception as e:  # a failed part is reported, the others still run
                results["systems"][name] = {"error": str(e)}
                print(f"[resp-peers] {name} FAILED: {e}", file=sys.stderr)
            finally:
                server.terminate()
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    systems = results["systems"]

    def ops(name, mode, test):
        return systems.get(name, {}).get(mode, {}).get(test, {}).get("ops_per_sec")

    ratios = {}
    for mode in ("P40", "P1"):
        for test in ("set", "get"):
            for num, den in (("autopaxos", "redis-aof"), ("autopaxos", "redis"), ("autopaxos", "autopaxos-mem")):
                a, b = ops(num, mode, test), ops(den, mode, test)
                ratios[f"{num}/{den} {test} {mode}"] = round(a / b, 3) if a and b else None
    results["ratios"] = ratios
    print(f"\nmachine: {results['machine']['nproc']} cores, {cpu}, Linux {results['machine']['kernel']}")
    print(f"{'system':<15}{'mode':<6}{'SET/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'GET/s':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for name, _ in targets:
        for mode in ("P40", "P1"):
            f = systems.get(name, {}).get(mode)
            if not f:
                print(f"{name:<15}{mode:<6}  {systems.get(name, {}).get('error', 'no figures')}")
                continue
            s, g = f["set"], f["get"]
            print(f"{name:<15}{mode:<6}{s['ops_per_sec']:>12,.0f}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}"
                  f"{g['ops_per_sec']:>12,.0f}{g['p50_ms']:>9.3f}{g['p99_ms']:>9.3f}")
    print()
    for k, v in ratios.items():
        goal = " (goal >= 1.0)" if "redis-aof" in k else " (goal >= 0.5)" if k.split()[0].endswith("/redis") else ""
        print(f"{k:<40}{'-' if v is None else f'{v:.3f}'}{goal}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0 if all(not s.get("error") for s in systems.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
