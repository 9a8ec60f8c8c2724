"""Draws the sqlite engine's cost curves (bench_curves' JSON) as charts, one per curve, and a
table: bench/results/curves.md and curves-*.png (gnuplot).  usage: curves.py OUT_DIR CURVES_JSON"""
import json
import os
import subprocess
import sys

out_dir, src = sys.argv[1], sys.argv[2]
c = json.load(open(src))
k = 'conveyor_sqlite_'


def g(key):
    return c.get(k + key)


def num(v):
    return '-' if v is None else '{:,.0f}'.format(v)


def plot(name, title, ylabel, rows, series, logscale=False):
    """A clustered bar chart: rows are (label, [values...]), series the names of the values."""
    data = os.path.join(out_dir, name + '.dat')
    with open(data, 'w') as f:
        for label, values in rows:
            f.write('"%s" %s\n' % (label, ' '.join('%f' % (v or 0) for v in values)))
    cols = ', '.join('"%s" using %d%s title "%s"' % (
        data if i == 0 else '', i + 2, ':xtic(1)' if i == 0 else '', s) for i, s in enumerate(series))
    script = '''
set terminal pngcairo size 900,420 font ",10"
set output "%s"
set title "%s"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.8
set grid ytics
set ylabel "%s"
set key top right
%s
set yrange [%s:*]
plot %s
''' % (os.path.join(out_dir, name + '.png'), title, ylabel,
       'set logscale y' if logscale else '', '1' if logscale else '0', cols)
    try:
        subprocess.run(['gnuplot'], input=script, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print('chart %s not drawn: %s' % (name, e), file=sys.stderr)
    os.remove(data)


n = num(g('curves_tasks'))
lines = ['Cost curves of the sqlite engine (sync=normal, N = %s no-op tasks a point unless said, '
         'median of 3 runs, fresh file each)' % n, '']

rows = [('%d worker process%s' % (w, '' if w == 1 else 'es'),
         [g('workers_%d_tasks_per_s' % w), g('steady_%d_tasks_per_s' % w)]) for w in (1, 2, 4)]
if rows[0][1][0]:
    lines += ['| worker processes | drain/s (N enqueued first) | steady state/s (2 producer '
              'processes at once) |', '|---|---:|---:|']
    lines += ['| %s | %s | %s |' % (label, num(a), num(b)) for label, (a, b) in rows]
    plot('curves-workers', 'sqlite: tasks/s by worker processes on one file', 'tasks/s', rows,
         ['drain (N enqueued first)', 'steady state (2 producers at once)'])

rows = [('%d queue%s' % (q, '' if q == 1 else 's'),
         [g('queues_%d_enqueue_per_s' % q), g('queues_%d_tasks_per_s' % q)]) for q in (1, 8)]
rows += [(label, [g(key + '_enqueue_per_s'), g(key + '_tasks_per_s')]) for label, key in (
    ('100 B payload', 'payload_100b'), ('10 KB payload', 'payload_10kb'),
    ('1 MB payload', 'payload_1mb'))]
if rows[0][1][0]:
    lines += ['', '| one worker process | enqueue/s | drain/s | drain MB/s |', '|---|---:|---:|---:|']
    sizes = [None, None, 100, 10240, 1048576]
    for (label, (e, d)), size in zip(rows, sizes):
        mb = '-' if size is None or d is None else '%.1f' % (d * size / 1e6)
        lines.append('| %s | %s | %s | %s |' % (label, num(e), num(d), mb))
    plot('curves-queues-payload', 'sqlite: tasks/s by queues and by payload size (log scale)',
         'tasks/s', rows, ['enqueue', 'drain'], logscale=True)

keys = (('empty', 'backlog_none'), ('10,000 waiting', 'backlog_10k'),
        ('%s waiting' % num(g('backlog_tasks')), 'backlog_1m'), ('100,000 delayed', 'delayed_100k'))
rows = [(label, [g(key + '_enqueue_per_s'), g(key + '_tasks_per_s')]) for label, key in keys]
if rows[0][1][0]:
    lines += ['', '| other tasks in the file | enqueue/s | drain/s | counting the queues (ms) | '
              'file (MiB) |', '|---|---:|---:|---:|---:|']
    for (label, key), (_, (e, d)) in zip(keys, rows):
        lines.append('| %s | %s | %s | %s | %s |' % (
            label, num(e), num(d), g(key + '_stats_ms'), g(key + '_file_mib')))
    lines.append('')
    lines.append('Worker resident memory while it works: on an empty file %s MiB, on %s waiting '
                 'tasks %s MiB' % (g('worker_rss_empty_mib'), num(g('backlog_tasks')),
                                   g('worker_rss_backlog_mib')))
    plot('curves-backlog', 'sqlite: tasks/s with other tasks in the file', 'tasks/s', rows,
         ['enqueue', 'drain'])

kept, gone = g('space_history_mib'), g('space_no_history_mib')
if kept and gone:
    lines += ['', 'File size (MiB) after each round of N tasks enqueued and run: history kept (the '
              'default, 7 days / 1,000,000 tasks) %s; ?history=0 %s' % (kept, gone)]
    plot('curves-space', 'sqlite: file size after rounds of N tasks enqueued and run', 'MiB',
         [('round %d' % (i + 1), [a, b]) for i, (a, b) in enumerate(zip(kept, gone))],
         ['history kept (default)', 'history=0'])

keys = (('no limit', 'limits_none'), ('rate limit (1,000,000/s: never holds back)', 'limits_rate'),
        ('concurrency limit (1,000,000: never holds back)', 'limits_concurrency'),
        ('rate limit per key, a key per task', 'limits_rate_per_key'),
        ('fair queue, a tenant per task', 'limits_fair'))
rows = [(label, [g(key + '_enqueue_per_s'), g(key + '_tasks_per_s')]) for label, key in keys]
if rows[0][1][1]:
    base = rows[0][1][1]
    lines += ['', '| flow control, one worker process | enqueue/s | drain/s | drain vs no limit |',
              '|---|---:|---:|---:|']
    for label, (e, d) in rows:
        lines.append('| %s | %s | %s | %s |' % (
            label, num(e), num(d), '-' if not d else '%.2fx' % (d / base)))
    plot('curves-limits', 'sqlite: the cost of deciding a limit', 'tasks/s',
         [(label.split(' (')[0], v) for label, v in rows], ['enqueue', 'drain'])

table = '\n'.join(lines) + '\n'
print(table)
open(os.path.join(out_dir, 'curves.md'), 'w').write(table)
