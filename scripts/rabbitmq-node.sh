#!/usr/bin/env bash
# A private RabbitMQ node for tests and benchmarks: its own node name, data directory, Erlang
# port mapper and free loopback ports, so it never touches a system broker.
#
#   scripts/rabbitmq-node.sh start DIR    start (or restart, reusing DIR's ports and data);
#                                         prints the AMQP URL and writes it to DIR/url, and the
#                                         TLS listener's amqps URL (own CA) to DIR/tls_url
#   scripts/rabbitmq-node.sh fresh DIR    stop whatever ran in DIR, wipe it, start a new node
#   scripts/rabbitmq-node.sh stop DIR     stop the node and its port mapper; keeps the data
#   scripts/rabbitmq-node.sh kill DIR     SIGKILL the node (a crash); keeps the data
#   scripts/rabbitmq-node.sh ctl DIR ARGS rabbitmqctl against the node
#
# Nodes of one cluster (scripts/rabbitmq-cluster.sh) share an Erlang port mapper and cookie:
# RABBITMQ_NODE_EPMD_PORT and RABBITMQ_NODE_COOKIE, read when DIR is first set up.
# RABBITMQ_NODE_MANAGEMENT=1 when DIR is first set up adds the management plugin on a free
# loopback port (its URL in DIR/management_url; statistics every 500 ms).
set -euo pipefail
cmd="${1:?usage: rabbitmq-node.sh start|fresh|stop|kill|ctl DIR}"
dir="${2:?usage: rabbitmq-node.sh start|fresh|stop|kill|ctl DIR}"
shift 2
if [ "$cmd" = "fresh" ]; then
  [ -f "$dir/ports" ] && "$0" stop "$dir"
  rm -rf "$dir"
  exec "$0" start "$dir"
fi
rmq=/usr/lib/rabbitmq/bin
[ -x "$rmq/rabbitmq-server" ] || { echo "rabbitmq-node: rabbitmq-server is not installed (make test-deps)" >&2; exit 1; }

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ ! -f "$dir/ports" ]; then
  echo "$(free_port) $(free_port) ${RABBITMQ_NODE_EPMD_PORT:-$(free_port)} conveyor-$$-$RANDOM $(free_port)" > "$dir/ports"
  if [ -n "${RABBITMQ_NODE_EPMD_PORT:-}" ]; then touch "$dir/shared_epmd"; fi
  if [ "${RABBITMQ_NODE_MANAGEMENT:-}" = "1" ]; then free_port > "$dir/management_port"; fi
  if [ -n "${RABBITMQ_NODE_COOKIE:-}" ]; then
    printf '%s' "$RABBITMQ_NODE_COOKIE" > "$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
  fi
fi
read -r amqp_port dist_port epmd_port name tls_port < "$dir/ports"
node="$name@localhost"

# Running the node as the invoking user (root included) keeps every file it writes in DIR.
export HOME="$dir" RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$amqp_port" \
  RABBITMQ_DIST_PORT="$dist_port" ERL_EPMD_PORT="$epmd_port" ERL_EPMD_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
  RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins" RABBITMQ_PID_FILE="$dir/pid" \
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -rabbit dead_letter_worker_publisher_confirm_timeout 5000"
# dead_letter_worker_publisher_confirm_timeout: a quorum queue's at-least-once dead-letter worker
# sends again what its target did not confirm after this many ms (RabbitMQ's default, 180 s, is
# checked on a timer of the same period: a delayed task that was on its way to a queue whose
# leader died would wait up to 6 minutes). Not in rabbitmq.conf's schema, hence an Erlang flag.

ctl() { "$rmq/rabbitmqctl" -n "$node" "$@"; }

case "$cmd" in
  start)
    if [ -f "$dir/management_port" ]; then
      echo '[rabbitmq_consistent_hash_exchange,rabbitmq_management].' > "$dir/enabled_plugins"
    else
      echo '[rabbitmq_consistent_hash_exchange].' > "$dir/enabled_plugins"
    fi
    if [ ! -f "$dir/tls/server.pem" ]; then
      # A throwaway CA and a server certificate for 127.0.0.1, for the TLS listener.
      mkdir -p "$dir/tls"
      (cd "$dir/tls" &&
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 \
          -subj "/CN=conveyor-test-ca" &&
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
          -subj "/CN=localhost" &&
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
          -out server.pem -days 30 -extfile san.ext) > "$dir/tls/openssl.log" 2>&1
      chmod 644 "$dir/tls/"*
    fi
    cat > "$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$amqp_port
listeners.ssl.1 = 127.0.0.1:$tls_port
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
log.console = false
log.file.level = warning
EOF
    if [ -f "$dir/management_port" ]; then
      cat >> "$dir/rabbitmq.conf" <<EOF
management.tcp.port = $(cat "$dir/management_port")
management.tcp.ip = 127.0.0.1
collect_statistics_interval = 500
EOF
    fi
    # From its own folder: a node that fails writes its crash dumps (MnesiaCore.*) there.
    (cd "$dir" && exec setsid "$rmq/rabbitmq-server" >> "$dir/server.log" 2>&1 < /dev/null) &
    deadline=$((SECONDS + 90))
    until ctl await_startup --timeout 5 > /dev/null 2>&1; do
      if [ $SECONDS -ge $deadline ]; then
        echo "rabbitmq-node: $node did not start within 90 s; see $dir/server.log" >&2
        tail -20 "$dir/server.log" >&2 || true
        exit 1
      fi
      sleep 0.5
    done
    echo "amqps://guest:guest@localhost:$tls_port/?cacert=$dir/tls/ca.pem" > "$dir/tls_url"
    echo "amqp://guest:guest@127.0.0.1:$amqp_port/" > "$dir/url"
    if [ -f "$dir/management_port" ]; then
      echo "http://127.0.0.1:$(cat "$dir/management_port")" > "$dir/management_url"
    fi
    cat "$dir/url"
    ;;
  stop)
    timeout 30 "$rmq/rabbitmqctl" -n "$node" stop > /dev/null 2>&1 || true
    if [ -f "$dir/pid" ]; then
      pid="$(cat "$dir/pid")"
      for _ in $(seq 100); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2> /dev/null || true
    fi
    # A port mapper shared by a cluster's nodes stays for the others.
    [ -f "$dir/shared_epmd" ] || /usr/bin/epmd -port "$epmd_port" -kill > /dev/null 2>&1 || true
    ;;
  kill)
    [ -f "$dir/pid" ] && kill -9 "$(cat "$dir/pid")" 2> /dev/null || true
    ;;
  name)
    echo "$node"
    ;;
  ctl)
    ctl "$@"
    ;;
  *)
    echo "rabbitmq-node: unknown command '$cmd'; use start, stop, kill or ctl" >&2
    exit 2
    ;;
esac
