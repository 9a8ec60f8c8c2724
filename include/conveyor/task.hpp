#pragma once
/// The task model: what a task is, how it travels, and what became of it.

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace conveyor {

using Json = nlohmann::json;
using SystemClock = std::chrono::system_clock;
using TimePoint = SystemClock::time_point;

/// Where a task goes when nothing routes it elsewhere: Celery's default queue.
inline constexpr std::string_view kDefaultQueue = "celery";

/// A task as Conveyor and Celery (protocol v2) understand it.
/// Value type; `id` and `name` are required, everything else has a sensible default.
struct TaskMessage {
    std::string id;             ///< unique task id (a version 7 UUID unless the caller chooses one)
    std::string name;           ///< registered task name, e.g. "orders.bill"
    Json args = Json::array();  ///< positional arguments (JSON array)
    Json kwargs = Json::object();  ///< keyword arguments (JSON object)
    /// Celery's {callbacks, errbacks, chain, chord}; a decoded task whose embed has none of
    /// them (each null) has an empty object here, which is sent as Celery's four nulls.
    Json embed = Json::object();
    int retries = 0;                        ///< how many times this task has been retried so far
    std::optional<TimePoint> eta;           ///< do not run before this time
    std::optional<TimePoint> expires;       ///< do not run after this time
    int priority = 0;                       ///< 0..255, higher runs first
    std::string root_id;                    ///< first task of the workflow (own id when empty)
    std::string parent_id;                  ///< task that sent this one
    std::string group;                      ///< group id, for group and chord members
    std::optional<int> group_index;         ///< place in a chord's header (results keep this order)
    std::optional<double> time_limit;       ///< hard limit in seconds
    std::optional<double> soft_time_limit;  ///< soft limit in seconds
    std::optional<int> max_retries;         ///< overrides the task's configured retry budget
    std::string reply_to;                   ///< rpc result queue of the sender
    std::string correlation_id;             ///< defaults to `id`
    bool ignore_result = false;             ///< do not store a result
    std::string origin;                     ///< sender's node name
    Json extra_headers = Json::object();    ///< any other headers, kept and forwarded
    /// A message from a raw queue: its body exactly as published (any bytes, possibly empty)
    /// and its content type. Set, it is also what a raw publish sends, byte for byte.
    std::optional<std::string> body;
    std::string content_type;  ///< of `body`; empty: none was given
};

/// A message as it travels: AMQP-style properties, headers and an opaque body.
/// Brokers store and move envelopes without reading the body; the codec turns them into
/// tasks and back.
struct Envelope {
    std::string content_type;
    std::string content_encoding;
    std::string correlation_id;
    std::string reply_to;
    int priority = 0;
    Json headers = Json::object();
    std::string body;
};

/// Lifecycle state of a task, as Celery names them.
enum class TaskState { pending, started, retry, success, failure, revoked };

/// "PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE" or "REVOKED".
const char* to_string(TaskState state) noexcept;
/// Parses the upper-case names above.
std::optional<TaskState> parse_task_state(std::string_view text) noexcept;

/// What the result store knows about a task.
struct TaskResult {
    std::string id;
    TaskState state = TaskState::pending;
    Json result;            ///< handler's return value, or {exc_type, exc_message, exc_module}
    std::string traceback;  ///< failure detail for people
    int retries = 0;
    std::optional<TimePoint> done_at;
    /// Tasks it sent as it succeeded (link callbacks, the chain's next task): Celery's
    /// `AsyncResult.children`.
    std::vector<std::string> children;

    bool ready() const noexcept {
        return state == TaskState::success || state == TaskState::failure ||
               state == TaskState::revoked;
    }
};

/// Encodes a result as JSON: {"id","state","result","traceback","retries","date_done",
/// "children"}.
Json to_json(const TaskResult& result);

/// A fresh UUID string, version 7 (RFC 9562): time-ordered, so that ids made one after
/// another sort one after another (an index on them grows at its end), with 62 random bits.
std::string make_task_id();

}  // namespace conveyor
