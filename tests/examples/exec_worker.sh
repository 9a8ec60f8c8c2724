#!/usr/bin/env bash
# examples/exec-worker as its conveyor.toml says to use it: `conveyor worker` in (a copy of)
# the folder, then enqueues that wait for their results (the id, then the result's JSON).
#   exec_worker.sh CONVEYOR EXAMPLE_DIR
set -euo pipefail
cli="$1"
src="$2"
tmp="$(mktemp -d)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cp "$src/conveyor.toml" "$src/bill.php" "$tmp/"
cd "$tmp"
"$cli" worker > worker.log 2>&1 &
pid=$!

ok="$("$cli" enqueue orders.bill --kwargs '{"order": 42, "amount": 99}' --wait 30 | tail -n 1)"
bad="$("$cli" enqueue orders.bill --kwargs '{"order": -1}' --wait 30 | tail -n 1)"
/usr/bin/python3 - "$ok" "$bad" <<'PY' || { cat worker.log >&2; exit 1; }
import json, sys
ok, bad = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert ok["state"] == "SUCCESS" and ok["result"] == {"order": 42, "charged": 99}, ok
assert bad["state"] == "FAILURE" and bad["result"]["exc_type"] == "ValueError", bad
assert bad["retries"] == 0, bad  # exit 65: not retried
print("exec worker: success and a typed failure, as documented")
PY
