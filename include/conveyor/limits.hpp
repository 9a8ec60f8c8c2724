#pragma once
/// Flow control across the fleet: a task's rate limit and concurrency limit, held by the broker
/// for every worker that shares it (not per worker process, as Celery's `rate_limit` is).

#include <cstdint>
#include <string>
#include <string_view>

#include "conveyor/error.hpp"
#include "conveyor/task.hpp"

namespace conveyor {

/// The limits of one task. Value type. A limit with neither a rate nor a concurrency limit is
/// no limit.
struct TaskLimit {
    std::string task;
    /// Starts per second across the fleet, spaced evenly (100/s: one every 10 ms, as Celery's
    /// token bucket of one); 0: no rate limit. parse_rate reads Celery's "100/s", "6/m",
    /// "3600/h".
    double rate = 0;
    /// At most this many running (or claimed to run) at once across the fleet; 0: no limit.
    int max_concurrency = 0;
    /// Where each run's key comes from: "kwargs.NAME" or "args.N" (parse_limit_key); each key
    /// then has limits of its own. Empty: one limit for every run of the task.
    std::string key;

    bool limited() const noexcept { return rate > 0 || max_concurrency > 0; }
    friend bool operator==(const TaskLimit&, const TaskLimit&) = default;
};

/// A limit and what it holds now.
struct LimitStats {
    TaskLimit limit;
    std::int64_t waiting = 0;  ///< tasks waiting in the broker for the limit to let them run
    std::int64_t running = 0;  ///< tasks running (or claimed) under it
};

/// A limit as the CLI's --json and the dashboard's API show it: {"task", "rate" ("100/s" or
/// null), "max_concurrency" (or null), "key" (or null), "waiting", "running"}.
Json limit_json(const LimitStats& stats);

/// Celery's rate syntax, "N", "N/s", "N/m" or "N/h" (N may have a fraction), as starts per
/// second; "0" (or empty) is no limit. Errc::invalid_argument with a sentence otherwise.
Result<double> parse_rate(std::string_view text);
/// A rate as Celery writes it: "100/s", "6/m", "0.5/h" (the largest unit with a whole N).
std::string format_rate(double per_second);

/// A limit for people: "20/s, at most 2 running, per kwargs.customer".
std::string describe_limit(const TaskLimit& limit);

/// Checks a limit key: "kwargs.NAME" or "args.N". Errc::invalid_argument otherwise.
Result<void> parse_limit_key(std::string_view key);

/// Checks a limit as every engine that keeps limits does: a task name, a rate from 0 to
/// 1,000,000/s, a concurrency limit not below 0, a key parse_limit_key takes.
/// Errc::invalid_argument with a sentence otherwise.
Result<void> check_limit(const TaskLimit& limit);

/// The key of one run: the value `key` names in the task's arguments, as text (a string as
/// it is, anything else as JSON), at most 200 bytes; empty where the task has no such value.
std::string limit_key_of(std::string_view key, const Json& args, const Json& kwargs);
/// The same from a message body: Celery's [args, kwargs, embed] (protocol 2) or {"args",
/// "kwargs", ...} (protocol 1); any other body is the one argument (a raw queue's payload).
std::string limit_key_of_body(std::string_view key, std::string_view body);

}  // namespace conveyor
