"""Celery 5.2.6 (Debian) doing the benchmark's work: N no-op tasks sent with send_task, then an
unmodified prefork worker (-c 2, acks_late) runs them (its rate from its first task on, so its
start-up time is not counted). Prints JSON: enqueue/s, end-to-end/s and the worker's resident
memory (main process and pool children), idle (a started worker on an empty queue) and under
load.
usage: celery_bench.py BROKER_URL N"""
import json
import os
import subprocess
import sys
import time

import amqp

BROKER, N = sys.argv[1], int(sys.argv[2])
QUEUE = 'celery-bench-%d' % os.getpid()
HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.update(BENCH_BROKER=BROKER, BENCH_QUEUE=QUEUE)
sys.path.insert(0, HERE)
from bench_app import app  # noqa: E402


def rss_mib(pid):
    """Resident memory of a process and its children, MiB."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open('/proc/%d/status' % p) as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


def depth():
    host, port = BROKER.split('@')[1].split('/')[0].split(':')
    c = amqp.Connection('%s:%s' % (host, port), userid='guest', password='guest')
    c.connect()
    ch = c.channel()
    _, count, _ = ch.queue_declare(QUEUE, passive=True)
    c.close()
    return count


log = open('/tmp/%s.log' % QUEUE, 'w')


def start_worker(queue):
    return subprocess.Popen(['/usr/bin/python3', '-m', 'celery', '-A', 'bench_app', 'worker',
                             '-c', '2', '-Q', queue, '--without-mingle', '--without-gossip',
                             '--loglevel', 'WARNING', '-n', queue + '@localhost'],
                            cwd=HERE, stdout=log, stderr=log)


def run_once():
    """Enqueue N, then a worker runs them; its rate counts from its first task on (not its
    start-up time). Returns (enqueue/s, end-to-end/s, RSS under load)."""
    t0 = time.time()
    with app.producer_or_acquire() as producer:
        for i in range(N):
            app.send_task('bench.noop', (i,), queue=QUEUE, ignore_result=True, producer=producer)
    t1 = time.time()
    worker = start_worker(QUEUE)
    while depth() >= N:
        time.sleep(0.01)
    start = time.time()
    left = depth()
    loaded = 0.0
    while depth() > 0:
        loaded = max(loaded, rss_mib(worker.pid))
        time.sleep(0.02)
    t3 = time.time()
    worker.terminate()
    worker.wait(30)
    return N / (t1 - t0), left / (t3 - start), loaded


# Idle: a worker on an empty queue, once it has started.
idler = start_worker(QUEUE + '-idle')
time.sleep(4)
idle = rss_mib(idler.pid)
idler.terminate()
idler.wait(30)

# The median (by end-to-end rate) of BENCH_REPEAT runs, as for Conveyor's figures.
runs = sorted((run_once() for _ in range(int(os.environ.get('BENCH_REPEAT', '3')))),
              key=lambda r: r[1])
enq, e2e, loaded = runs[len(runs) // 2]
print(json.dumps({'enqueue_per_s': round(enq), 'tasks_per_s': round(e2e),
                  'rss_idle_mib': round(idle, 1), 'rss_load_mib': round(loaded, 1)}))
