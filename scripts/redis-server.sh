#!/usr/bin/env bash
# A private redis-server for tests: loopback only, a free port, no persistence.
#   scripts/redis-server.sh start DIR   start it (or restart, reusing DIR's port); prints the URL
#   scripts/redis-server.sh stop DIR    stop it
# DIR/url holds redis://127.0.0.1:PORT/0.
set -euo pipefail
cmd=${1:?usage: redis-server.sh start|stop DIR}
dir=${2:?usage: redis-server.sh start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case "$cmd" in
  start)
    [ -f "$dir/redis.pid" ] && "$0" stop "$dir"
    if [ ! -f "$dir/port" ]; then
      /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' > "$dir/port"
    fi
    port=$(cat "$dir/port")
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
      --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" > /dev/null
    for _ in $(seq 1 100); do
      if [ "$(redis-cli -p "$port" ping 2> /dev/null)" = "PONG" ]; then
        echo "redis://127.0.0.1:$port/0" > "$dir/url"
        cat "$dir/url"
        exit 0
      fi
      sleep 0.1
    done
    echo "redis-server did not start; see $dir/redis.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$dir/redis.pid" ]; then
      pid=$(cat "$dir/redis.pid")
      kill "$pid" 2> /dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2> /dev/null || true
      rm -f "$dir/redis.pid"
    fi
    ;;
  *)
    echo "usage: redis-server.sh start|stop DIR" >&2
    exit 2
    ;;
esac
