#!/usr/bin/env bash
# HTTP load benchmark: POST /v1/verify on loopback with many distinct valid keys, and nginx
# answering a fixed `return 200` under the same wrk settings: the ceiling of one HTTP hop here.
#
#   scripts/bench-http.sh                 # defaults below
#   KEYS=5000 DURATION=20 CONNECTIONS=64 THREADS=1 WORKERS=1 scripts/bench-http.sh
#
# Needs wrk and nginx (Debian: apt-get install wrk nginx). Prints requests/s, p50/p99 latency,
# the ratio to nginx, and keyward's resident memory after the run. Only loopback is touched.
set -euo pipefail

KEYS=${KEYS:-2000}
DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
# Cores left to the server once wrk has its own: keyward's worker threads and nginx's worker
# processes both get this many, so neither competes with the load generator for a core.
WORKERS=${WORKERS:-$(( $(nproc) > THREADS ? $(nproc) - THREADS : 1 ))}

root=$(cd "$(dirname "$0")/.." && pwd)
for tool in wrk nginx python3; do
  command -v "$tool" >/dev/null || { echo "bench-http: $tool is required (apt-get install wrk nginx)" >&2; exit 1; }
done

work=$(mktemp -d)
cleanup() {
  [ -n "${kw_pid:-}" ] && kill "$kw_pid" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p keyward --manifest-path "$root/Cargo.toml"
bin="$root/target/release/keyward"

# keyward on a free port, embedded store in a temp data dir.
RUST_LOG=warn "$bin" serve --listen 127.0.0.1:0 --worker-threads "$WORKERS" --data-dir "$work/data" >"$work/serve.out" 2>"$work/serve.err" &
kw_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^keyward listening on //p' "$work/serve.out")
token=$(grep -o 'keyward_admin_[0-9A-Za-z]*' "$work/serve.out" | head -n1)
[ -n "$url" ] && [ -n "$token" ] || { echo "bench-http: keyward did not start" >&2; cat "$work/serve.err" >&2; exit 1; }

# Distinct valid keys, created through the API.
python3 - "$url" "$token" "$KEYS" "$work/keys.txt" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, token, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def create(i):
    body = json.dumps({"environment": "live", "name": f"load {i}", "owner": "bench", "permissions": ["invoices:read"]}).encode()
    req = urllib.request.Request(url + "/v1/keys", data=body, method="POST",
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)["key"]
with ThreadPoolExecutor(8) as pool:
    keys = list(pool.map(create, range(count)))
open(out, "w").write("\n".join(keys) + "\n")
PY

cat >"$work/verify.lua" <<LUA
local keys = {}
for line in io.lines("$work/keys.txt") do keys[#keys + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #keys + 1
  return wrk.format(nil, "/v1/verify", nil, '{"key":"' .. keys[i] .. '"}')
end
response = function(status, headers, body)
  if status ~= 200 or not body:find('"VALID"', 1, true) then
    error("unexpected answer " .. status .. ": " .. body)
  end
end
LUA

# Warm the cache and the connection pool, then measure.
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$work/verify.lua" "$url" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/verify.lua" "$url" >"$work/keyward.txt"
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$kw_pid/status")

# nginx `return 200` on another free port, same wrk settings and request shape.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<NGINX
worker_processes $WORKERS;
pid $work/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$port;
    location / { return 200 '{"valid":true,"code":"VALID"}'; }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"
sed 's/error("unexpected.*/error("unexpected answer " .. status)/' "$work/verify.lua" >"$work/nginx.lua"
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$work/nginx.lua" "http://127.0.0.1:$port" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/nginx.lua" "http://127.0.0.1:$port" >"$work/nginx.txt"

python3 - "$work/keyward.txt" "$work/nginx.txt" "$rss_kib" "$KEYS" "$THREADS" "$CONNECTIONS" "$DURATION" "$WORKERS" <<'PY'
import re, sys
def parse(path):
    text = open(path).read()
    if re.search(r"Socket errors|Non-2xx", text):
        print(f"warning: errors during the run of {path}:\n{text}", file=sys.stderr)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, pct(50), pct(99)
kw, ng = parse(sys.argv[1]), parse(sys.argv[2])
rss, keys, threads, conns, dur, workers = int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8]
print(f"wrk -t{threads} -c{conns} -d{dur}s, POST /v1/verify with {keys} distinct valid keys (bearer-authenticated)")
print(f"server workers: {workers} (keyward --worker-threads, nginx worker_processes)")
print(f"{'':<22}{'requests/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
print(f"{'keyward verify':<22}{kw[0]:>12,.0f}{kw[1]:>10.3f}{kw[2]:>10.3f}")
print(f"{'nginx return 200':<22}{ng[0]:>12,.0f}{ng[1]:>10.3f}{ng[2]:>10.3f}")
print(f"keyward / nginx: {kw[0] / ng[0]:.0%} of the one-hop ceiling")
print(f"keyward resident memory after the run: {rss / 1024:.0f} MiB")
PY
