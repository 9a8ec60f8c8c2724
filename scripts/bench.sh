#!/usr/bin/env bash
# `make bench`: the benchmark suite in one run, on one private RabbitMQ node: the raw rabbitmq-c
# limit, Conveyor on RabbitMQ (throughput, latency, worker memory), Celery 5.2.6, php-amqplib,
# Sidekiq and BullMQ, Conveyor's embedded engines and the sqlite engine's cost curves. Prints the
# tables and writes bench/results/latest.{md,json,png}, curves.md and curves-*.png.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/conveyor-bench-XXXXXX)
cleanup() {
  [ -n "${worker_pid:-}" ] && kill "$worker_pid" 2> /dev/null || true
  "$root/scripts/rabbitmq-node.sh" stop "$work/node" > /dev/null 2>&1 || true
  "$root/scripts/redis-server.sh" stop "$work/redis" > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
url=$("$root/scripts/rabbitmq-node.sh" fresh "$work/node" | head -1)
port=$(echo "$url" | sed -E 's|.*:([0-9]+)/.*|\1|')
n_amqp=${N_AMQP:-50000}
n_peer=${N_PEER:-10000}
out="$root/bench/results"
mkdir -p "$out"

echo "raw rabbitmq-c ..." >&2
# The median (by end-to-end rate) of BENCH_REPEAT runs, as for Conveyor's figures.
median_run() {
  for _ in $(seq "${BENCH_REPEAT:-3}"); do "$root/$build/bench/bench_raw_amqp" "$@"; done |
    sort -n -k2 | awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }'
}
raw=$(median_run 127.0.0.1 "$port" "$n_amqp")
bare=$(median_run 127.0.0.1 "$port" "$n_amqp" bare)
echo "$bare" | awk '{printf "{\"raw_amqp_bare_enqueue_per_s\": %s, \"raw_amqp_bare_tasks_per_s\": %s, \"raw_amqp_bare_enqueue_cpu_us\": %s, \"raw_amqp_bare_worker_cpu_us\": %s}\n", $1, $2, $3, $4}' \
  > "$work/bare.json"

# A private redis-server: the Redis result backend (RabbitMQ's limits), then Sidekiq and BullMQ.
redis_url=$("$root/scripts/redis-server.sh" start "$work/redis")
redis_port=$(cat "$work/redis/port")

echo "Conveyor engines ..." >&2
BENCH_REDIS_URL="$redis_url" "$root/$build/bench/bench_engines" "${N_MEMORY:-200000}" "${N_SQLITE:-50000}" \
  "$work/engines.json" "$url" "$n_amqp" $raw >&2

# The floor under that latency: the raw client, the same message at the same rate (half
# Conveyor's end-to-end rate on RabbitMQ), send to receipt.
# (A failure loses that figure only, as a failed latency run of Conveyor's reports none.)
echo '{}' > "$work/raw-latency.json"
if [ -z "${BENCH_NO_LATENCY+set}" ]; then
  echo "raw rabbitmq-c latency ..." >&2
  rate=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["conveyor_amqp_tasks_per_s"] / 2)' "$work/engines.json")
  if floor=$("$root/$build/bench/bench_raw_amqp" 127.0.0.1 "$port" 0 latency "$rate" 5) &&
    [[ "$floor" =~ ^[0-9]+\ [0-9]+$ ]]; then
    echo "$floor" | awk '{printf "{\"raw_amqp_latency_p50_us\": %s, \"raw_amqp_latency_p99_us\": %s}\n", $1, $2}' > "$work/raw-latency.json"
  else
    echo "raw rabbitmq-c latency: no figure ($floor)" >&2
  fi
fi

echo "Conveyor worker, idle ..." >&2
cat > "$work/conveyor.toml" <<TOML
broker = "$url"
[[task]]
name = "bench.noop"
queue = "rss"
exec = ["true"]
TOML
"$root/$build/conveyor" --config "$work/conveyor.toml" worker > "$work/worker.log" 2>&1 &
worker_pid=$!
sleep 2
rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$worker_pid/status")
kill "$worker_pid"; wait "$worker_pid" 2> /dev/null || true; worker_pid=
echo "{\"conveyor_worker_rss_idle_mib\": $rss}" > "$work/rss.json"

echo "Celery 5.2.6 ..." >&2
/usr/bin/python3 "$root/bench/peers/celery_bench.py" "$url" "$n_peer" | tail -1 |
  /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"celery_tasks_per_s": d["tasks_per_s"], "celery_enqueue_per_s": d["enqueue_per_s"], "celery_worker_rss_idle_mib": d["rss_idle_mib"], "celery_worker_rss_load_mib": d["rss_load_mib"]}))' \
  > "$work/celery.json"

echo "php-amqplib ..." >&2
for _ in $(seq "${BENCH_REPEAT:-3}"); do php "$root/bench/peers/php_bench.php" "$port" "$n_amqp" | tail -1; done |
  /usr/bin/python3 -c 'import json,sys; runs=sorted((json.loads(l) for l in sys.stdin), key=lambda d: d["tasks_per_s"]); d=runs[len(runs)//2]; print(json.dumps({"php_tasks_per_s": d["tasks_per_s"], "php_enqueue_per_s": d["enqueue_per_s"]}))' \
  > "$work/php.json"

# The Redis-based peers, same N as the sqlite engine, no-op jobs, Redis without persistence:
# the median run (by N over enqueue + drain time) of BENCH_REPEAT.
echo "Sidekiq and BullMQ on a private redis-server ..." >&2
redis-cli -p "$redis_port" FLUSHALL > /dev/null  # Conveyor's results and limits out of the way
n_redis=${N_SQLITE:-50000}
median_peer() {
  /usr/bin/python3 -c 'import json,sys
runs = sorted((json.loads(l) for l in sys.stdin if l.startswith("{")), key=lambda d: d["total_per_s"])
d, p = runs[len(runs) // 2], sys.argv[1]
print(json.dumps({p + "_" + k: d[k] for k in ("enqueue_per_s", "drain_per_s", "total_per_s", "steady_per_s")}))' "$1"
}
for _ in $(seq "${BENCH_REPEAT:-3}"); do
  ruby "$root/bench/peers/sidekiq_bench.rb" "$redis_url" "$n_redis" 2> /dev/null | tail -1
done | median_peer sidekiq > "$work/sidekiq.json"
for _ in $(seq "${BENCH_REPEAT:-3}"); do
  node "$root/bench/peers/bullmq/bullmq_bench.mjs" "$redis_port" "$n_redis" 2> /dev/null | tail -1
done | median_peer bullmq > "$work/bullmq.json"
"$root/scripts/redis-server.sh" stop "$work/redis" > /dev/null

echo "dashboard task list over a big history ..." >&2
"$root/$build/bench/bench_history" "${N_HISTORY:-1000000}" "$work/history.json" >&2

echo "sqlite cost curves ..." >&2
"$root/$build/bench/bench_curves" "${N_SQLITE:-50000}" "$work/curves.json"

/usr/bin/python3 "$root/bench/report.py" "$out" "$work/engines.json" "$work/rss.json" \
  "$work/celery.json" "$work/php.json" "$work/bare.json" "$work/history.json" \
  "$work/sidekiq.json" "$work/bullmq.json" "$work/curves.json" "$work/raw-latency.json"
/usr/bin/python3 "$root/bench/curves.py" "$out" "$work/curves.json"
rm -f "$out/latest.dat"
