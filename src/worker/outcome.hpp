#pragma once
// What becomes of a finished task: a pure decision from the handler's outcome and the job's
// state, taken before the worker acts on it (settles, publishes workflow steps, tells monitors).

#include <chrono>
#include <optional>
#include <string>

#include "conveyor/retry_policy.hpp"
#include "conveyor/task.hpp"

namespace conveyor::detail {

/// What a handler's run came to.
struct Outcome {
    enum class Kind {
        success,  ///< returned `result`
        failure,  ///< threw: retried while the policy allows
        reject,   ///< Reject, or a TaskError that must not be retried: dead-lettered at once
        revoked,  ///< revoked while it waited for a thread: never ran
    } kind = Kind::success;
    Json result;
    std::string exc_type;
    std::string exc_module = "builtins";
    std::string message;
    std::optional<std::chrono::milliseconds> retry_after;  ///< the handler asked for this delay
};

/// The facts about a job that its outcome's fate depends on.
struct JobState {
    int retries = 0;             ///< retries before this run
    RetryPolicy policy;          ///< the task's, with its message's max_retries applied
    bool lease_lost = false;     ///< another worker may hold the task now
    bool shutting_down = false;  ///< stopped by the end of the shutdown grace period
    bool terminated = false;     ///< stopped by `revoke --terminate`
    bool keyed = false;          ///< from an ordered queue: a retry keeps its place in the order
};

/// What to do with a finished job.
struct Decision {
    enum class Action {
        abandon,         ///< handed back, not settled as ours: the lease was lost
        release,         ///< handed back untouched (shutdown); not a retry
        revoke,          ///< acked with REVOKED
        succeed,         ///< acked with SUCCESS, after the workflow's next steps are published
        dead_letter,     ///< rejected or out of retries: dead-lettered with FAILURE
        retry,           ///< back to the broker, due after `delay`, with RETRY stored
        retry_in_place,  ///< keyed: waits `delay` in this worker and runs again
    } action = Action::succeed;
    std::chrono::milliseconds delay{0};  ///< retry, retry_in_place
    std::string failure;                 ///< failures: "Type: message"
    std::string reason;  ///< dead_letter: why, for the dead-letter store; revoke: how
};

/// Decides, without side effects. `unit_random` is a sample of U[0,1) for the retry delay's
/// jitter (see retry_delay).
Decision decide(const Outcome& outcome, const JobState& job, double unit_random);

}  // namespace conveyor::detail
