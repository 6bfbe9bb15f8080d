#!/usr/bin/env python3
"""Several-node benchmarks, on loopback, with a real PostgreSQL and Redis started in temp dirs.

    scripts/bench-cluster.py                  # every scenario
    scripts/bench-cluster.py store redis      # some: store, redis, propagation, exactness
    DURATION=15 CONNECTIONS=64 scripts/bench-cluster.py

store        HTTP verify on a PostgreSQL-backed node against a SQLite-backed one, same settings
             (the hot path never touches the store: the ratio should be near 1).
redis        HTTP verify of keys with 3 rate limits each, on the Redis limiter against the
             in-process one (one Redis round trip per verification).
propagation  3 nodes under verify load on B and C; a key revoked on A; how long until B and C
             refuse it, p50/p99 over many revokes.
exactness    3 nodes on Redis, all loading one key limited to 100/s for 30 s: admitted requests
             against the limit (burst included).

Needs wrk, PostgreSQL and Redis (apt-get install wrk postgresql redis-server). Builds the
release binary first. Prints one table per scenario.
"""

import glob
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "keyward")
DURATION = int(os.environ.get("DURATION", "15"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
THREADS = int(os.environ.get("THREADS", "1"))
KEYS = int(os.environ.get("KEYS", "2000"))
WORKERS = int(os.environ.get("WORKERS", str(max(1, (os.cpu_count() or 2) - THREADS))))
REVOKES = int(os.environ.get("REVOKES", "50"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(check, what, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    sys.exit(f"bench-cluster: {what} did not come up")


class Postgres:
    def __init__(self, work):
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not versions:
            sys.exit("bench-cluster: PostgreSQL is not installed (apt-get install postgresql)")
        bin_dir = os.path.dirname(versions[-1])
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir)
        as_root = os.geteuid() == 0
        prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        if as_root:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(work, 0o755)
        data = os.path.join(self.dir, "data")
        subprocess.run(prefix + [f"{bin_dir}/initdb", "-D", data, "-U", "keyward", "--auth=trust",
                                 "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL)
        self.port = free_port()
        self.proc = subprocess.Popen(
            prefix + [f"{bin_dir}/postgres", "-D", data, "-p", str(self.port),
                      "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                      "-c", "max_connections=300"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pidfile = os.path.join(data, "postmaster.pid")
        wait_for(lambda: subprocess.run([f"{bin_dir}/pg_isready", "-q", "-h", "127.0.0.1", "-p",
                                         str(self.port)]).returncode == 0, "postgres")
        self.db = 0

    def fresh_url(self):
        """A new empty database for one scenario."""
        self.db += 1
        name = f"bench{self.db}"
        subprocess.run(["psql", f"postgres://keyward@127.0.0.1:{self.port}/postgres", "-qc",
                        f"CREATE DATABASE {name}"], check=True, stdout=subprocess.DEVNULL)
        return f"postgres://keyward@127.0.0.1:{self.port}/{name}"

    def stop(self):
        try:
            pid = open(self.pidfile).readline().strip()
            subprocess.run(["kill", "-INT", pid])
        except OSError:
            pass
        self.proc.wait(timeout=30)


class Redis:
    def __init__(self, work):
        if not shutil.which("redis-server"):
            sys.exit("bench-cluster: redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", work],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(7) == b"+PONG\r\n"
            except OSError:
                return False
        wait_for(up, "redis")
        self.url = f"redis://127.0.0.1:{self.port}/"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Node:
    """A keyward serve process."""

    def __init__(self, work, name, args, env=None, config=None):
        self.out = os.path.join(work, f"{name}.out")
        cmd = [BIN, "serve", "--listen", "127.0.0.1:0", "--worker-threads", str(WORKERS),
               "--data-dir", os.path.join(work, f"{name}-data")] + args
        full_env = dict(os.environ, RUST_LOG="warn", **(env or {}))
        if config:
            path = os.path.join(work, f"{name}.toml")
            open(path, "w").write(config)
            full_env["KEYWARD_CONFIG"] = path
        self.proc = subprocess.Popen(cmd, stdout=open(self.out, "w"),
                                     stderr=open(os.path.join(work, f"{name}.err"), "w"), env=full_env)
        wait_for(lambda: "listening on" in open(self.out).read(), name)
        text = open(self.out).read()
        self.url = re.search(r"keyward listening on (\S+)", text).group(1)
        root = re.search(r"keyward_admin_\w+", text)
        self.root = root.group(0) if root else None

    def call(self, method, path, token, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": "Bearer " + token, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def init_store(url):
    out = subprocess.run([BIN, "init", "--store", url, "--key-shares", "1", "--key-threshold", "1",
                          "--json"], check=True, capture_output=True, text=True)
    init = json.loads(out.stdout)
    return init["root_key"], init["unseal_shares"][0]


def pg_node(work, name, url, share, env=None, config=None):
    node = Node(work, name, ["--store", url], env=env, config=config)
    status, body = node.call("POST", "/v1/sys/unseal", "", {"share": share})
    assert status == 200, body
    return node


def create_keys(node, token, count, extra=None):
    from concurrent.futures import ThreadPoolExecutor

    def create(i):
        body = {"environment": "live", "name": f"load {i}", "owner": "bench",
                "permissions": ["invoices:read"], **(extra or {})}
        status, created = node.call("POST", "/v1/keys", token, body)
        assert status == 201, created
        return created["key"]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(create, range(count)))


def wrk(work, node, token, keys, duration=DURATION, connections=CONNECTIONS, name="load",
        expect="VALID"):
    keys_file = os.path.join(work, f"{name}.keys")
    open(keys_file, "w").write("\n".join(keys) + "\n")
    check = "" if expect is None else f"""
response = function(status, headers, body)
  if status ~= 200 or not body:find('"{expect}"', 1, true) then
    error("unexpected answer " .. status .. ": " .. body)
  end
end"""
    script = os.path.join(work, f"{name}.lua")
    open(script, "w").write(f"""
local keys = {{}}
for line in io.lines("{keys_file}") do keys[#keys + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #keys + 1
  return wrk.format(nil, "/v1/verify", nil, '{{"key":"' .. keys[i] .. '"}}')
end
{check}
""")
    args = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script,
            node.url]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def parse(text):
    if re.search(r"Socket errors|Non-2xx", text):
        print(f"warning: errors during a run:\n{text}", file=sys.stderr)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return rps, pct(50), pct(99)


def table(title, rows):
    print(f"\n{title}")
    print(f"{'':<34}{'requests/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for label, (rps, p50, p99) in rows:
        print(f"{label:<34}{rps:>12,.0f}{p50:>10.3f}{p99:>10.3f}")


def measure(work, node, token, keys, name):
    wrk(work, node, token, keys, duration=3, name=name)  # warm the cache and connections
    return parse(wrk(work, node, token, keys, name=name))


def scenario_store(work, pg):
    sqlite = Node(work, "sqlite", [])
    sqlite_keys = create_keys(sqlite, sqlite.root, KEYS)
    url = pg.fresh_url()
    root, share = init_store(url)
    node = pg_node(work, "postgres", url, share)
    pg_keys = create_keys(node, root, KEYS)
    # Interleaved, twice, so a noisy neighbour hits both alike.
    runs = {"sqlite": [], "postgres": []}
    for _ in range(2):
        runs["sqlite"].append(measure(work, sqlite, sqlite.root, sqlite_keys, "sqlite"))
        runs["postgres"].append(measure(work, node, root, pg_keys, "postgres"))
    best = {k: max(v) for k, v in runs.items()}
    table(f"store: wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s, {KEYS} keys, {WORKERS} worker threads "
          "(best of 2 interleaved runs)",
          [("SQLite-backed node", best["sqlite"]), ("PostgreSQL-backed node", best["postgres"])])
    print(f"PostgreSQL / SQLite: {best['postgres'][0] / best['sqlite'][0]:.0%}")
    sqlite.stop()
    node.stop()


def scenario_redis(work, pg, redis):
    limits = {"ratelimits": [
        {"name": "second", "limit": 1_000_000, "period_s": 1},
        {"name": "minute", "limit": 100_000_000, "period_s": 60},
        {"name": "day", "limit": 1_000_000_000, "period_s": 86400}]}
    rows = []
    for label, env in [("in-process limiter", None),
                       ("Redis limiter", {"KEYWARD_RATELIMIT_REDIS": redis.url})]:
        url = pg.fresh_url()
        root, share = init_store(url)
        node = pg_node(work, "redis" if env else "local", url, share, env=env)
        keys = create_keys(node, root, KEYS, limits)
        rows.append((f"{label}, 3 limits", measure(work, node, root, keys, "limits")))
        node.stop()
    table(f"redis: wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s, {KEYS} keys with 3 limits each, "
          "PostgreSQL-backed node", rows)


class Poller:
    """Verifies over one kept-alive connection per node, so polling measures keyward, not the
    setup of a TCP connection per request (on a loaded loopback a dropped SYN costs a second)."""

    def __init__(self, node, token):
        import http.client
        host, port = node.url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

    def code(self, key):
        self.conn.request("POST", "/v1/verify", json.dumps({"key": key}), self.headers)
        resp = self.conn.getresponse()
        return json.loads(resp.read()).get("code")


def scenario_propagation(work, pg):
    url = pg.fresh_url()
    root, share = init_store(url)
    nodes = [pg_node(work, f"node{i}", url, share) for i in range(3)]
    a, b, c = nodes
    load_keys = create_keys(a, root, 500)
    stop = threading.Event()

    def load(node, name):
        while not stop.is_set():
            wrk(work, node, root, load_keys, duration=5, connections=16, name=name)
    loaders = [threading.Thread(target=load, args=(n, f"load-{i}"), daemon=True)
               for i, n in enumerate((b, c))]
    for t in loaders:
        t.start()
    time.sleep(2)
    seen = []
    pollers = {id(n): Poller(n, root) for n in (b, c)}
    for _ in range(REVOKES):
        status, created = a.call("POST", "/v1/keys", root,
                                 {"environment": "live", "name": "victim", "owner": "bench"})
        assert status == 201
        key, kid = created["key"], created["id"]
        for n in (b, c):
            while pollers[id(n)].code(key) != "VALID":
                time.sleep(0.001)
        status, _ = a.call("POST", f"/v1/keys/{kid}/revoke", root, {"reason": "bench"})
        returned = time.perf_counter()
        assert status == 200
        for n in (b, c):
            while pollers[id(n)].code(key) != "REVOKED":
                pass
            seen.append((time.perf_counter() - returned) * 1000)
    stop.set()
    for t in loaders:
        t.join()
    seen.sort()
    p99 = seen[min(len(seen) - 1, int(len(seen) * 0.99))]
    print(f"\npropagation: 3 PostgreSQL-backed nodes, wrk -c16 verify load on B and C; {REVOKES} keys "
          "revoked on A")
    print(f"time from A's revoke returning to B or C refusing the key: p50 {statistics.median(seen):.1f} ms, "
          f"p99 {p99:.1f} ms, max {seen[-1]:.1f} ms ({len(seen)} observations)")
    for n in nodes:
        n.stop()


def scenario_exactness(work, pg, redis):
    url = pg.fresh_url()
    root, share = init_store(url)
    nodes = [pg_node(work, f"exact{i}", url, share, env={"KEYWARD_RATELIMIT_REDIS": redis.url})
             for i in range(3)]
    status, created = nodes[0].call("POST", "/v1/keys", root, {
        "environment": "live", "name": "limited", "owner": "bench",
        "ratelimits": [{"name": "second", "limit": 100, "period_s": 1}]})
    assert status == 201
    key, kid = created["key"], created["id"]
    seconds = 30
    threads = [threading.Thread(target=wrk, args=(work, n, root, [key]),
                                kwargs={"duration": seconds, "connections": 8, "name": f"exact-{i}",
                                        "expect": None})
               for i, n in enumerate(nodes)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - started
    time.sleep(2.5)  # usage is flushed once a second
    # Every node adds its admitted verifications to the key's stored `uses`.
    _, record = nodes[0].call("GET", f"/v1/keys/{kid}", root)
    admitted = record["uses"]
    expected = 100 * seconds + 100
    print(f"\nexactness: 3 nodes on one Redis, one key limited to 100/s (burst 100), {seconds} s of wrk "
          f"-c8 on each node (measured {elapsed:.1f} s)")
    print(f"admitted {admitted} against {expected} (100/s for {seconds} s plus the burst): "
          f"{(admitted - expected) / expected:+.2%}")
    for n in nodes:
        n.stop()


def main():
    wanted = sys.argv[1:] or ["store", "redis", "propagation", "exactness"]
    for tool in ("wrk", "psql"):
        if not shutil.which(tool):
            sys.exit(f"bench-cluster: {tool} is required (apt-get install wrk postgresql)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keyward", "--manifest-path",
                    os.path.join(ROOT, "Cargo.toml")], check=True)
    work = tempfile.mkdtemp(prefix="keyward-bench-")
    pg = redis = None
    try:
        pg = Postgres(work)
        redis = Redis(work)
        if "store" in wanted:
            scenario_store(work, pg)
        if "redis" in wanted:
            scenario_redis(work, pg, redis)
        if "propagation" in wanted:
            scenario_propagation(work, pg)
        if "exactness" in wanted:
            scenario_exactness(work, pg, redis)
    finally:
        if redis:
            redis.stop()
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
