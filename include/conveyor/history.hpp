#pragma once
/// What a broker remembers of tasks after they ran: their states, attempts with errors, and
/// per-minute counts, for the dashboard and for people who look back. On sqlite the history
/// lives in the broker's file (finished tasks are kept `?history=` long, 7 days by default,
/// and at most `?history_max=` of them); other engines keep none and say so.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/broker.hpp"

namespace conveyor {

/// Where a task is in its life, as the history shows it.
enum class HistoryState { waiting, running, dead, delayed, succeeded, revoked };

/// "waiting", "running", "dead", "delayed", "succeeded", "revoked".
std::string_view to_string(HistoryState s) noexcept;
/// The state a name means; nullopt for anything else.
std::optional<HistoryState> history_state_from_string(std::string_view s) noexcept;

/// A filter over the history, newest first. Empty fields match everything.
struct TaskQuery {
    std::optional<HistoryState> state;
    std::string name;                       ///< task name, exactly
    std::string queue;                      ///< queue, exactly
    std::string search;                     ///< a substring of the message body (args, kwargs)
    std::optional<TimePoint> since, until;  ///< enqueued in [since, until)
    /// Keyset paging: only tasks before this cursor (a TaskPage::next); 0 starts at the newest.
    std::int64_t before = 0;
    std::size_t limit = 50;
};

/// One run of a task that ended in a retry.
struct TaskAttempt {
    TimePoint started{}, finished{};
    std::string worker;
    std::string error;
};

struct TaskRecord {
    std::int64_t cursor = 0;  ///< its place in the history (paging)
    std::string id, name, queue;
    HistoryState state = HistoryState::waiting;
    int retries = 0;
    int deliveries = 0;
    std::optional<TimePoint> enqueued, due, started, finished;
    std::string worker;                 ///< the last consumer that took it
    std::string error;                  ///< the last error it raised
    std::string reason;                 ///< dead: why
    std::vector<TaskAttempt> attempts;  ///< runs that ended in a retry, oldest first
    Envelope envelope;                  ///< the message (its body cut to a page's worth in lists)
};

struct TaskPage {
    std::vector<TaskRecord> tasks;
    std::int64_t next = 0;  ///< cursor of the next page; 0 when there is none
};

/// Tasks finished in one minute, over all queues and tasks or one of each.
struct MinuteCounts {
    TimePoint minute{};
    std::int64_t succeeded = 0, failed = 0, retried = 0, dead = 0;
    double run_seconds = 0;   ///< handler time, summed
    std::int64_t waited = 0;  ///< tasks whose wait is known
    double wait_seconds = 0;  ///< their wait from due to start, summed
};

/// A worker as its last report shows it.
struct WorkerRecord {
    std::string node;
    Json info = Json::object();  ///< what it reported (Broker::report_worker)
    TimePoint seen{};            ///< when
    bool online = false;         ///< reported within the last 15 s and not gone offline
    /// Tasks it runs now: id, name, queue, since when (started or claimed).
    struct Running {
        std::string id, name, queue;
        std::optional<TimePoint> since;
    };
    std::vector<Running> running;
};

/// A broker's history. Thread-safe.
class TaskHistory {
  public:
    virtual ~TaskHistory() = default;
    [[nodiscard]] virtual Result<TaskPage> tasks(const TaskQuery& query) = 0;
    /// One task, its whole message and attempts; Errc::not_found when the history has none.
    [[nodiscard]] virtual Result<TaskRecord> task(std::string_view id) = 0;
    /// Per-minute counts from `since` on, oldest first; `queue` / `name` narrow them.
    [[nodiscard]] virtual Result<std::vector<MinuteCounts>> minutes(TimePoint since,
                                                                    std::string_view queue = {},
                                                                    std::string_view name = {}) = 0;
    /// Runs a task again now: a dead, finished or delayed one goes back to its queue as new
    /// (its stored result cleared). Errc::conflict when it is waiting or running.
    [[nodiscard]] virtual Result<void> retry(std::string_view id) = 0;
    /// A waiting or delayed task will not run: it is revoked (its result says so).
    /// Errc::conflict when it runs or has finished.
    [[nodiscard]] virtual Result<void> revoke(std::string_view id) = 0;
    /// Forgets a task that is not running, with its result.
    [[nodiscard]] virtual Result<void> remove(std::string_view id) = 0;
    /// The workers that reported in the last day, online first, with what each runs.
    [[nodiscard]] virtual Result<std::vector<WorkerRecord>> workers() = 0;
    /// Brings the search index up to date by at most `max` tasks; returns how many it added.
    /// Searches find tasks only once indexed (the dashboard indexes in the background).
    [[nodiscard]] virtual Result<std::size_t> index(std::size_t max) = 0;
};

}  // namespace conveyor
