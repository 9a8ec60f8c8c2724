#pragma once
/// The worker runtime: fetches tasks, runs handlers, settles outcomes.
///
/// Guarantees: at least once. A task is acknowledged only after its handler's outcome is known
/// (success, failure retried with backoff, or dead-lettered with the reason). A malformed
/// message or an unknown task name is dead-lettered with the reason; the worker carries on.
/// Delayed tasks (ETA, retry backoff) wait in the broker, never in worker memory.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

#include "conveyor/broker.hpp"
#include "conveyor/config.hpp"
#include "conveyor/error.hpp"
#include "conveyor/retry_policy.hpp"
#include "conveyor/task.hpp"

namespace conveyor {

/// What a handler sees of the task it runs. Valid for the duration of the call.
class TaskContext {
  public:
    TaskContext(const TaskMessage& task, std::string queue, std::stop_token stop,
                std::optional<std::chrono::steady_clock::time_point> deadline,
                std::optional<TimePoint> taken = {}) noexcept
        : task_(task),
          queue_(std::move(queue)),
          stop_(std::move(stop)),
          deadline_(deadline),
          taken_(taken) {}

    const TaskMessage& task() const noexcept { return task_; }
    const std::string& id() const noexcept { return task_.id; }
    const std::string& name() const noexcept { return task_.name; }
    const std::string& queue() const noexcept { return queue_; }
    const Json& args() const noexcept { return task_.args; }
    const Json& kwargs() const noexcept { return task_.kwargs; }
    /// A raw queue's message exactly as published (any bytes); unset for other tasks.
    const std::optional<std::string>& body() const noexcept { return task_.body; }
    /// The content type it was published with (empty: none).
    const std::string& content_type() const noexcept { return task_.content_type; }
    int retries() const noexcept { return task_.retries; }
    /// 1 for the first attempt.
    int attempt() const noexcept { return task_.retries + 1; }
    /// Set when the time limit passed or the worker is shutting down past its grace period.
    /// Long-running handlers should poll it and return early.
    bool stop_requested() const noexcept { return stop_.stop_requested(); }
    std::stop_token stop_token() const noexcept { return stop_; }
    std::optional<std::chrono::steady_clock::time_point> deadline() const noexcept {
        return deadline_;
    }
    /// When the broker handed the task to this worker (sqlite: the moment its rate and
    /// concurrency limits counted it); unset where the engine does not say.
    std::optional<TimePoint> taken() const noexcept { return taken_; }

  private:
    const TaskMessage& task_;
    std::string queue_;
    std::stop_token stop_;
    std::optional<std::chrono::steady_clock::time_point> deadline_;
    std::optional<TimePoint> taken_;
};

/// Thrown by a handler for a failure whose type Celery clients should see (`exc_type`).
/// Retried per the task's policy unless `retryable` is false.
struct TaskError : std::runtime_error {
    TaskError(std::string type, const std::string& message, bool retryable = true,
              std::string module = "builtins")
        : std::runtime_error(message),
          type(std::move(type)),
          module(std::move(module)),
          retryable(retryable) {}
    std::string type;
    std::string module;
    bool retryable = true;
    std::optional<std::chrono::milliseconds> retry_after;  ///< overrides the backoff when set
};

/// Thrown by a handler: the task can never succeed; dead-letter it now with this reason.
struct Reject : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// An in-process handler. Returns the task's result; throws to fail.
using Handler = std::function<Json(TaskContext&)>;

/// Per-task execution settings.
/// What an `exec` or `http` handler receives.
enum class HandlerInput {
    task,  ///< the task as JSON (id, task, args, kwargs, ...)
    body,  ///< the message body exactly as published (raw queues), else the one argument
};

struct TaskOptions {
    RetryPolicy retry;
    std::optional<std::chrono::milliseconds> timeout;  ///< hard limit of one attempt
    /// Store STARTED (with the worker's pid and node) when a run starts, as Celery's
    /// `track_started` does; a result backend's readers then see it.
    bool track_started = false;
    HandlerInput input = HandlerInput::task;  ///< for `exec` and `http` handlers
    /// Limits across the fleet (TaskLimit: starts a second, most running at once, per key),
    /// written to the broker as the worker starts when either is set (0 removes one); unset,
    /// the worker leaves the broker's limits for the task as they are.
    std::optional<double> rate_limit;
    std::optional<int> max_concurrency;
    std::string limit_key;
};

/// Worker settings. Value type.
struct WorkerOptions {
    std::vector<std::string> queues = {std::string(kDefaultQueue)};
    int concurrency = 4;
    std::size_t prefetch = 0;  ///< unsettled deliveries held at once; 0: concurrency * 4
    std::chrono::milliseconds lease{30000};
    std::chrono::milliseconds shutdown_grace{30000};
    std::string name;                        ///< default: host:pid
    std::vector<QueueConfig> queue_formats;  ///< raw queues and their task names
    RetryPolicy default_retry;               ///< for tasks registered without options
    std::size_t max_body = 16u << 20;        ///< larger messages are dead-lettered
    /// A message delivered more than this many times without being settled (its worker was
    /// killed or crashed each time) is dead-lettered before it is decoded again; 0: no limit.
    /// Counted by sqlite, by RabbitMQ's quorum queues, and on classic queues by Conveyor (a
    /// redelivered message is published again with its count). A delivery handed back at
    /// shutdown counts on RabbitMQ.
    int delivery_limit = 5;
    std::uint64_t seed = 0;  ///< jitter seed; 0 picks one
    /// Node name for monitors and remote control ("name@host"; default conveyor-PID@HOST).
    std::string node_name;
    bool task_events = false;  ///< send task-* events (Celery's -E); worker-* always go
    /// Log each success at info (the default is debug: failures, retries and dead letters are
    /// what an operator reads).
    bool log_success = false;
    bool remote_control = true;  ///< answer `celery inspect` / `celery control` (amqp)
    bool track_started = false;  ///< STARTED for every task (TaskOptions::track_started)
    /// "HOST:PORT" to serve /metrics (Prometheus), /healthz and /readyz on while running
    /// (port 0 picks one: http_port() says which); empty: none. A bare port binds 127.0.0.1.
    std::string http;
    /// Collect metrics (Worker::metrics(), /metrics). Off, the counters and histograms stay
    /// empty; the gauges are still read when asked.
    bool metrics = true;
};

/// Counters since start; each only grows.
struct WorkerStats {
    std::uint64_t succeeded = 0;
    std::uint64_t retried = 0;
    std::uint64_t dead_lettered = 0;
    std::uint64_t released = 0;
    std::uint64_t running = 0;
};

/// A worker over one broker. Register handlers, then `run()` it on your thread, or `start()`
/// it on one of its own; `stop()` ends it gracefully and `wait()` waits for the end. Stopped,
/// it does not run again. The destructor stops it and waits until it has ended (within the
/// shutdown grace period), wherever it runs.
class Worker {
  public:
    Worker(std::shared_ptr<Broker> broker, WorkerOptions options);
    Worker(Worker&&) noexcept;
    Worker& operator=(Worker&&) noexcept;
    ~Worker();

    /// Registers an in-process C++ handler.
    void handle(std::string task, TaskOptions options, Handler fn);
    void handle(std::string task, Handler fn);
    /// Runs `argv` per task: the task JSON (or the body, per `options.input`) on stdin;
    /// exit 0 = success, stdout = result.
    void handle_exec(std::string task, std::vector<std::string> argv, TaskOptions options);
    /// POSTs the task JSON (or the body, per `options.input`) to `url`: 2xx = success;
    /// 429/5xx/timeouts retried; other 4xx rejected.
    void handle_http(std::string task, std::string url, TaskOptions options);
    /// Registers every `[[task]]` of the config with an `exec` or `http` handler, and takes the
    /// config's raw queues and default retry policy.
    void configure(const Config& config);

    /// Runs until `stop()`: then stops fetching, lets running tasks finish within the grace
    /// period, hands back the rest, and returns. Fails only when the broker fails, or with
    /// Errc::invalid_argument when the worker already runs.
    [[nodiscard]] Result<void> run();
    /// Runs it on a thread the worker owns; returns at once.
    [[nodiscard]] Result<void> start();
    /// Asks the run to end (graceful, as above). Thread-safe and async-signal-safe.
    void stop() noexcept;
    /// Waits until the run has ended, at most `timeout` (Errc::timeout when it still runs);
    /// returns how it ended (success when it never ran).
    [[nodiscard]] Result<void> wait(std::optional<std::chrono::milliseconds> timeout = {});
    /// Whether a run is under way.
    bool running() const noexcept;
    WorkerStats stats() const noexcept;
    /// Its metrics in the Prometheus text format, as /metrics serves them.
    std::string metrics() const;
    /// The port /metrics is served on while running with WorkerOptions::http; 0 otherwise.
    int http_port() const noexcept;

  private:
    void end() noexcept;  // stops the run and waits for its end
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// The JSON a subprocess or HTTP handler receives for a task.
Json task_payload(const TaskMessage& task, const std::string& queue);

}  // namespace conveyor
