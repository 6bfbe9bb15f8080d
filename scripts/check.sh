#!/usr/bin/env bash
# The one command that checks keyward: formatting, lints, and every test. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# The connection tests hold a few thousand sockets open at once.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Some tests start real PostgreSQL and Redis servers of their own (Debian's packages), on free
# ports in temp dirs.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null
  else
    echo "check: the tests need PostgreSQL and Redis: sudo apt-get install postgresql redis-server" >&2
    exit 1
  fi
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
