#!/usr/bin/env python3
"""bench/healing.py: from a node's death to its replacement serving, under load (issue 12).

Runs the real binary as a user would: the f=1 cluster of `config --example`, one process per node on
loopback (durable); moto's EC2 server (installed by scripts/setup.sh) as the EC2 API;
`autopaxos cloud emulate` standing in for EC2 booting the instances the autoscaler launches (process
start stands in for an instance's boot); and `autopaxos autoscale --config` healing the stateful
roles. Under `autopaxos client` load (100 ms timeline), it SIGKILLs for good, one after the other,
acceptor 4, replica 8 and the leading proposer, and for each records, by the wall clock:

  - detected: the autoscaler's `replace` step (the node unreachable for --replace-after, plus up to
    one --interval), with the replacement launched;
  - serving: the autoscaler's `replaced` step (the new node answered and the change that puts it in
    and the dead node out is in force); for the replica, also taught: its executed watermark level
    with the surviving replica's;
  - the load's throughput per second through the whole episode, against the steady seconds before.

The EC2 estimate adds, to the measured time from launch to serving, an instance's boot time on EC2
(--ec2-boot-seconds, an assumption: no EC2 is reachable from here) in place of the local process
start; detection is --replace-after (default 30 s in production; 5 s here to keep the run short).

Writes bench/results/healing-YYYYMMDD-HHMMSS.json with every figure, every window and the machine.
Usage: bench/healing.py [--replace-after 5] [--clients 256] [--ec2-boot-seconds 40] [--keep]
"""
import argparse, json, os, signal, socket, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import teaching  # noqa: E402
from teaching import BIN, ROOT, ROLES, Cluster, free_ports, start_all  # noqa: E402

AMI = "ami-1e749f67"  # in moto's bundled list
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent/autopaxos-bench",
       "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/autopaxos-bench"}


class Lines:
    """A process's stdout, each JSON line stamped with the wall clock when it was read."""

    def __init__(self, proc):
        self.lines, self.lock = [], threading.Lock()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc):
        for line in proc.stdout:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.lines.append((time.time(), value))

    def wait(self, kind, node, limit=120):
        start = time.time()
        while time.time() - start < limit:
            with self.lock:
                for at, v in self.lines:
                    if v.get("action", {}).get("kind") == kind and v.get("node") == node and "groups" in v:
                        return at, v
            time.sleep(0.02)
        raise SystemExit(f"no {kind} step for node {node} within {limit}s")


def status(cluster):
    out = subprocess.run([BIN, "status", "--config", cluster.config, "--json"], capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replace-after", type=float, default=5.0, help="seconds unreachable before a replacement")
    ap.add_argument("--clients", type=int, default=256, help="closed-loop clients of the load")
    ap.add_argument("--ec2-boot-seconds", type=float, default=40.0,
                    help="assumed boot of a c5 instance from a baked AMI, for the EC2 estimate")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's directory (logs) and print it")
    args = ap.parse_args()
    teaching.KEEP = args.keep
    env = {**os.environ, **AWS, "NO_COLOR": "1"}
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
        env.pop(k, None)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    result = {"machine": f"{os.cpu_count()} cores, {cpu}, Linux {os.uname().release}",
              "command": " ".join(sys.argv), "clients": args.clients, "replace_after_s": args.replace_after}
    cluster = Cluster()
    others = []
    try:
        start_all(cluster)
        moto_port, scaler_metrics = free_ports(2)
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        others.append(moto)
        url = f"http://127.0.0.1:{moto_port}"
        while True:
            try:
                socket.create_connection(("127.0.0.1", moto_port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        caps = os.path.join(cluster.dir, "capacities.toml")
        text = '[machine]\ncores = 2\ncpu = "bench"\nkernel = "bench"\nmeasured = "bench"\n'
        for role in ("acceptor", "batcher", "proposer", "proxy-leader", "replica", "unbatcher"):
            text += (f"\n[roles.{role}]\ncmds_per_sec_per_core = 1e12\nmsgs_per_sec_per_core = 1e12\n"
                     "batch_size = 100\nread_budget = 100\n")
        open(caps, "w").write(text)
        nodes = os.path.join(cluster.dir, "nodes.toml")
        text = '[cluster]\nid = "bench-teach"\nf = 1\n'
        for id, role, group in ROLES:
            text += (f'\n[[node]]\nid = {id}\nrole = "{role}"\naddress = "127.0.0.1:{cluster.addr[id]}"\n'
                     f'metrics_address = "127.0.0.1:{cluster.metrics[id]}"\n')
            if group is not None:
                text += f"group = {group}\n"
        open(nodes, "w").write(text)
        emulator = subprocess.Popen(
            [BIN, "cloud", "emulate", "--cluster", "bench-teach", "--endpoint-url", url, "--region", "us-east-1",
             "--dir", os.path.join(cluster.dir, "instances")],
            cwd=cluster.dir, stdout=open(os.path.join(cluster.dir, "emulator.out"), "w"),
            stderr=open(os.path.join(cluster.dir, "emulator.err"), "w"), env=env)
        others.append(emulator)
        scaler = subprocess.Popen(
            [BIN, "autoscale", "--cluster", "bench-teach", "--config", cluster.config, "--nodes-from", nodes,
             "--capacities", caps, "--interval", "500ms", "--replace-after", f"{args.replace_after}s",
             "--json", "--metrics-addr", f"127.0.0.1:{scaler_metrics}", "--ami", AMI, "--endpoint-url", url,
             "--region", "us-east-1", "--advertise-address", "127.0.0.1:0"],
            cwd=cluster.dir, stdout=subprocess.PIPE, stderr=open(os.path.join(cluster.dir, "autoscaler.err"), "w"),
            text=True, env=env)
        others.append(scaler)
        steps = Lines(scaler)
        seconds = 6 + 3 * (args.replace_after + 12) + 8
        log = open(os.path.join(cluster.dir, "load.err"), "w")
        load = subprocess.Popen(
            [BIN, "client", "--config", cluster.config, "--duration", f"{seconds:.0f}s", "--clients",
             str(args.clients), "--node", "5000", "--cores", "1", "--json", "--timeline-ms", "100"],
            cwd=cluster.dir, stdout=subprocess.PIPE, stderr=log, text=True)
        time.sleep(6.0)  # warm-up, then steady seconds
        leader = status(cluster)["leader"]["node"]
        episodes = []
        for node, role in ((4, "acceptor"), (8, "replica"), (leader, "proposer")):
            cluster.kill(node)
            killed = time.time()
            print(f"{role} {node} SIGKILLed", file=sys.stderr)
            detected, step = steps.wait("replace", node)
            new = step["replacement"]
            serving, done = steps.wait("replaced", node)
            e = {"role": role, "node": node, "replacement": new, "killed_unix_ms": killed * 1e3,
                 "detected_s": detected - killed, "launch_to_serving_s": serving - detected,
                 "death_to_serving_s": serving - killed, "replace_reason": step["reason"],
                 "replaced_reason": done["reason"]}
            if role == "replica":
                # Taught: level with the surviving replica, by the status the operator sees.
                while True:
                    nodes_now = {n["node"]: n for n in status(cluster)["nodes"]}
                    have, want = nodes_now.get(new, {}).get("executed"), nodes_now.get(7, {}).get("executed")
                    if have is not None and want is not None and have + 64 >= want:
                        break
                    time.sleep(0.05)
                e["death_to_taught_s"] = time.time() - killed
            print(f"{role} {node} -> {new}: detected {e['detected_s']:.2f}s, launch to serving "
                  f"{e['launch_to_serving_s']:.2f}s, death to serving {e['death_to_serving_s']:.2f}s", file=sys.stderr)
            episodes.append(e)
            time.sleep(2.0)
        out, _ = load.communicate(timeout=seconds + 60)
        report = json.loads(out.strip().splitlines()[-1])
        windows = report["timeline"]
        first_kill = episodes[0]["killed_unix_ms"]
        per_second = {}
        for w in windows:
            per_second.setdefault(int((w["unix_ms"] - first_kill) // 1000), []).append(w["cmds_per_sec"])
        seconds_rate = {s: statistics.mean(v) for s, v in sorted(per_second.items())}
        steady = [r for s, r in seconds_rate.items() if -4 <= s < 0]
        after = [r for s, r in seconds_rate.items() if s >= 0]
        mean_before = statistics.mean(steady)
        # The EC2 estimate: detection as configured in production (30 s, plus up to one interval), an
        # assumed EC2 boot, and the launch-to-serving time measured here (which includes the local
        # process start the boot replaces: a slight overestimate).
        result.update({
            "episodes": episodes,
            "mean_before_cmds_per_sec": mean_before,
            "per_second_from_first_kill": seconds_rate,
            "lowest_second_ratio": min(after) / mean_before if after else None,
            "mean_ratio_through_the_episode": statistics.mean(after) / mean_before if after else None,
            "ec2_boot_seconds_assumed": args.ec2_boot_seconds,
            "ec2_estimate_death_to_serving_s": {
                e["role"]: round(30.0 + 0.5 + args.ec2_boot_seconds + e["launch_to_serving_s"], 1) for e in episodes},
            "load": {k: v for k, v in report.items() if k != "timeline"},
        })
    finally:
        for p in others:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        cluster.stop()
    print(f"machine: {result['machine']}")
    print(f"steady load before: {result['mean_before_cmds_per_sec']:,.0f} cmds/s ({args.clients} clients)")
    for e in result["episodes"]:
        taught = f", taught {e['death_to_taught_s']:.2f}s" if "death_to_taught_s" in e else ""
        print(f"{e['role']:>8} {e['node']} -> {e['replacement']}: unreachable {args.replace_after:g}s + detected at "
              f"{e['detected_s']:.2f}s, launch to serving {e['launch_to_serving_s']:.2f}s, death to serving "
              f"{e['death_to_serving_s']:.2f}s{taught}")
    print(f"throughput through the episode: lowest second {result['lowest_second_ratio']:.2f}, mean "
          f"{result['mean_ratio_through_the_episode']:.2f} of the steady mean")
    print(f"EC2 estimate, death to serving (30 s detection + 0.5 s interval + {args.ec2_boot_seconds:g} s boot, "
          f"assumed, + launch to serving measured here): {result['ec2_estimate_death_to_serving_s']}")
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    path = os.path.join(ROOT, "bench/results", time.strftime("healing-%Y%m%d-%H%M%S.json"))
    json.dump(result, open(path, "w"), indent=1)
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
