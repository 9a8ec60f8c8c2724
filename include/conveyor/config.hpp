#pragma once
/// `conveyor.toml`: broker, queues, tasks and worker settings.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/error.hpp"
#include "conveyor/retry_policy.hpp"
#include "conveyor/schedule.hpp"
#include "conveyor/topology.hpp"

namespace conveyor {

/// How messages of a queue are encoded.
enum class QueueFormat {
    celery,  ///< Celery protocol v2 (Conveyor's native format)
    raw,     ///< foreign publishers: the body is the payload; the task comes from the queue
};

/// One `[[queue]]` table.
struct QueueConfig {
    std::string name;
    QueueFormat format = QueueFormat::celery;
    std::string task;   ///< task run for every message of a raw queue
    QueueSpec declare;  ///< how the broker declares it (type, priorities, partitions, ...)
};

/// One `[[task]]` table: where a task goes and how it runs.
struct TaskConfig {
    std::string name;
    std::string queue;              ///< default queue for enqueues of this task
    std::vector<std::string> exec;  ///< run this command (argv) with the task as JSON on stdin
    std::string http;               ///< or POST the task JSON to this URL
    std::optional<double> timeout;  ///< seconds; hard limit of one attempt
    RetryPolicy retry;
    bool track_started = false;  ///< store STARTED when a run starts (Celery's track_started)
    bool input_body = false;     ///< `input = "body"`: exec/http get the body as published
    /// Flow control across the fleet (TaskLimit): starts a second ("20/s" read by parse_rate)
    /// and most running at once; set (0 too), the worker writes them to the broker as it
    /// starts; absent, it leaves what the broker has.
    std::optional<double> rate_limit;
    std::optional<int> max_concurrency;
    std::string limit_key;  ///< "kwargs.NAME" or "args.N": limits per key
};

/// `[worker]`: defaults for `conveyor worker`.
struct WorkerConfig {
    std::vector<std::string> queues;  ///< empty: every configured queue (or "celery")
    int concurrency = 4;
    int prefetch = 0;              ///< 0: concurrency * 4
    double lease = 30.0;           ///< seconds a claim lasts without renewal (sqlite)
    double shutdown_grace = 30.0;  ///< seconds in-flight tasks get on SIGTERM
    int delivery_limit = 5;        ///< deliveries without a settlement before a dead letter
    bool track_started = false;    ///< STARTED for every task
    std::string http;              ///< "HOST:PORT" for /metrics, /healthz and /readyz; empty: none
};

/// The whole configuration. Value type; `load_config` fills it.
struct Config {
    std::string broker;  ///< empty: not set in the file
    std::string default_queue{kDefaultQueue};
    std::vector<QueueConfig> queues;
    std::vector<ExchangeSpec> exchanges;  ///< `[[exchange]]` tables (amqp engine)
    std::vector<BindingSpec> bindings;    ///< `[[binding]]` tables (amqp engine)
    std::vector<TaskConfig> tasks;
    std::vector<ScheduleSpec> schedules;  ///< `[[schedule]]` tables, run by `conveyor scheduler`
    WorkerConfig worker;
    RetryPolicy default_retry;  ///< for tasks without a `[[task]]` table

    const TaskConfig* find_task(std::string_view name) const noexcept;
    const QueueConfig* find_queue(std::string_view name) const noexcept;
    /// The queue a task goes to when the caller names none.
    std::string queue_for(std::string_view task) const;
    /// Whether a task published to `exchange` (or, when that is empty, to `queue`) goes out
    /// as a plain body: a raw queue; a `format = "raw"` exchange; an exchange whose configured
    /// bindings all lead to raw queues.
    bool publishes_raw(std::string_view exchange, std::string_view queue) const;
    /// The retry policy of a task (its table's, else the default).
    RetryPolicy retry_for(std::string_view task) const;
    /// Exchanges, queues and bindings to hand to `Broker::set_topology`.
    Topology topology() const;
};

/// Parses TOML text. Errors name the source, the line and the key in one sentence.
Result<Config> parse_config(std::string_view toml_text, std::string_view source_name = "config");
/// Reads and parses a file.
Result<Config> load_config(const std::string& path);

}  // namespace conveyor
