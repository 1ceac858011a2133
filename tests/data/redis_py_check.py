"""Drives an autopaxos RESP gateway with redis-py, the Python client applications use, and checks
every command the gateway documents: replies, pipelines, errors, binary-safe keys and values of
0 B, 1 B, 64 KiB and the maximum (64 KiB), and one over. Prints one line per check; exits 1 on the
first failure. Usage: python3 redis_py_check.py PORT
"""

import sys

import redis

MAX_VALUE = 64 * 1024


def main(port):
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=20, protocol=2)
    checks = 0

    def check(name, got, expected):
        nonlocal checks
        if got != expected:
            print(f"FAIL {name}: got {got!r}, expected {expected!r}")
            sys.exit(1)
        checks += 1
        print(f"ok   {name}")

    def error(name, call, contains):
        nonlocal checks
        try:
            got = call()
        except redis.exceptions.ResponseError as e:
            if contains not in str(e):
                print(f"FAIL {name}: error {e!r} lacks {contains!r}")
                sys.exit(1)
            checks += 1
            print(f"ok   {name}: {e}")
            return
        print(f"FAIL {name}: no error, got {got!r}")
        sys.exit(1)

    check("ping", r.ping(), True)
    check("echo", r.echo(b"hi\x00there"), b"hi\x00there")
    check("client setname", r.client_setname("redis-py-check"), True)
    check("client getname", str(r.client_getname(), "utf-8") if isinstance(r.client_getname(), bytes) else r.client_getname(), "redis-py-check")
    check("select 0", r.execute_command("SELECT", 0), True)
    check("info role", r.info()["role"], "gateway")
    check("set", r.set("k", "v1"), True)
    check("get", r.get("k"), b"v1")
    check("set nx on existing", r.set("k", "v2", nx=True), None)
    check("set xx", r.set("k", "v2", xx=True), True)
    check("set get", r.set("k", "v3", get=True), b"v2")
    check("set ifeq miss", r.execute_command("SET", "k", "v4", "IFEQ", "nope"), None)
    check("set ifeq hit", r.execute_command("SET", "k", "v4", "IFEQ", "v3"), True)
    check("getdel", r.getdel("k"), b"v4")
    check("get after getdel", r.get("k"), None)
    check("incr", r.incr("{c}.n"), 1)
    check("incrby", r.incrby("{c}.n", 41), 42)
    check("decr", r.decr("{c}.n"), 41)
    check("exists", r.exists("{c}.n", "{c}.nope", "{c}.n"), 2)
    check("mset", r.mset({"{acct}.a": "1", "{acct}.b": "2"}), True)
    check("mget", r.mget("{acct}.a", "{acct}.b", "{acct}.c"), [b"1", b"2", None])
    check("del", r.delete("{acct}.a", "{acct}.c"), 1)
    check("getv", r.execute_command("APX.GETV", "{acct}.b")[0], b"2")
    version = r.execute_command("APX.GETV", "{acct}.b")[1]
    check(
        "txn committed",
        r.execute_command("APX.TXN", "IF", "VERSION", "{acct}.b", version, "SET", "{acct}.b", "3", "INCRBY", "{acct}.n", 5)[0],
        b"committed",
    )
    check(
        "txn failed",
        r.execute_command("APX.TXN", "IF", "VERSION", "{acct}.b", version, "SET", "{acct}.b", "4"),
        [b"failed", 0],
    )
    check("txn wrote all", r.mget("{acct}.b", "{acct}.n"), [b"3", b"5"])
    # A check alone writes nothing: it answers the partition's version and leaves it as it was.
    committed = r.execute_command("APX.GETV", "{acct}.b")[1]
    check("txn check only", r.execute_command("APX.TXN", "IF", "EXISTS", "{acct}.b"), [b"committed", committed])
    check("txn check wrote nothing", r.execute_command("APX.GETV", "{acct}.b")[1], committed)
    check("txn check absent", r.execute_command("APX.TXN", "IF", "ABSENT", "{nowhere}.x"), [b"committed", 0])

    error("crossslot", lambda: r.mget("a", "b"), "CROSSSLOT")
    error("wrong arity", lambda: r.execute_command("GET"), "wrong number of arguments for 'get'")
    error("unknown command", lambda: r.execute_command("LPUSH", "l", "x"), "unknown command 'LPUSH'")
    error("not an integer", lambda: r.incrby("{c}.n", "x"), "not an integer")
    r.set("s", "text")
    error("incr of text", lambda: r.incr("s"), "not an integer or out of range")
    error("syntax", lambda: r.execute_command("SET", "k", "v", "NX", "XX"), "syntax error")
    error("expiry", lambda: r.set("k", "v", ex=10), "do not expire")

    binary_key = bytes(range(256))
    for size in (0, 1, MAX_VALUE):
        value = bytes((i * 7 + size) % 256 for i in range(size))
        check(f"set {size} B", r.set(binary_key, value), True)
        check(f"get {size} B", r.get(binary_key), value)
    error("over the limit", lambda: r.set("big", b"x" * (MAX_VALUE + 1)), f"limit of {MAX_VALUE} bytes")
    check("usable after an error", r.ping(), True)

    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"{{pipe}}.{i}", i)
        pipe.incr("{pipe}.count")
        pipe.get(f"{{pipe}}.{i}")
    pipe.execute_command("GET")  # an error in the middle of a pipeline
    pipe.ping()
    results = pipe.execute(raise_on_error=False)
    check("pipeline length", len(results), 1502)
    check("pipeline order", [results[3 * i + 2] for i in range(500)], [str(i).encode() for i in range(500)])
    check("pipeline counts", [results[3 * i + 1] for i in range(500)], list(range(1, 501)))
    check("pipeline error in place", isinstance(results[1500], redis.exceptions.ResponseError), True)
    check("pipeline continues", results[1501], True)

    # Replies and requests past 1 MiB (once the wire's limit for one message: they hung for ever).
    big = b"v" * MAX_VALUE
    keys = [f"{{large}}.{i}" for i in range(160)]
    check("mset 20 x 64 KiB", r.mset({k: big for k in keys[:20]}), True)
    for i in range(20, 160, 20):
        r.mset({k: big for k in keys[i : i + 20]})
    check("mget 20 x 64 KiB", r.mget(keys[:20]), [big] * 20)
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.get(k)
    check("pipeline of 160 GETs of 64 KiB", pipe.execute(), [big] * 160)
    error("mget past 8 MiB of values", lambda: r.mget(keys + keys), "reply larger than 8388608 bytes")
    check("usable after a reply too large", r.getdel(keys[0]), big)
    error("mget past 4096 keys", lambda: r.mget([f"{{many}}.{i}" for i in range(4097)]), "at most 4096 keys")
    check("mget of 4096 keys", len(r.mget([f"{{many}}.{i}" for i in range(4096)])), 4096)
    print(f"redis-py: {checks} checks passed")


if __name__ == "__main__":
    main(int(sys.argv[1]))
