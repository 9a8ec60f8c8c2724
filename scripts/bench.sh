#!/usr/bin/env bash
# `make bench`: the benchmark suite in one run. Starts a private RabbitMQ node, measures the raw
# rabbitmq-c limit and Conveyor's engines, prints the table and writes bench/results/latest.*.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
node=$(mktemp -d /tmp/conveyor-bench-node-XXXXXX)
trap '"$root/scripts/rabbitmq-node.sh" stop "$node" > /dev/null 2>&1 || true; rm -rf "$node"' EXIT
url=$("$root/scripts/rabbitmq-node.sh" fresh "$node" | head -1)
port=$(echo "$url" | sed -E 's|.*:([0-9]+)/.*|\1|')
n_amqp=${N_AMQP:-50000}
raw=$("$root/$build/bench/bench_raw_amqp" 127.0.0.1 "$port" "$n_amqp")
mkdir -p "$root/bench/results"
"$root/$build/bench/bench_engines" "${N_MEMORY:-200000}" "${N_SQLITE:-50000}" \
  "$root/bench/results/latest.json" "$url" "$n_amqp" $raw | tee "$root/bench/results/latest.md"
