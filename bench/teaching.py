#!/usr/bin/env python3
"""bench/teaching.py: what teaching costs and how memory behaves with a replica down (issue 10).

Runs the real binary as a user would, one process per node (the f=1 shape of `config --example`,
on loopback, durable, default settings), under `autopaxos client` load, and measures:

  1. memory with a replica down: replica 7 is SIGKILLed and left down for --down seconds while the
     load runs; the resident memory (VmRSS) of every other node is sampled every 5 s; then 7 comes
     back on its disk and catches up (by snapshot: it is beyond the teaching budget);
  2. catch-up by log segment: replica 7 is down 10 s, then restarts on its disk; slots learned per
     second, time until it is level with the live watermark, and the load's throughput meanwhile
     against the seconds with every replica up and with 7 down; with the default settings (paced
     at 150% of the live rate), again with no pace (`teach_pace_percent_of_live = 0`), and again
     capped at --segment-rate slots/s (`teach_max_slots_per_sec`) when given;
  3. a wiped replica with a large state: --fill seconds of writes of --big-value bytes to the load
     generator's 100,000 keys (about 1 GiB by default), then, under a load, replica 7 is wiped and
     restarted: time from its start to the peer's watermark (serving), to its snapshot on disk, MB/s
     of snapshot, and the load's throughput during the transfer against the seconds before the kill
     (again paced at --snapshot-rate bytes/s, `teach_max_bytes_per_sec`, when given).

Writes bench/results/teaching-YYYYMMDD-HHMMSS.json with every figure and the machine, and prints
a summary. Usage: bench/teaching.py [--down 60] [--big-value 10240] [--fill 25]
[--segment-rate N] [--snapshot-rate B] [--only down|segment|wiped] [--keep] [--help]
Run it on a quiet machine (a build in the background makes every sync many times slower).
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("AUTOPAXOS", os.path.join(ROOT, "target/release/autopaxos"))
KEEP = False  # --keep: leave each cluster's directory (configs, logs) behind
ROLES = [(1, "proposer", None), (2, "proposer", None), (3, "acceptor", 0), (4, "acceptor", 0),
         (5, "acceptor", 0), (6, "proxy-leader", None), (7, "replica", None), (8, "replica", None),
         (9, "batcher", None), (10, "unbatcher", None)]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, settings=""):
        self.dir = tempfile.mkdtemp(prefix="autopaxos-bench-teach-")
        ports = free_ports(2 * len(ROLES))
        self.addr = {id: ports[2 * i] for i, (id, _, _) in enumerate(ROLES)}
        self.metrics = {id: ports[2 * i + 1] for i, (id, _, _) in enumerate(ROLES)}
        subprocess.run([BIN, "config", "--new-secret", os.path.join(self.dir, "cluster.secret")], check=True)
        toml = f'[cluster]\nid = "bench-teach"\nf = 1\nsecret_file = "cluster.secret"\n\n[settings]\n{settings}\n'
        for id, role, group in ROLES:
            toml += f'\n[[node]]\nid = {id}\nrole = "{role}"\n'
            if group is not None:
                toml += f"group = {group}\n"
            toml += f'address = "127.0.0.1:{self.addr[id]}"\n'
        self.config = os.path.join(self.dir, "cluster.toml")
        open(self.config, "w").write(toml)
        self.procs = {}
        self.runs = {}

    def start(self, id):
        role = dict((i, r) for i, r, _ in ROLES)[id]
        self.runs[id] = self.runs.get(id, 0) + 1
        log = open(os.path.join(self.dir, f"node{id}-run{self.runs[id]}.err"), "w")
        cores = min(os.cpu_count() or 1, 2)
        self.procs[id] = subprocess.Popen(
            [BIN, role, "--config", self.config, "--node", str(id), "--cores", str((id + 1) % cores),
             "--metrics-addr", f"127.0.0.1:{self.metrics[id]}"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "NO_COLOR": "1"},
            start_new_session=True)

    def kill(self, id):
        self.procs[id].kill()
        self.procs[id].wait()

    def data_dir(self, id):
        return os.path.join(self.dir, "autopaxos-data", f"node-{id}")

    def scrape(self, id):
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics[id]}/metrics", timeout=2).read().decode()
        except Exception:
            return None

    def metric(self, id, name):
        text = self.scrape(id)
        if text is None:
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def watermark(self, id):
        return self.metric(id, "autopaxos_executed_watermark")

    def wait_serving(self, id, limit=60):
        start = time.time()
        while self.scrape(id) is None:
            if time.time() - start > limit:
                raise SystemExit(f"node {id} did not serve metrics in {limit}s")
            time.sleep(0.02)

    def rss_mib(self, id):
        try:
            for line in open(f"/proc/{self.procs[id].pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None

    def client(self, seconds, clients=2048, value_size=16, name="load", verify=False):
        log = open(os.path.join(self.dir, f"{name}.err"), "w")
        return subprocess.Popen(
            [BIN, "client", "--config", self.config, "--duration", f"{seconds}s", "--clients", str(clients),
             "--value-size", str(value_size), "--node", "5000", "--cores", "1", "--json"]
            + (["--verify"] if verify else []),
            cwd=self.dir, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True), \
            os.path.join(self.dir, f"{name}.err")

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if KEEP:
            print(f"kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def write_result(prefix, result):
    """Writes `result`, with this machine, to bench/results/<prefix>-YYYYMMDD-HHMMSS.json; returns its path."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    result = {"machine": f"{os.cpu_count()} cores, {cpu}, Linux {os.uname().release}", **result}
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    path = os.path.join(ROOT, "bench/results", time.strftime(f"{prefix}-%Y%m%d-%H%M%S.json", time.gmtime()))
    json.dump(result, open(path, "w"), indent=2)
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return path


def progress(path):
    """(seconds, cmds/s) of each progress line of a client's stderr."""
    out = []
    for line in open(path).read().replace("\r", "\n").splitlines():
        m = re.match(r"\s*([\d.]+)s\s+([\d,]+) cmds/s", line)
        if m:
            out.append((float(m.group(1)), float(m.group(2).replace(",", ""))))
    return out


def wait_caught_up(cluster, target, limit=120):
    start = time.time()
    while True:
        w = cluster.watermark(7)
        if w is not None and w >= target:
            return time.time() - start
        if time.time() - start > limit:
            raise SystemExit(f"replica 7 at {w}, not {target}, after {limit}s")
        time.sleep(0.02)


def rate_between(path, t0, t1, load_start):
    rows = [r for at, r in progress(path) if t0 <= load_start + at + 1.0 <= t1 + 1.0]
    return sum(rows) / len(rows) if rows else None


def start_all(c):
    for id, _, _ in ROLES:
        c.start(id)
    for id, _, _ in ROLES:
        c.wait_serving(id)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--down", type=int, default=60, help="seconds replica 7 stays down under load")
    ap.add_argument("--big-value", type=int, default=10_240, help="value bytes of the large state")
    ap.add_argument("--fill", type=int, default=25, help="seconds of writes that build the large state")
    ap.add_argument("--segment-rate", type=int, default=0,
                    help="part 2 again with teach_max_slots_per_sec at this rate (0: not)")
    ap.add_argument("--pace-percent", type=int, default=None,
                    help="part 2 with teach_pace_percent_of_live at this instead of the default")
    ap.add_argument("--snapshot-rate", type=int, default=0,
                    help="part 3 again with teach_max_bytes_per_sec at this rate (0: only unpaced)")
    ap.add_argument("--only", choices=["down", "segment", "wiped"], help="run one of the three parts")
    ap.add_argument("--keep", action="store_true", help="keep each cluster's directory (logs) and print it")
    args = ap.parse_args()
    global KEEP
    KEEP = args.keep
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    machine = f"{os.cpu_count()} cores, {cpu}, Linux {os.uname().release}"
    result = {"machine": machine, "command": " ".join(sys.argv), "down_s": args.down}

    if args.only in (None, "down"):
        part_down(args, result)
    if args.only in (None, "segment"):
        # The defaults (paced by the live rate), then without any pace for comparison.
        pace = "" if args.pace_percent is None else f"teach_pace_percent_of_live = {args.pace_percent}\n"
        result["log_segment"] = part_segment(0, pace)
        result["log_segment_unpaced"] = part_segment(0, "teach_pace_percent_of_live = 0\n")
        if args.segment_rate:
            result["log_segment_paced"] = part_segment(args.segment_rate)
    if args.only in (None, "wiped"):
        result["wiped_large_state"] = part_wiped(args, 0)
        if args.snapshot_rate:
            result["wiped_large_state_paced"] = part_wiped(args, args.snapshot_rate)
    save(result)


def part_down(args, result):
    """1: memory with a replica down, and how it comes back."""
    # A 64 MiB teaching budget (the default, 512 MiB, fits a c5.xlarge) so that the surviving
    # replica reaches its plateau within the minute.
    c = Cluster("teach_retention_bytes = 67108864\n")
    try:
        start_all(c)
        total = 10 + args.down + 20
        load, load_err = c.client(total)
        time.sleep(10)
        c.kill(7)
        killed_at = c.watermark(8)
        rss = []
        t0 = time.time()
        while time.time() - t0 < args.down:
            sample = {"t_s": round(time.time() - t0, 1)}
            for id, role, _ in ROLES:
                if id != 7:
                    sample[f"{role}-{id}"] = round(c.rss_mib(id) or 0, 1)
            rss.append(sample)
            time.sleep(5)
        result["rss_mib_with_replica_7_down"] = rss
        peer = c.watermark(8)
        c.start(7)
        c.wait_serving(7)
        back_s = wait_caught_up(c, peer)
        result["back_after_down"] = {
            "slots_behind": peer - killed_at, "catch_up_s": round(back_s, 3),
            "snapshots_installed": c.metric(7, "autopaxos_snapshots_installed_total"),
        }
        out, _ = load.communicate(timeout=total + 60)
        result["load_while_down"] = json.loads(out.strip().splitlines()[-1])
    finally:
        c.stop()



def part_segment(rate, extra=""):
    """2: catch-up by log segment (capped at `rate` slots/s if not 0; the other teaching settings
    the defaults, overridden by `extra`), and what it costs the load."""
    # Ship segments whatever their size: this workload's state (100,000 keys of 16 bytes) is far
    # smaller than a few seconds of log, so the default rule would send a snapshot.
    c = Cluster(f"teach_log_max_percent_of_state = 100000\nteach_max_slots_per_sec = {rate}\n" + extra)
    try:
        start_all(c)
        load, load_err = c.client(90)
        load_start = time.time()
        time.sleep(10)
        all_up = rate_between(load_err, time.time() - 8, time.time(), load_start)
        c.kill(7)
        killed_at = c.watermark(8)
        time.sleep(10)
        peer = c.watermark(8)
        while_down = rate_between(load_err, time.time() - 8, time.time(), load_start)
        c.start(7)
        c.wait_serving(7)
        t1 = time.time()
        seg_s = wait_caught_up(c, peer)
        # Level: within a leader's window (1,000 slots) of the live watermark, which kept moving.
        while c.watermark(7) < c.watermark(8) - 1_000:
            if time.time() - t1 > 60:
                raise SystemExit("replica 7 not level with 8 after 60 s")
            time.sleep(0.02)
        t2 = time.time()
        time.sleep(2)
        during = rate_between(load_err, t1, max(t2, t1 + 1), load_start)
        load.kill()
        drop = lambda base: None if not base or during is None else round(1 - during / base, 3)
        return {
            "teach_max_slots_per_sec": rate, "other_settings": extra.strip() or "defaults",
            "slots_behind": peer - killed_at, "catch_up_s": round(seg_s, 3),
            "slots_per_s": round((peer - killed_at) / seg_s),
            "level_with_live_watermark_s": round(t2 - t1, 3),
            "snapshots_installed": c.metric(7, "autopaxos_snapshots_installed_total"),
            "load_cmds_per_s_all_replicas_up": all_up, "load_cmds_per_s_replica_7_down": while_down,
            "load_cmds_per_s_while_learning": during,
            "throughput_drop_vs_all_up": drop(all_up), "throughput_drop_vs_7_down": drop(while_down),
        }
    finally:
        c.stop()


def part_wiped(args, rate):
    """3: a wiped replica with a large state, taught by snapshot under load (paced at `rate`
    bytes/s, or not if 0)."""
    c = Cluster(f"teach_max_bytes_per_sec = {rate}\n")
    try:
        start_all(c)
        # Random keys among the load generator's 100,000: about keys * value bytes of state once
        # most keys are written.
        fill, _ = c.client(args.fill, clients=256, value_size=args.big_value, name="fill")
        fill.communicate(timeout=args.fill + 120)
        # Distinct new keys (verify mode), so that the load does not overwrite the large values.
        load, load_err = c.client(60, clients=256, name="load", verify=True)
        load_start = time.time()
        time.sleep(8)
        # The seconds before the kill (a killed replica's clients wait for the others to answer).
        before = rate_between(load_err, time.time() - 6, time.time() - 1, load_start)
        c.kill(7)
        shutil.rmtree(c.data_dir(7), ignore_errors=True)
        peer = c.watermark(8)
        c.start(7)
        t = time.time()
        c.wait_serving(7)
        serving_metrics_s = time.time() - t
        caught = wait_caught_up(c, peer, limit=300) + serving_metrics_s
        t_caught = time.time()
        during = rate_between(load_err, t, t_caught, load_start)
        while True:
            snaps = [f for f in os.listdir(c.data_dir(7)) if f.endswith(".snap")]
            if snaps or time.time() - t > 300:
                break
            time.sleep(0.05)
        durable = time.time() - t
        size = sum(os.path.getsize(os.path.join(c.data_dir(7), f)) for f in snaps)
        load.kill()
        return {
            "teach_max_bytes_per_sec": rate,
            "fill": f"{args.fill}s of 256 clients writing {args.big_value}-byte values",
            "snapshot_bytes_on_disk": size,
            "start_to_caught_up_s": round(caught, 3),
            "start_to_snapshot_durable_s": round(durable, 3),
            "snapshot_mb_per_s": round(size / 1e6 / caught, 1) if caught else None,
            "snapshots_installed": c.metric(7, "autopaxos_snapshots_installed_total"),
            "load_cmds_per_s_before": before, "load_cmds_per_s_during": during,
            "throughput_drop": None if not before or during is None else round(1 - during / before, 3),
        }
    finally:
        c.stop()


def save(result):
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    path = os.path.join(ROOT, "bench/results", time.strftime("teaching-%Y%m%d-%H%M%S.json", time.gmtime()))
    json.dump(result, open(path, "w"), indent=2)
    print(json.dumps(result, indent=2))
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
