# Sidekiq (Debian's ruby-sidekiq) beside Conveyor: N no-op jobs pushed with push_bulk (batches of
# 1,000), then one `sidekiq -c 10` process runs them. Its rate is counted from its first job (the
# Ruby process's start is left out) to an empty queue with no job running. Then the steady state:
# N more pushed the same way while that process runs them, N over the time from the first push to
# an empty queue. Prints one JSON line: enqueue_per_s, drain_per_s, total_per_s (N over enqueue +
# drain time), steady_per_s.
# usage: ruby sidekiq_bench.rb REDIS_URL N
require 'json'
require 'sidekiq'
require 'sidekiq/api'
require_relative 'sidekiq_app'

url = ARGV[0]
n = (ARGV[1] || 10_000).to_i
Sidekiq.configure_client { |c| c.redis = { url: url } }
clock = -> { Process.clock_gettime(Process::CLOCK_MONOTONIC) }
queue = Sidekiq::Queue.new('bench')
queue.clear
t0 = clock.call
(0...n).each_slice(1000) do |slice|
  Sidekiq::Client.push_bulk('class' => NoopJob, 'args' => slice.map { |i| [i] }, 'queue' => 'bench')
end
t1 = clock.call
pid = spawn({ 'REDIS_URL' => url }, 'sidekiq', '-r', File.join(__dir__, 'sidekiq_app.rb'),
            '-c', '10', '-q', 'bench', out: File::NULL, err: File::NULL)
redis = Redis.new(url: url)
sleep 0.001 while redis.llen('queue:bench') == n
t2 = clock.call
left = redis.llen('queue:bench')
sleep 0.001 while redis.llen('queue:bench').positive?
# The last jobs fetched finish within a few milliseconds of an empty list; the ones still
# running are counted in Sidekiq's `processing` set only at its heartbeat, so not waited for.
t3 = clock.call
t4 = clock.call
(0...n).each_slice(1000) do |slice|
  Sidekiq::Client.push_bulk('class' => NoopJob, 'args' => slice.map { |i| [i] }, 'queue' => 'bench')
end
sleep 0.001 while redis.llen('queue:bench').positive?
t5 = clock.call
Process.kill('TERM', pid)
Process.wait(pid)
drain = (t3 - t2) * n / [left, 1].max
puts JSON.generate(enqueue_per_s: (n / (t1 - t0)).round, drain_per_s: (n / drain).round,
                   total_per_s: (n / (t1 - t0 + drain)).round, steady_per_s: (n / (t5 - t4)).round)
