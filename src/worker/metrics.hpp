#pragma once
// A worker's Prometheus metrics: task counters and run/wait histograms per (queue, task), and
// the gauges read when scraped. Label values are bounded: a queue the worker does not consume
// and a task it has not registered count as "other" (never an id, never a name from the wire).

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "conveyor/broker.hpp"
#include "server/prometheus.hpp"

namespace conveyor::detail {

class WorkerMetrics {
  public:
    explicit WorkerMetrics(const std::vector<std::string>& queues);
    /// The task names counted by name (the worker's registered tasks).
    void set_tasks(const std::vector<std::string>& tasks);

    void succeeded(const std::string& queue, const std::string& task, double run_seconds);
    /// An attempt that ended in an error (raised, timed out, rejected); retried or not.
    void failed(const std::string& queue, const std::string& task, double run_seconds);
    void retried(const std::string& queue, const std::string& task);
    /// Every task that goes to the dead-letter store, malformed and unknown ones included.
    void dead_lettered(const std::string& queue, const std::string& task);
    /// From the time it was due (sent, or its ETA or retry time) to the start of its run.
    void waited(const std::string& queue, const std::string& task, double seconds);

    /// What a scrape adds to the counters.
    struct Gauges {
        int concurrency = 0;
        std::uint64_t busy = 0;
        std::optional<std::vector<QueueStats>> depths;  ///< where the engine knows them
        bool broker_up = true;
    };
    std::string render(const Gauges& g) const;

  private:
    struct Series {
        std::uint64_t succeeded = 0, failed = 0, retried = 0, dead_lettered = 0;
        Histogram duration, wait;
    };
    Series& series(const std::string& queue, const std::string& task);  // mu_ held

    std::set<std::string, std::less<>> queues_, tasks_;
    mutable std::mutex mu_;
    std::map<std::pair<std::string, std::string>, Series> series_;
};

}  // namespace conveyor::detail
