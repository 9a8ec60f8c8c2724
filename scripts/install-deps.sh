#!/usr/bin/env bash
# Installs the Debian packages Conveyor needs, when they are missing.
#   scripts/install-deps.sh build   compiler, libraries (for `make demo`)
#   scripts/install-deps.sh test    the above plus test frameworks and test peers
#   scripts/install-deps.sh bench   the above plus gnuplot (the benchmark chart)
set -euo pipefail
profile="${1:-build}"

build_pkgs=(g++ cmake ninja-build pkg-config
  libsqlite3-dev nlohmann-json3-dev libfmt-dev libcli11-dev libtomlplusplus-dev
  libcpp-httplib-dev libssl-dev librabbitmq-dev libhiredis-dev zlib1g-dev libmimalloc-dev
  libhowardhinnant-date-dev libsimdjson-dev tzdata)
test_pkgs=(libgtest-dev libgmock-dev libbenchmark-dev sqlite3 python3 procps clang-format
  rabbitmq-server erlang-base openssl redis-server redis-tools
  python3-celery python3-redis python3-prometheus-client php-cli php-amqplib afl++ clang-tidy-14
  chromium chromium-driver python3-selenium)

# Peers the benchmark runs beside Conveyor: Sidekiq (Debian's), BullMQ (npm, on Node.js).
bench_pkgs=(gnuplot-nox ruby-sidekiq nodejs)
command -v npm > /dev/null 2>&1 || bench_pkgs+=(npm)

pkgs=("${build_pkgs[@]}")
if [ "$profile" = "test" ] || [ "$profile" = "bench" ]; then
  pkgs+=("${test_pkgs[@]}")
fi
if [ "$profile" = "bench" ]; then
  pkgs+=("${bench_pkgs[@]}")
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# BullMQ and ioredis at the versions bench/peers/bullmq/package-lock.json names, from the npm
# registry, once.
install_bullmq() {
  [ "$profile" = "bench" ] || return 0
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/bench/peers/bullmq"
  [ -d "$dir/node_modules/bullmq" ] && return 0
  echo "install-deps: installing BullMQ (npm ci in bench/peers/bullmq)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

if [ ${#missing[@]} -eq 0 ]; then
  install_bullmq
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "install-deps: missing packages (${missing[*]}) and not root; run as root or install sudo" >&2
    exit 1
  fi
fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
install_bullmq
