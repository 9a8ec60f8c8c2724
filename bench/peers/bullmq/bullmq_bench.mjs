// BullMQ beside Conveyor: N no-op jobs added with addBulk (batches of 1,000), then one Worker
// (concurrency 100, in this process) runs them; BullMQ's defaults otherwise (completed jobs
// kept). Prints one JSON line: enqueue_per_s, drain_per_s (from the worker's start to the last
// completion), total_per_s (N over enqueue + drain time), steady_per_s (N more added the same
// way while that worker runs: N over the time from the first add to the last completion).
// usage: node bullmq_bench.mjs REDIS_PORT N
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const port = Number(process.argv[2]);
const n = Number(process.argv[3] || 10000);
const connect = () => new IORedis({ host: '127.0.0.1', port, maxRetriesPerRequest: null });
const connection = connect();
const name = `bench-${process.pid}`;

const queue = new Queue(name, { connection });
await queue.obliterate({ force: true }).catch(() => {});
const t0 = process.hrtime.bigint();
for (let first = 0; first < n; first += 1000) {
  const jobs = [];
  for (let i = first; i < Math.min(n, first + 1000); ++i) jobs.push({ name: 'noop', data: { i } });
  await queue.addBulk(jobs);
}
const t1 = process.hrtime.bigint();
let done = 0;
let finished;
let all = new Promise((resolve) => { finished = resolve; });
const worker = new Worker(name, async () => null,
  { connection: connect(), concurrency: 100, autorun: false });
worker.on('completed', () => { if (++done === n) finished(); });
const t2 = process.hrtime.bigint();
worker.run();
await all;
const t3 = process.hrtime.bigint();
done = 0;
all = new Promise((resolve) => { finished = resolve; });
const t4 = process.hrtime.bigint();
for (let first = 0; first < n; first += 1000) {
  const jobs = [];
  for (let i = first; i < Math.min(n, first + 1000); ++i) jobs.push({ name: 'noop', data: { i } });
  await queue.addBulk(jobs);
}
await all;
const t5 = process.hrtime.bigint();
await worker.close();
await queue.obliterate({ force: true }).catch(() => {});
await queue.close();
connection.disconnect();
const s = (a, b) => Number(b - a) / 1e9;
console.log(JSON.stringify({
  enqueue_per_s: Math.round(n / s(t0, t1)),
  drain_per_s: Math.round(n / s(t2, t3)),
  total_per_s: Math.round(n / (s(t0, t1) + s(t2, t3))),
  steady_per_s: Math.round(n / s(t4, t5)),
}));
process.exit(0);
