"""Celery client side of the interop tests: sends tasks as any Python service would and prints
one JSON object with what came back.  usage: celery_client.py SCENARIO [ARGS...]"""
import json
import sys
import time

sys.path.insert(0, __import__('os').path.dirname(__file__))
from celery import chain, chord, group  # noqa: E402
from celery.utils import uuid  # noqa: E402
from interop_app import add, app, py_mul, py_xsum, xsum  # noqa: E402


def outcome(fn):
    """Runs fn; returns {'value': ...} or {'exc_type', 'exc_module', 'exc_message'}."""
    try:
        return {'value': fn()}
    except Exception as exc:  # noqa: BLE001 - report whatever the client raised
        return {'exc_type': type(exc).__name__, 'exc_module': type(exc).__module__,
                'exc_message': str(exc)}


def to_conveyor(routed_queue):
    out = {}
    # First, before any get(): with rpc://, AsyncResult.state reads the reply queue with
    # basic_get only until the client starts its result consumer.
    flaky = app.send_task('interop.flaky', ())
    states = []
    deadline = time.time() + 30
    while time.time() < deadline:
        s = flaky.state
        if not states or states[-1] != s:
            states.append(s)
        if s in ('SUCCESS', 'FAILURE'):
            break
        time.sleep(0.05)
    out['flaky_states'] = states
    out['flaky'] = outcome(lambda: flaky.get(timeout=30))
    r = app.send_task('interop.add', (2, 3))
    out['send_task'] = outcome(lambda: r.get(timeout=30))
    out['delay'] = outcome(lambda: add.delay(20, 22).get(timeout=30))
    out['kwargs'] = outcome(
        lambda: app.send_task('interop.add', kwargs={'x': 40, 'y': 2}).get(timeout=30))
    out['compressed'] = outcome(
        lambda: app.send_task('interop.add', (4, 4), compression='gzip').get(timeout=30))
    out['routed'] = outcome(
        lambda: app.send_task('interop.add', (1, 1), queue=routed_queue).get(timeout=30))
    failing = app.send_task('interop.fail', ('kaboom',))
    out['failure'] = outcome(lambda: failing.get(timeout=30))
    out['failure_state'] = failing.state
    print(json.dumps(out))


def canvas(cv_queue, py_queue):
    """Workflows built in Python whose tasks run partly or wholly on Conveyor workers."""
    def cv(sig):
        return sig.set(queue=cv_queue)

    def py(sig):
        return sig.set(queue=py_queue)

    out = {}
    out['chain_conveyor'] = outcome(
        lambda: chain(cv(add.s(2, 3)), cv(add.s(10)), cv(add.s(1)))().get(timeout=30))
    out['chain_mixed'] = outcome(
        lambda: chain(cv(add.s(2, 3)), py(py_mul.s(10)), cv(add.s(1)))().get(timeout=30))
    out['group_mixed'] = outcome(
        lambda: group(cv(add.s(1, 1)), py(py_mul.s(3, 3)), cv(add.s(2, 2)))().get(timeout=30))
    header = [cv(add.s(i, i)) for i in range(3)] + [py(py_mul.s(i, 2)) for i in range(3, 5)]
    out['chord_mixed_conveyor_body'] = outcome(
        lambda: chord(header, cv(xsum.s()))().get(timeout=30))
    out['chord_python_body'] = outcome(
        lambda: chord([cv(add.s(i, i)) for i in range(4)], py(py_xsum.s()))().get(timeout=30))
    child = uuid()
    parent = add.apply_async((2, 3), queue=cv_queue,
                             link=py(py_mul.s(10)).set(task_id=child))
    out['link'] = outcome(lambda: [parent.get(timeout=30),
                                   app.AsyncResult(child).get(timeout=30)])
    # AsyncResult.children: what a task sent as it finished, read from the result backend.
    out['link_children'] = [c.id for c in app.AsyncResult(parent.id).children or []]
    out['link_child'] = child
    last = chain(cv(add.s(1, 2)), cv(add.s(3)))()
    last.get(timeout=30)
    out['chain_children'] = [c.id for c in app.AsyncResult(last.parent.id).children or []]
    out['chain_last'] = last.id
    print(json.dumps(out))


def wait_for(task_id):
    """Waits for a result of a task someone else sent (redis backend)."""
    r = app.AsyncResult(task_id)
    print(json.dumps({'result': outcome(lambda: r.get(timeout=30)), 'state': r.state}))


def started():
    """Celery's track_started: STARTED is seen while the task runs on a Conveyor worker."""
    r = app.send_task('interop.sleep', (2,))
    states = []
    deadline = time.time() + 30
    while time.time() < deadline:
        s = r.state
        if not states or states[-1] != s:
            states.append(s)
        if s in ('SUCCESS', 'FAILURE'):
            break
        time.sleep(0.05)
    print(json.dumps({'states': states, 'info': r.info if r.state == 'SUCCESS' else None}))


def typed():
    """exec and http handlers that name their failure: raised as that type in Python."""
    out = {}
    for name in ('exec_typed', 'http_typed', 'exec_php_like', 'exec_retry_later'):
        out[name] = outcome(lambda: app.send_task('interop.' + name).get(timeout=30))
    print(json.dumps(out))


if __name__ == '__main__':
    scenario = sys.argv[1]
    if scenario == 'started':
        started()
    elif scenario == 'typed':
        typed()
    elif scenario == 'to_conveyor':
        to_conveyor(sys.argv[2])
    elif scenario == 'canvas':
        canvas(sys.argv[2], sys.argv[3])
    elif scenario == 'wait_for':
        wait_for(sys.argv[2])
    else:
        sys.exit('unknown scenario ' + scenario)
