#include "worker/metrics.hpp"

#include <algorithm>
#include <cmath>

namespace conveyor::detail {

namespace {
constexpr std::string_view kOther = "other";
}

void AtomicHistogram::observe(double v) {
    if (std::isnan(v)) return;
    v = std::max(v, 0.0);
    auto it = std::lower_bound(Histogram::kSeconds.begin(), Histogram::kSeconds.end(), v);
    buckets_[std::size_t(it - Histogram::kSeconds.begin())].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(v, std::memory_order_relaxed);
}

Histogram AtomicHistogram::snapshot() const {
    Histogram h;
    for (std::size_t i = 0; i < buckets_.size(); ++i) {
        auto n = buckets_[i].load(std::memory_order_relaxed);
        double at = i < Histogram::kSeconds.size() ? Histogram::kSeconds[i]
                                                   : Histogram::kSeconds.back() * 2;
        h.add(at, n);
    }
    h.set_sum(sum_.load(std::memory_order_relaxed));
    return h;
}

WorkerMetrics::WorkerMetrics(const std::vector<std::string>& queues)
    : queues_(queues.begin(), queues.end()) {}

void WorkerMetrics::set_tasks(const std::vector<std::string>& tasks) {
    std::lock_guard lk(mu_);
    tasks_ = {tasks.begin(), tasks.end()};
}

WorkerMetrics::Series& WorkerMetrics::series(std::string_view queue, std::string_view task) {
    std::lock_guard lk(mu_);
    auto q = queues_.contains(queue) ? queue : kOther;
    auto t = tasks_.contains(task) ? task : kOther;
    auto qi = series_.find(q);
    if (qi == series_.end()) qi = series_.emplace(std::string(q), decltype(qi->second){}).first;
    auto ti = qi->second.find(t);
    if (ti == qi->second.end())
        ti = qi->second
                 .emplace(std::piecewise_construct, std::forward_as_tuple(t),
                          std::forward_as_tuple())
                 .first;
    return ti->second;
}

void WorkerMetrics::succeeded(Series& s, double run) {
    s.succeeded.fetch_add(1, std::memory_order_relaxed);
    s.duration.observe(run);
}

void WorkerMetrics::failed(Series& s, double run) {
    s.failed.fetch_add(1, std::memory_order_relaxed);
    s.duration.observe(run);
}

std::string WorkerMetrics::render(const Gauges& g) const {
    PromText out;
    std::lock_guard lk(mu_);
    using Pair = std::pair<std::string_view, std::string_view>;
    auto each = [&](auto&& fn) {
        for (auto& [queue, tasks] : series_)
            for (auto& [task, s] : tasks) {
                std::array<Pair, 2> labels = {Pair{"queue", queue}, Pair{"task", task}};
                fn(labels, s);
            }
    };
    auto counter = [&](std::string_view name, std::string_view help, auto field) {
        out.family(name, "counter", help);
        each([&](auto& labels, const Series& s) {
            out.sample(name, labels, (s.*field).load(std::memory_order_relaxed));
        });
    };
    counter("conveyor_tasks_succeeded_total", "Tasks whose handler succeeded.", &Series::succeeded);
    counter("conveyor_tasks_failed_total",
            "Attempts that ended in an error (raised, timed out, rejected), retried or not.",
            &Series::failed);
    counter("conveyor_tasks_retried_total", "Failed attempts sent back to wait for a retry.",
            &Series::retried);
    counter("conveyor_tasks_dead_lettered_total",
            "Tasks moved to the dead-letter store (failed for good, rejected, malformed, "
            "unknown).",
            &Series::dead_lettered);
    auto histogram = [&](std::string_view name, std::string_view help, auto field) {
        out.family(name, "histogram", help);
        each(
            [&](auto& labels, const Series& s) { (s.*field).snapshot().write(out, name, labels); });
    };
    histogram("conveyor_task_duration_seconds", "Handler run time of each attempt.",
              &Series::duration);
    histogram("conveyor_task_wait_seconds",
              "Time from when a task was due (sent, or its ETA or retry time) to its start.",
              &Series::wait);
    out.family("conveyor_worker_concurrency", "gauge", "Handler threads of this worker.");
    out.sample("conveyor_worker_concurrency", {}, std::uint64_t(g.concurrency));
    out.family("conveyor_worker_busy", "gauge", "Handlers running now.");
    out.sample("conveyor_worker_busy", {}, g.busy);
    out.family("conveyor_broker_up", "gauge",
               "1 while the worker reaches its broker, 0 while it fails.");
    out.sample("conveyor_broker_up", {}, std::uint64_t(g.broker_up ? 1 : 0));
    if (g.depths) {
        out.family("conveyor_queue_depth", "gauge",
                   "Tasks in a queue of this worker by state (ready, delayed, in_flight, dead).");
        for (auto& q : *g.depths) {
            std::pair<const char*, std::int64_t> states[] = {{"ready", q.ready},
                                                             {"delayed", q.delayed},
                                                             {"in_flight", q.in_flight},
                                                             {"dead", q.dead}};
            for (auto& [state, n] : states) {
                if (n < 0) continue;  // the engine cannot tell
                std::array<Pair, 2> labels = {Pair{"queue", q.queue}, Pair{"state", state}};
                out.sample("conveyor_queue_depth", labels, double(n));
            }
        }
    }
    return out.take();
}

}  // namespace conveyor::detail
