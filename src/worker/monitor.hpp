#pragma once
// A worker's presence for monitors and remote control, over the broker's ControlChannel:
// Celery events (worker-online/-heartbeat/-offline always; task-* when enabled) and answers to
// `celery inspect` / `celery control` (ping, active, reserved, stats, registered, revoke, ...).
// Thread-safe: the worker's threads report through the hooks; one thread of its own talks to
// the broker.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "conveyor/broker.hpp"
#include "conveyor/engine.hpp"

namespace conveyor::detail {

struct MonitorOptions {
    std::string node;  ///< "name@host"
    int concurrency = 1;
    std::size_t prefetch = 0;
    std::vector<std::string> queues;
    std::vector<std::string> registered;  ///< task names this worker runs
    bool task_events = false;             ///< task-* events (Celery's -E)
    std::function<void()> on_shutdown;    ///< `celery control shutdown`
    /// `celery control add_consumer` (true) / `cancel_consumer` (false) for a queue.
    std::function<void(const std::string& queue, bool consume)> on_consumer_change;
    Json conf = Json::object();  ///< what `celery inspect conf` shows
    /// `celery control rate_limit TASK RATE`: the reply (Celery's {"ok": ...} or {"error": ...}).
    std::function<Json(const std::string& task, const std::string& rate)> on_rate_limit;
};

class Monitor {
  public:
    Monitor(std::unique_ptr<ControlChannel> channel, MonitorOptions options);
    ~Monitor();
    Monitor(const Monitor&) = delete;
    Monitor& operator=(const Monitor&) = delete;

    /// Starts the thread, worker-online first. `publish_now`: worker-online goes out before
    /// this returns (the channel is connected); otherwise the thread sends it once it connects.
    void start(bool publish_now = true);
    /// Sends worker-offline and stops the thread.
    void stop();

    // Hooks, called by the worker.
    void received(std::shared_ptr<const TaskMessage> task, const Delivery& delivery);
    void started(const std::string& id);
    void succeeded(const std::string& id, const Json& result, double runtime);
    void failed(const std::string& id, const std::string& exception, const std::string& traceback);
    void retried(const std::string& id, const std::string& exception, const std::string& traceback);
    void revoked(const std::string& id, bool expired, bool terminated);
    /// Forgets a task that left this worker without an outcome (handed back).
    void released(const std::string& id);

    bool is_revoked(const std::string& id) const;
    /// Ids whose running task `revoke --terminate` asked to stop (taken once).
    std::vector<std::string> take_terminations();

  private:
    /// What `inspect active/reserved/query_task` tell of a task; made into JSON only then.
    struct Row {
        std::shared_ptr<const TaskMessage> task;  // the job's own (not copied)
        std::string queue;
        int priority = 0;
        bool redelivered = false;
        bool active = false;
        std::optional<double> time_start;
        Json info(const std::string& id, const std::string& node) const;
    };
    void loop();
    void emit(Json event);                      // mu_ held
    Json worker_event(const char* type) const;  // mu_ held
    void finish(const std::string& id);         // mu_ held
    std::optional<Json> handle(const ControlRequest& r);
    void revoke(const Json& ids, bool terminate);  // mu_ held

    std::unique_ptr<ControlChannel> channel_;
    MonitorOptions opts_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    std::thread thread_;
    std::int64_t clock_ = 0;
    std::vector<Json> events_;
    bool task_events_ = false;
    std::unordered_map<std::string, Row> rows_;  // received, not yet finished
    std::map<std::string, std::uint64_t> total_;
    std::uint64_t processed_ = 0;
    std::unordered_set<std::string> revoked_;
    std::deque<std::pair<std::string, double>> revoked_order_;  // id, monotonic seconds
    std::vector<std::string> terminate_;
    std::chrono::steady_clock::time_point started_at_ = std::chrono::steady_clock::now();
};

}  // namespace conveyor::detail
