"""Celery's monitoring and remote control pointed at a Conveyor worker: inspect, revoke,
shutdown and the event stream, as `celery inspect`, `celery control`, `celery events` and
Flower use them.  usage: celery_monitor.py SCENARIO NODE; prints one JSON object."""
import json
import sys
import threading
import time

sys.path.insert(0, __import__('os').path.dirname(__file__))
from interop_app import app  # noqa: E402


def outcome(fn):
    try:
        return {'value': fn()}
    except Exception as exc:  # noqa: BLE001
        return {'exc_type': type(exc).__name__, 'exc_message': str(exc)}


def until(pred, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    return None


def inspect(node):
    i = app.control.inspect(destination=[node], timeout=2.0)
    out = {'ping': i.ping(), 'registered': i.registered(), 'stats': i.stats(),
           'scheduled': i.scheduled()}
    running = app.send_task('interop.sleep', (30,))
    out['active'] = until(lambda: (i.active() or {}).get(node))
    out['running_id'] = running.id
    out['query_task'] = i.query_task([running.id])
    # revoke --terminate stops the running task; its result is REVOKED.
    app.control.revoke(running.id, terminate=True)
    out['terminated'] = outcome(lambda: running.get(timeout=20))
    out['terminated_state'] = running.state
    # A task revoked before it arrives never runs.
    later = app.send_task('interop.add', (1, 2), countdown=2)
    app.control.revoke(later.id)
    out['revoked'] = outcome(lambda: later.get(timeout=20))
    out['revoked_state'] = later.state
    out['revoked_list'] = i.revoked()
    out['unknown'] = app.control.broadcast('no_such_cmd', destination=[node], reply=True,
                                           timeout=2.0)
    print(json.dumps(out))


def events(node):
    state = app.events.State()
    seen = []
    ready = threading.Event()

    def on_event(event):
        seen.append(event)
        state.event(event)

    with app.connection() as conn:
        recv = app.events.Receiver(conn, handlers={'*': on_event})

        def run():
            ready.set()
            recv.capture(limit=None, timeout=None, wakeup=True)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        ready.wait()
        time.sleep(0.5)
        print('LISTENING', flush=True)
        # The worker starts now: its worker-online event is the first thing it sends.
        until(lambda: state.workers.get(node) is not None and state.workers[node].alive, 60)
        ok = app.send_task('interop.add', (2, 3))
        bad = app.send_task('interop.fail', ('kaboom',))
        flaky = app.send_task('interop.flaky', ())
        results = {'ok': outcome(lambda: ok.get(timeout=20)),
                   'bad': outcome(lambda: bad.get(timeout=20)),
                   'flaky': outcome(lambda: flaky.get(timeout=20))}
        time.sleep(4.5)  # two heartbeats
        worker = state.workers.get(node)
        alive_before = bool(worker and worker.alive)
        app.control.shutdown(destination=[node])
        until(lambda: any(e.get('type') == 'worker-offline' and e.get('hostname') == node
                          for e in seen), 15)
        recv.should_stop = True
        tasks = {}
        for name, r in (('ok', ok), ('bad', bad), ('flaky', flaky)):
            task = state.tasks.get(r.id)
            tasks[name] = {'state': task.state if task else None,
                           'types': [e['type'] for e in seen if e.get('uuid') == r.id],
                           'result': task.result if task else None}
        print(json.dumps({
            'results': results,
            'worker_alive': alive_before,
            'worker_types': sorted({e['type'] for e in seen
                                    if e.get('hostname') == node and
                                    e['type'].startswith('worker-')}),
            'heartbeats': sum(1 for e in seen if e.get('hostname') == node and
                              e['type'] == 'worker-heartbeat'),
            'sw_ident': worker.sw_ident if worker else None,
            'tasks': tasks,
        }))


def consumers(node):
    """add_consumer / cancel_consumer / active_queues / conf, and commands Conveyor does not
    carry out (rate_limit, ...)."""
    extra = node.split('@')[0] + '-extra'
    ctl = app.control
    out = {'add': ctl.add_consumer(extra, destination=[node], reply=True, timeout=2.0)}
    i = app.control.inspect(destination=[node], timeout=2.0)
    out['active_queues'] = [q['name'] for q in (i.active_queues() or {}).get(node, [])]
    r = app.send_task('interop.add', (20, 22), queue=extra)
    out['on_extra'] = outcome(lambda: r.get(timeout=20))
    out['cancel'] = ctl.cancel_consumer(extra, destination=[node], reply=True, timeout=2.0)
    out['active_queues_after'] = [q['name'] for q in (i.active_queues() or {}).get(node, [])]
    out['conf'] = i.conf()
    out['rate_limit'] = ctl.rate_limit('interop.add', '10/m', destination=[node], reply=True,
                                       timeout=2.0)
    out['pool_grow'] = ctl.pool_grow(1, destination=[node], reply=True, timeout=2.0)
    print(json.dumps(out))


def rate_limit(node):
    """`celery control rate_limit` on a task of a Conveyor worker; prints the replies."""
    out = {'set': app.control.rate_limit('interop.add', '5/s', destination=[node], reply=True,
                                         timeout=2.0)}
    print(json.dumps(out))


if __name__ == '__main__':
    {'inspect': inspect, 'events': events,
     'consumers': consumers, 'rate_limit': rate_limit}[sys.argv[1]](sys.argv[2])
