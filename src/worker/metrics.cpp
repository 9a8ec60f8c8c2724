#include "worker/metrics.hpp"

#include <array>

namespace conveyor::detail {

namespace {
constexpr std::string_view kOther = "other";
}

WorkerMetrics::WorkerMetrics(const std::vector<std::string>& queues)
    : queues_(queues.begin(), queues.end()) {}

void WorkerMetrics::set_tasks(const std::vector<std::string>& tasks) {
    std::lock_guard lk(mu_);
    tasks_ = {tasks.begin(), tasks.end()};
}

WorkerMetrics::Series& WorkerMetrics::series(const std::string& queue, const std::string& task) {
    auto q = queues_.contains(queue) ? std::string_view(queue) : kOther;
    auto t = tasks_.contains(task) ? std::string_view(task) : kOther;
    auto key = std::pair{std::string(q), std::string(t)};
    return series_[std::move(key)];
}

void WorkerMetrics::succeeded(const std::string& queue, const std::string& task, double run) {
    std::lock_guard lk(mu_);
    auto& s = series(queue, task);
    s.succeeded++;
    s.duration.observe(run);
}

void WorkerMetrics::failed(const std::string& queue, const std::string& task, double run) {
    std::lock_guard lk(mu_);
    auto& s = series(queue, task);
    s.failed++;
    s.duration.observe(run);
}

void WorkerMetrics::retried(const std::string& queue, const std::string& task) {
    std::lock_guard lk(mu_);
    series(queue, task).retried++;
}

void WorkerMetrics::dead_lettered(const std::string& queue, const std::string& task) {
    std::lock_guard lk(mu_);
    series(queue, task).dead_lettered++;
}

void WorkerMetrics::waited(const std::string& queue, const std::string& task, double seconds) {
    std::lock_guard lk(mu_);
    series(queue, task).wait.observe(seconds);
}

std::string WorkerMetrics::render(const Gauges& g) const {
    PromText out;
    std::lock_guard lk(mu_);
    using Pair = std::pair<std::string_view, std::string_view>;
    auto counter = [&](std::string_view name, std::string_view help, auto field) {
        out.family(name, "counter", help);
        for (auto& [key, s] : series_) {
            std::array<Pair, 2> labels = {Pair{"queue", key.first}, Pair{"task", key.second}};
            out.sample(name, labels, s.*field);
        }
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
        for (auto& [key, s] : series_) {
            std::array<Pair, 2> labels = {Pair{"queue", key.first}, Pair{"task", key.second}};
            (s.*field).write(out, name, labels);
        }
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
