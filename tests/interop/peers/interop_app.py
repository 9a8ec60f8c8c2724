"""The Celery app of the interop tests (Debian python3-celery 5.2.6, unmodified).

Environment: INTEROP_BROKER (amqp://...), INTEROP_BACKEND (rpc:// or redis://...),
INTEROP_QUEUE (the default queue; unique per test).
"""
import os

from celery import Celery

app = Celery('interop', broker=os.environ['INTEROP_BROKER'],
             backend=os.environ.get('INTEROP_BACKEND', 'rpc://'))
app.conf.update(
    task_default_queue=os.environ.get('INTEROP_QUEUE', 'celery'),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


# Run by Conveyor workers; declared here so Python code can call .delay() on them.
@app.task(name='interop.add')
def add(x, y):
    raise RuntimeError('interop.add runs on Conveyor workers only')


@app.task(name='interop.xsum')
def xsum(numbers):
    raise RuntimeError('interop.xsum runs on Conveyor workers only')


# Run by Python workers.
@app.task(name='interop.py_add')
def py_add(x, y):
    return x + y


@app.task(name='interop.py_mul')
def py_mul(x, y):
    return x * y


@app.task(name='interop.py_xsum')
def py_xsum(numbers):
    return sum(numbers)


@app.task(name='interop.py_fail')
def py_fail(msg='boom'):
    raise ValueError(msg)
