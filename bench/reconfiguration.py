#!/usr/bin/env python3
"""bench/reconfiguration.py: Matchmaker Paxos's reconfiguration experiment, on autopaxos (issue 11).

Runs the real binary as a user would, one process per node (the f=1 shape of `config --example`, on
loopback, durable), under `autopaxos client` load with a timeline of 100 ms windows, and:

  1. --before seconds of steady load;
  2. ten acceptor reconfigurations, one per second (`autopaxos reconfigure`), each replacing one
     acceptor of the group by a new one started with `acceptor --join` (a retired acceptor leaves
     for good, so every change brings a new one; the acceptors removed leave by themselves);
  3. one acceptor of the group SIGKILLed, and five seconds later replaced by reconfiguration;
  4. --after seconds of steady load.

Records throughput and p50/p99 latency per 100 ms window, each change's asking time and how long it
took to be in force (as `reconfigure` prints it, which includes its own status round), and reports:
the mean throughput over the steady seconds before the first change, the lowest window during a
change (from the ask to 100 ms after it is in force) as a ratio of that mean (goal: at least 0.9),
the lowest window of those steady seconds as the same ratio (the noise floor of this machine: no
change is under way then), and the median time to in force (goal: 50 ms). Writes bench/results/reconfiguration-YYYYMMDD-HHMMSS.json with every
window, every change and the machine. Usage: bench/reconfiguration.py [--before 5] [--after 5]
[--clients 2048] [--keep]
"""
import argparse, json, os, re, signal, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import teaching  # noqa: E402  (the cluster of processes it runs is the one we need)
from teaching import BIN, ROOT, ROLES, Cluster, free_ports, start_all  # noqa: E402


class Joiner:
    """An acceptor started outside the cluster file, joining the running cluster."""

    def __init__(self, cluster, id):
        self.id = id
        self.port, self.metrics = free_ports(2)
        log = open(os.path.join(cluster.dir, f"join{id}.err"), "w")
        self.proc = subprocess.Popen(
            [BIN, "acceptor", "--config", cluster.config, "--node", str(id), "--join", "--listen",
             f"127.0.0.1:{self.port}", "--metrics-addr", f"127.0.0.1:{self.metrics}", "--cores", str(id % 2)],
            cwd=cluster.dir, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "NO_COLOR": "1"})


def cluster_file(cluster, name, group, joiners):
    """A copy of the cluster file whose one acceptor group is `group`."""
    toml = '[cluster]\nid = "bench-teach"\nf = 1\nsecret_file = "cluster.secret"\n'
    for id, role, _ in ROLES:
        if role != "acceptor":
            toml += f'\n[[node]]\nid = {id}\nrole = "{role}"\naddress = "127.0.0.1:{cluster.addr[id]}"\n'
    for id in group:
        port = joiners[id].port if id in joiners else cluster.addr[id]
        toml += f'\n[[node]]\nid = {id}\nrole = "acceptor"\ngroup = 0\naddress = "127.0.0.1:{port}"\n'
    path = os.path.join(cluster.dir, name)
    open(path, "w").write(toml)
    return path


def reconfigure(cluster, to):
    """Runs `autopaxos reconfigure`; returns (asked at, unix s; in force after, ms; the slot it is
    in force from; in force after the leader took the request, ms)."""
    asked = time.time()
    out = subprocess.run([BIN, "reconfigure", "--config", cluster.config, "--to", to, "--timeout", "30s"],
                         cwd=cluster.dir, capture_output=True, text=True)
    said = (out.stdout + out.stderr).strip()
    m = re.search(r"in force from slot (\d+), ([\d.]+) ms after it was asked for \(([\d.]+) ms after the leader", out.stdout)
    if out.returncode != 0 or not m:
        raise SystemExit(f"reconfigure {to} failed: {said}")
    return asked, float(m.group(2)), int(m.group(1)), float(m.group(3))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=int, default=5, help="seconds of load before the first change")
    ap.add_argument("--after", type=int, default=5, help="seconds of load after the last change")
    ap.add_argument("--clients", type=int, default=2048, help="closed-loop clients")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's directory (logs) and print it")
    args = ap.parse_args()
    teaching.KEEP = args.keep
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    result = {"machine": f"{os.cpu_count()} cores, {cpu}, Linux {os.uname().release}",
              "command": " ".join(sys.argv), "clients": args.clients}
    cluster = Cluster()
    joiners = {}
    try:
        start_all(cluster)
        for id in range(11, 23):
            joiners[id] = Joiner(cluster, id)
        time.sleep(1.0)  # the joiners announce themselves
        seconds = args.before + 10 + 6 + args.after + 2
        log = open(os.path.join(cluster.dir, "load.err"), "w")
        load = subprocess.Popen(
            [BIN, "client", "--config", cluster.config, "--duration", f"{seconds}s", "--clients",
             str(args.clients), "--node", "5000", "--cores", "1", "--json", "--timeline-ms", "100"],
            cwd=cluster.dir, stdout=subprocess.PIPE, stderr=log, text=True)
        time.sleep(1.0 + args.before)  # the client's warm-up, then steady load
        group = [3, 4, 5]
        fresh = iter(range(11, 23))
        changes = []
        for i in range(10):
            group[i % 3] = next(fresh)
            asked, took_ms, slot, leader_ms = reconfigure(cluster, cluster_file(cluster, f"change{i}.toml", group, joiners))
            changes.append({"kind": "replace", "group": list(group), "asked_unix_ms": asked * 1e3,
                            "in_force_ms": took_ms, "from_slot": slot, "in_force_at_leader_ms": leader_ms})
            print(f"change {i + 1}: {group} in force from slot {slot}, {took_ms:.1f} ms "
                  f"({leader_ms:.1f} ms at the leader)", file=sys.stderr)
            time.sleep(max(0.0, asked + 1.0 - time.time()))
        victim = group[0]
        joiners[victim].proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        print(f"acceptor {victim} SIGKILLed", file=sys.stderr)
        time.sleep(5.0)
        group[0] = next(fresh)
        asked, took_ms, slot, leader_ms = reconfigure(cluster, cluster_file(cluster, "replace-dead.toml", group, joiners))
        changes.append({"kind": "replace the dead", "group": list(group), "asked_unix_ms": asked * 1e3,
                        "in_force_ms": took_ms, "from_slot": slot, "in_force_at_leader_ms": leader_ms})
        print(f"dead {victim} replaced: {group} in force from slot {slot}, {took_ms:.1f} ms "
              f"({leader_ms:.1f} ms at the leader)", file=sys.stderr)
        out, _ = load.communicate(timeout=seconds + 60)
        report = json.loads(out.strip().splitlines()[-1])
        windows = report["timeline"]
        first_ask = changes[0]["asked_unix_ms"]
        # The steady seconds: after a second more of warm-up, up to the first change.
        steady = [w["cmds_per_sec"] for w in windows
                  if first_ask - (args.before - 1) * 1e3 <= w["unix_ms"] < first_ask - 100]
        mean_before = statistics.mean(steady)
        during = []
        for c in changes:
            end = c["asked_unix_ms"] + c["in_force_ms"] + 100
            during += [w for w in windows if c["asked_unix_ms"] - 100 < w["unix_ms"] < end]
        lowest = min(during, key=lambda w: w["cmds_per_sec"])
        kill_windows = [w for w in windows if killed_at * 1e3 - 100 < w["unix_ms"] < killed_at * 1e3 + 1000]
        result.update({
            "changes": changes, "killed": {"acceptor": victim, "unix_ms": killed_at * 1e3},
            "mean_before_cmds_per_sec": mean_before,
            "lowest_window_during_a_change": lowest,
            "lowest_ratio_during_a_change": lowest["cmds_per_sec"] / mean_before,
            "lowest_ratio_in_the_steady_seconds_before": min(steady) / mean_before,
            "windows_during_changes": len(during),
            "windows_during_changes_below_0_9": sum(w["cmds_per_sec"] < 0.9 * mean_before for w in during),
            "mean_ratio_during_changes": statistics.mean(w["cmds_per_sec"] for w in during) / mean_before,
            "steady_ratio_stdev": statistics.pstdev(steady) / mean_before,
            "lowest_window_after_a_change": min(
                (w for c in changes for w in windows
                 if c["asked_unix_ms"] + c["in_force_ms"] + 100 <= w["unix_ms"] < c["asked_unix_ms"] + 1000),
                key=lambda w: w["cmds_per_sec"]),
            "steady_windows_below_0_9": sum(r < 0.9 * mean_before for r in steady),
            "steady_windows": len(steady),
            "lowest_ratio_in_the_second_after_the_kill":
                min(w["cmds_per_sec"] for w in kill_windows) / mean_before if kill_windows else None,
            "median_in_force_ms": statistics.median(c["in_force_ms"] for c in changes),
            "max_in_force_ms": max(c["in_force_ms"] for c in changes),
            "median_in_force_at_leader_ms": statistics.median(c["in_force_at_leader_ms"] for c in changes),
            "max_in_force_at_leader_ms": max(c["in_force_at_leader_ms"] for c in changes),
            "load": {k: v for k, v in report.items() if k != "timeline"},
            "windows": windows,
        })
    finally:
        for j in joiners.values():
            if j.proc.poll() is None:
                j.proc.kill()
                j.proc.wait()
        cluster.stop()
    print(f"machine: {result['machine']}")
    print(f"steady load before: {result['mean_before_cmds_per_sec']:,.0f} cmds/s ({args.clients} clients)")
    print(f"lowest 100 ms window during a change: {result['lowest_ratio_during_a_change']:.2f} of it (goal >= 0.9); "
          f"{result['windows_during_changes_below_0_9']} of {result['windows_during_changes']} windows below 0.9")
    print(f"lowest 100 ms window of the steady seconds (no change): {result['lowest_ratio_in_the_steady_seconds_before']:.2f}; "
          f"{result['steady_windows_below_0_9']} of {result['steady_windows']} below 0.9")
    print(f"mean of the windows during changes: {result['mean_ratio_during_changes']:.2f} of the steady mean "
          f"(the steady windows' standard deviation: {result['steady_ratio_stdev']:.2f})")
    print(f"lowest window in the rest of each change's second: "
          f"{result['lowest_window_after_a_change']['cmds_per_sec'] / result['mean_before_cmds_per_sec']:.2f}")
    print(f"lowest 100 ms window in the second after the kill: {result['lowest_ratio_in_the_second_after_the_kill']:.2f}")
    print(f"in force: median {result['median_in_force_ms']:.1f} ms, max {result['max_in_force_ms']:.1f} ms, as "
          f"`reconfigure` measures it (its status round included); from the leader taking the request: "
          f"median {result['median_in_force_at_leader_ms']:.1f} ms, max {result['max_in_force_at_leader_ms']:.1f} ms "
          "(goal: median <= 50 from being proposed)")
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    path = os.path.join(ROOT, "bench/results", time.strftime("reconfiguration-%Y%m%d-%H%M%S.json"))
    json.dump(result, open(path, "w"), indent=1)
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
