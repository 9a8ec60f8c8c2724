#!/usr/bin/env bash
# A private RabbitMQ cluster for tests: N nodes on loopback (scripts/rabbitmq-node.sh each, with
# its own ports and data), sharing one Erlang port mapper and cookie, joined with
# `rabbitmqctl join_cluster`.
#
#   scripts/rabbitmq-cluster.sh start DIR N      start N nodes in DIR/node1..N and join them;
#                                                prints the failover URL (every node, ';'-separated)
#                                                and writes it to DIR/url
#   scripts/rabbitmq-cluster.sh kill DIR K       SIGKILL node K (a crash)
#   scripts/rabbitmq-cluster.sh restart DIR K    start node K again; it rejoins the cluster
#   scripts/rabbitmq-cluster.sh running DIR      how many nodes the cluster sees running
#   scripts/rabbitmq-cluster.sh leader DIR QUEUE the number K of the node leading a quorum queue
#   scripts/rabbitmq-cluster.sh queues DIR       every queue: name, type, leader, messages
#   scripts/rabbitmq-cluster.sh stop DIR         stop every node and the port mapper
set -euo pipefail
cmd="${1:?usage: rabbitmq-cluster.sh start|kill|restart|running|leader|stop DIR ...}"
dir="${2:?usage: rabbitmq-cluster.sh start|kill|restart|running|leader|stop DIR ...}"
here="$(cd "$(dirname "$0")" && pwd)"
node_sh="$here/rabbitmq-node.sh"
free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# rabbitmqctl against any running node.
any_ctl() {
  for n in "$dir"/node*; do
    if "$node_sh" ctl "$n" status > /dev/null 2>&1; then "$node_sh" ctl "$n" "$@"; return; fi
  done
  echo "rabbitmq-cluster: no node is running" >&2
  return 1
}

case "$cmd" in
  start)
    n="${3:?usage: rabbitmq-cluster.sh start DIR N}"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [ -f "$dir/epmd_port" ] || free_port > "$dir/epmd_port"
    [ -f "$dir/cookie" ] || (head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/cookie")
    export RABBITMQ_NODE_EPMD_PORT="$(cat "$dir/epmd_port")"
    export RABBITMQ_NODE_COOKIE="$(cat "$dir/cookie")"
    urls=()
    for k in $(seq "$n"); do
      url="$("$node_sh" start "$dir/node$k")"
      urls+=("${url%/}//")
      if [ "$k" -gt 1 ]; then
        first="$("$node_sh" name "$dir/node1")"
        "$node_sh" ctl "$dir/node$k" stop_app > /dev/null
        "$node_sh" ctl "$dir/node$k" join_cluster "$first" > "$dir/node$k/join.log" 2>&1
        "$node_sh" ctl "$dir/node$k" start_app > /dev/null
      fi
    done
    # Every node sees every other before anything is declared: a quorum queue declared while
    # the cluster still forms may start without its dead-letter worker.
    for k in $(seq "$n"); do
      "$node_sh" ctl "$dir/node$k" await_online_nodes "$n" --timeout 60000 > /dev/null 2>&1 || true
    done
    (IFS=';'; echo "${urls[*]}") > "$dir/url"
    cat "$dir/url"
    ;;
  kill)
    "$node_sh" kill "$dir/node${3:?node number}"
    ;;
  restart)
    export RABBITMQ_NODE_EPMD_PORT="$(cat "$dir/epmd_port")"
    export RABBITMQ_NODE_COOKIE="$(cat "$dir/cookie")"
    "$node_sh" start "$dir/node${3:?node number}" > /dev/null
    ;;
  running)
    any_ctl cluster_status --formatter json |
      /usr/bin/python3 -c 'import json, sys; print(len(json.load(sys.stdin)["running_nodes"]))'
    ;;
  leader)
    queue="${3:?queue name}"
    leader="$(any_ctl list_queues name leader --formatter json |
      /usr/bin/python3 -c 'import json, sys
q = [x for x in json.load(sys.stdin) if x["name"] == sys.argv[1]]
print(q[0]["leader"] if q else "")' "$queue")"
    for n in "$dir"/node*; do
      if [ "$("$node_sh" name "$n")" = "$leader" ]; then echo "${n##*node}"; exit 0; fi
    done
    echo "rabbitmq-cluster: no node leads '$queue' (leader '$leader')" >&2
    exit 1
    ;;
  queues)
    any_ctl list_queues name type leader messages --no-table-headers 2> /dev/null
    ;;
  stop)
    # All at once: a node stopping alone waits for the others it cannot reach.
    for n in "$dir"/node*; do [ -d "$n" ] && "$node_sh" stop "$n" & done
    wait
    [ -f "$dir/epmd_port" ] && /usr/bin/epmd -port "$(cat "$dir/epmd_port")" -kill > /dev/null 2>&1 || true
    ;;
  *)
    echo "rabbitmq-cluster: unknown command '$cmd'" >&2
    exit 2
    ;;
esac
