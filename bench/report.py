"""Joins the benchmark's figures into one table (bench/results/latest.md), latest.json and a
chart (latest.png, gnuplot).  usage: report.py OUT_DIR ENGINES_JSON EXTRA_JSON..."""
import json
import subprocess
import sys

out_dir, engines = sys.argv[1], sys.argv[2]
fig = json.load(open(engines))
for extra in sys.argv[3:]:
    fig.update(json.load(open(extra)))

rows = [  # label, end-to-end key, enqueue key, chart label
    ('raw rabbitmq-c, same message (the limit)', 'raw_amqp_tasks_per_s', 'raw_amqp_enqueue_per_s',
     'raw\\nrabbitmq-c'),
    ('raw rabbitmq-c, bare 120 B body', 'raw_amqp_bare_tasks_per_s', 'raw_amqp_bare_enqueue_per_s',
     'raw, bare\\n120 B body'),
    ('Conveyor on RabbitMQ', 'conveyor_amqp_tasks_per_s', 'conveyor_amqp_enqueue_per_s',
     'Conveyor\\nRabbitMQ'),
    ('Celery 5.2.6 (prefork -c 2)', 'celery_tasks_per_s', 'celery_enqueue_per_s',
     'Celery\\n5.2.6'),
    ('php-amqplib', 'php_tasks_per_s', 'php_enqueue_per_s', 'php-amqplib'),
    ('Conveyor sqlite (sync=full)', 'conveyor_sqlite_tasks_per_s', 'conveyor_sqlite_enqueue_per_s',
     'Conveyor\\nsqlite full'),
    ('Conveyor sqlite (sync=normal)', 'conveyor_sqlite_normal_tasks_per_s',
     'conveyor_sqlite_normal_enqueue_per_s', 'Conveyor\\nsqlite normal'),
    ('Conveyor sqlite, 2+2 processes', 'conveyor_sqlite_processes_tasks_per_s',
     'conveyor_sqlite_processes_enqueue_per_s', 'Conveyor sqlite\\n2+2 processes'),
    ('Conveyor memory', 'conveyor_memory_tasks_per_s', 'conveyor_memory_enqueue_per_s',
     'Conveyor\\nmemory'),
]


def num(v):
    return '-' if v is None else '{:,.0f}'.format(v)


lines = ['| system | enqueue/s | end-to-end tasks/s |', '|---|---:|---:|']
for label, e2e, enq, _ in rows:
    lines.append('| %s | %s | %s |' % (label, num(fig.get(enq)), num(fig.get(e2e))))
# Side by side with the Redis-based queues: N no-op jobs enqueued in bulk, then one worker
# process drains them (Sidekiq -c 10, BullMQ concurrency 100; Redis without persistence).
sq_e, sq_d = fig.get('conveyor_sqlite_enqueue_per_s'), fig.get('conveyor_sqlite_tasks_per_s')
if fig.get('sidekiq_total_per_s') or fig.get('bullmq_total_per_s'):
    lines += ['', '| system, same N, one worker process | enqueue/s | drain/s | '
              'N / (enqueue + drain time) | steady state/s |', '|---|---:|---:|---:|---:|']
    if sq_e and sq_d:
        lines.append('| Conveyor sqlite (sync=full, fsync per enqueue and settlement) | %s | %s | %s | %s |' % (
            num(sq_e), num(sq_d), num(1 / (1 / sq_e + 1 / sq_d)),
            num(fig.get('conveyor_sqlite_steady_per_s'))))
    for label, key in (('Sidekiq 6.4.1 (push_bulk, -c 10)', 'sidekiq'),
                       ('BullMQ 6.7.6 (addBulk, concurrency 100)', 'bullmq')):
        if fig.get(key + '_total_per_s'):
            lines.append('| %s | %s | %s | %s | %s |' % (
                label, num(fig[key + '_enqueue_per_s']), num(fig[key + '_drain_per_s']),
                num(fig[key + '_total_per_s']), num(fig.get(key + '_steady_per_s'))))
raw = fig.get('raw_amqp_tasks_per_s')
conv = fig.get('conveyor_amqp_tasks_per_s')
cel = fig.get('celery_tasks_per_s')
lines.append('')
if raw and conv:
    lines.append('Conveyor on RabbitMQ / raw client: %.2fx' % (conv / raw))
if cel and conv:
    lines.append('Conveyor on RabbitMQ / Celery: %.1fx' % (conv / cel))
cpu = []
for label, key in (('raw rabbitmq-c', 'raw_amqp'), ('Conveyor on RabbitMQ', 'conveyor_amqp'),
                   ('Conveyor sqlite', 'conveyor_sqlite'), ('Conveyor memory', 'conveyor_memory')):
    if fig.get(key + '_worker_cpu_us'):
        cpu.append('%s %s + %s' % (label, fig[key + '_enqueue_cpu_us'], fig[key + '_worker_cpu_us']))
if cpu:
    lines.append('Client CPU per task, enqueue + worker (us): ' + '; '.join(cpu))
watch = []
for label, key in (('memory', 'conveyor_memory'), ('sqlite sync=normal', 'conveyor_sqlite_normal')):
    on, off = fig.get(key + '_watched_tasks_per_s'), fig.get(key + '_unwatched_tasks_per_s')
    if on and off:
        watch.append('%s %s vs %s tasks/s (%+.1f%%), worker CPU %s vs %s us per task' % (
            label, num(on), num(off), (on / off - 1) * 100, fig.get(key + '_watched_worker_cpu_us'),
            fig.get(key + '_unwatched_worker_cpu_us')))
if watch:
    lines.append('Metrics, /metrics listener and logs at their defaults, against none of them: ' +
                 '; '.join(watch))
lines.append('Enqueue-to-handler-start latency on RabbitMQ (prefetch 1,000, as the floor): '
             'p50 %s us, p99 %s us' % (num(fig.get('conveyor_amqp_latency_prefetch1000_p50_us')),
                                       num(fig.get('conveyor_amqp_latency_prefetch1000_p99_us'))))
lines.append('... with the worker\'s default prefetch (concurrency * 4 = 8): p50 %s us, p99 %s us' % (
    num(fig.get('conveyor_amqp_latency_p50_us')), num(fig.get('conveyor_amqp_latency_p99_us'))))
if fig.get('raw_amqp_latency_p99_us'):
    lines.append('The floor: raw rabbitmq-c, the same message at the same rate, send to receipt: '
                 'p50 %s us, p99 %s us' % (num(fig.get('raw_amqp_latency_p50_us')),
                                           num(fig.get('raw_amqp_latency_p99_us'))))
lines.append('Worker resident memory, idle: Conveyor %s MiB, Celery %s MiB (main + 2 pool '
             'processes); under load: Conveyor %s MiB, Celery %s MiB' % (
                 fig.get('conveyor_worker_rss_idle_mib', '-'), fig.get('celery_worker_rss_idle_mib', '-'),
                 fig.get('conveyor_worker_rss_load_mib', '-'), fig.get('celery_worker_rss_load_mib', '-')))
if fig.get('conveyor_sqlite_history_tasks_per_s'):
    lines.append('sqlite task history kept (the default) against ?history=0: %s against %s tasks/s, '
                 'worker CPU %s against %s us per task' % (
                     num(fig['conveyor_sqlite_history_tasks_per_s']),
                     num(fig['conveyor_sqlite_no_history_tasks_per_s']),
                     fig['conveyor_sqlite_history_worker_cpu_us'],
                     fig['conveyor_sqlite_no_history_worker_cpu_us']))
if fig.get('conveyor_sqlite_backlog_none_tasks_per_s'):
    parts = []
    for label, key in (('empty', 'backlog_none'), ('10,000 waiting', 'backlog_10k'),
                       ('1,000,000 waiting', 'backlog_1m'), ('100,000 delayed', 'delayed_100k')):
        parts.append('%s %s/%s' % (label, num(fig.get('conveyor_sqlite_%s_enqueue_per_s' % key)),
                                   num(fig.get('conveyor_sqlite_%s_tasks_per_s' % key))))
    lines.append('sqlite (sync=normal) with other tasks in the file, enqueue/s and end-to-end '
                 'tasks/s: ' + '; '.join(parts))
if fig.get('history_tasks'):
    lines.append('Dashboard task list over a sqlite history of %s tasks (ms, median of 7): newest page '
                 '%.2f, page by cursor %.2f, by state %.2f, by name %.2f, by queue %.2f, search one '
                 'id %.2f, search a common value %.2f, one task %.2f; search index built at %s tasks/s' % (
                     num(fig['history_tasks']), fig['history_list_ms'], fig['history_list_deep_ms'],
                     fig['history_state_ms'], fig['history_name_ms'], fig['history_queue_ms'],
                     fig['history_search_one_ms'], fig['history_search_some_ms'],
                     fig['history_task_ms'], num(fig['history_index_per_s'])))
table = '\n'.join(lines) + '\n'
print(table)
open(out_dir + '/latest.md', 'w').write(table)
json.dump(fig, open(out_dir + '/latest.json', 'w'), indent=2, sort_keys=True)

data = out_dir + '/latest.dat'
with open(data, 'w') as f:
    for _, e2e, _, short in rows:
        if fig.get(e2e):
            f.write('"%s" %f\n' % (short, fig[e2e]))
try:
    subprocess.run(['gnuplot'], input='''
set terminal pngcairo size 1100,520 font ",10"
set output "%s/latest.png"
set title "End-to-end no-op tasks per second (enqueue, worker, ack), median of 3 runs, 2-core VM"
set style fill solid 0.8
set boxwidth 0.6
set logscale y
set yrange [100:*]
set grid ytics
set ylabel "tasks/s (log scale)"
set xtics font ",9"
set bmargin 5
plot "%s" using 0:2:xtic(1) with boxes notitle lc rgb "#3a6ea5", \\
     "" using 0:2:(sprintf("%%.0f", $2)) with labels offset 0,0.7 notitle
''' % (out_dir, data), text=True, check=True)
except (OSError, subprocess.CalledProcessError) as e:
    print('chart not drawn: %s' % e, file=sys.stderr)
