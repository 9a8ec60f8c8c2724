#pragma once
/// The scheduler: fires `[[schedule]]` tasks on time, exactly once, with several instances
/// running for availability (one leads; another takes over within `lease` when it dies).

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/broker.hpp"
#include "conveyor/config.hpp"
#include "conveyor/schedule.hpp"

namespace conveyor {

struct SchedulerOptions {
    std::vector<ScheduleSpec> schedules;    ///< from the configuration
    std::chrono::milliseconds lease{3000};  ///< leadership lease; bounds a failover
    std::chrono::milliseconds tick{200};    ///< how often the leader looks
    std::string name;                       ///< this instance; default host:pid
    std::function<std::string(const std::string& task)> queue_for;  ///< default queue of a task
    /// "HOST:PORT" to serve /metrics, /healthz and /readyz on while running (they say whether
    /// this instance leads); empty: none. A bare port binds 127.0.0.1.
    std::string http;
};

/// What one schedule looks like now (for `conveyor schedule list`).
struct ScheduleStatus {
    ScheduleSpec spec;
    std::string source;                  ///< "config" or "cli"
    std::optional<TimePoint> last_fire;  ///< fires are counted up to here
    std::optional<TimePoint> last_run;   ///< the last fire that published a task
    std::optional<TimePoint> next_fire;
};

namespace detail {
class Lifecycle;
}

/// Fires schedules. `run()` it on your thread or `start()` it on one of its own; `stop()` ends
/// it and `wait()` waits for the end. Stopped, it does not run again. The destructor stops it
/// and waits until it has ended, wherever it runs.
class Scheduler {
  public:
    Scheduler(std::shared_ptr<Broker> broker, SchedulerOptions options);
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;
    ~Scheduler();
    /// Runs until stop(): competes for leadership, and fires due schedules while leading.
    /// Errc::invalid_argument when it already runs.
    [[nodiscard]] Result<void> run();
    /// Runs it on a thread the scheduler owns; returns at once.
    [[nodiscard]] Result<void> start();
    /// Asks the run to end (it resigns its leadership). Thread-safe and async-signal-safe.
    void stop() noexcept { stop_ = true; }
    /// Waits until the run has ended, at most `timeout` (Errc::timeout when it still runs).
    [[nodiscard]] Result<void> wait(std::optional<std::chrono::milliseconds> timeout = {});
    bool leading() const noexcept { return leading_; }
    /// Its metrics in the Prometheus text format, as /metrics serves them.
    std::string metrics() const;
    /// The port /metrics is served on while running with SchedulerOptions::http; 0 otherwise.
    int http_port() const noexcept;

    /// The configured and CLI-added schedules with their pause flags and last fires.
    static Result<std::vector<ScheduleStatus>> status(ScheduleStore& store,
                                                      const std::vector<ScheduleSpec>& configured);

  private:
    Result<void> tick(ScheduleStore& store);
    Result<void> loop();
    Result<void> start_http();
    void stop_http();

    std::shared_ptr<Broker> broker_;
    SchedulerOptions opts_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> leading_{false};
    std::unique_ptr<detail::Lifecycle> life_;
    struct Monitoring;  // metrics, health, the HTTP listener
    std::unique_ptr<Monitoring> mon_;
};

}  // namespace conveyor
