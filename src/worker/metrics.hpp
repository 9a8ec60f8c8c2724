#pragma once
// A worker's Prometheus metrics: task counters and run/wait histograms per (queue, task), and
// the gauges read when scraped. Label values are bounded: a queue the worker does not consume
// and a task it has not registered count as "other" (never an id, never a name from the wire).
// A job looks its series up once (series()); counting on it is then lock-free.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/broker.hpp"
#include "server/prometheus.hpp"

namespace conveyor::detail {

/// Histogram counts updated from several threads without a lock.
class AtomicHistogram {
  public:
    void observe(double v);
    /// A consistent-enough copy for one scrape.
    Histogram snapshot() const;

  private:
    std::array<std::atomic<std::uint64_t>, Histogram::kSeconds.size() + 1> buckets_{};
    std::atomic<double> sum_{0};
};

class WorkerMetrics {
  public:
    /// The counts of one (queue, task): stable for the WorkerMetrics' lifetime.
    struct Series {
        std::atomic<std::uint64_t> succeeded{0}, failed{0}, retried{0}, dead_lettered{0};
        AtomicHistogram duration, wait;
    };

    explicit WorkerMetrics(const std::vector<std::string>& queues);
    /// The task names counted by name (the worker's registered tasks).
    void set_tasks(const std::vector<std::string>& tasks);
    /// The series of `queue` and `task` (or "other" for either).
    Series& series(std::string_view queue, std::string_view task);

    static void succeeded(Series& s, double run_seconds);
    /// An attempt that ended in an error (raised, timed out, rejected); retried or not.
    static void failed(Series& s, double run_seconds);
    static void retried(Series& s) { s.retried.fetch_add(1, std::memory_order_relaxed); }
    /// Every task that goes to the dead-letter store, malformed and unknown ones included.
    static void dead_lettered(Series& s) {
        s.dead_lettered.fetch_add(1, std::memory_order_relaxed);
    }
    /// From the time it was due (sent, or its ETA or retry time) to the start of its run.
    static void waited(Series& s, double seconds) { s.wait.observe(seconds); }

    /// What a scrape adds to the counters.
    struct Gauges {
        int concurrency = 0;
        std::uint64_t busy = 0;
        std::optional<std::vector<QueueStats>> depths;  ///< where the engine knows them
        bool broker_up = true;
    };
    std::string render(const Gauges& g) const;

  private:
    std::set<std::string, std::less<>> queues_, tasks_;
    mutable std::mutex mu_;
    // queue -> task -> series; nodes never move, so references stay valid.
    std::map<std::string, std::map<std::string, Series, std::less<>>, std::less<>> series_;
};

}  // namespace conveyor::detail
