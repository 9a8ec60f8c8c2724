"""The Celery app of the benchmark: one no-op task, late acks (as Conveyor acks)."""
import os

from celery import Celery

app = Celery('bench', broker=os.environ['BENCH_BROKER'])
app.conf.update(task_acks_late=True, worker_hijack_root_logger=False,
                task_default_queue=os.environ.get('BENCH_QUEUE', 'celery'))


@app.task(name='bench.noop')
def noop(i):
    return None
