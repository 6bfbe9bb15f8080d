#!/usr/bin/env bash
# Fuzzes the running HTTP API from its own OpenAPI document with schemathesis: no request may
# get a 5xx, every answer must match the document, and requests that break the schema must be
# refused. (Schema-valid requests that keyward refuses on meaning, such as an expiry in the past,
# are expected, so that one check is left out.)
#
#   scripts/api-fuzz.sh            # EXAMPLES=200 by default
# Sealing is left out: a sealed server answers 503 to everything after it (tests cover it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
EXAMPLES=${EXAMPLES:-200}

work=$(mktemp -d)
cleanup() {
  [ -n "${kw_pid:-}" ] && kill "$kw_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

venv=${SCHEMATHESIS_VENV:-$root/target/schemathesis-venv}
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

cargo build --release -q -p keyward --manifest-path "$root/Cargo.toml"
# The fuzzer sends many requests without or with bad credentials on purpose; keyward's
# brute-force guard (tested on its own) would answer them 429 and hide the answers under test.
cat >"$work/keyward.toml" <<TOML
failed_admin_auth_per_minute = 0
failed_verifications_per_minute = 0
TOML
RUST_LOG=warn "$root/target/release/keyward" serve --config "$work/keyward.toml" --listen 127.0.0.1:0 --data-dir "$work/data" \
  >"$work/serve.out" 2>"$work/serve.err" &
kw_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^keyward listening on //p' "$work/serve.out")
token=$(grep -o 'keyward_admin_[0-9A-Za-z]*' "$work/serve.out" | head -n1)
[ -n "$url" ] && [ -n "$token" ] || { echo "api-fuzz: keyward did not start" >&2; cat "$work/serve.err" >&2; exit 1; }

"$venv/bin/schemathesis" run "$url/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all --exclude-checks positive_data_acceptance \
  --exclude-path /v1/sys/seal \
  --max-examples "$EXAMPLES" --seed 1 --no-color
