// What becomes of a finished task.
#include "worker/outcome.hpp"

#include <fmt/format.h>

namespace conveyor::detail {

Decision decide(const Outcome& o, const JobState& job, double unit_random) {
    using Action = Decision::Action;
    Decision d;
    if (job.lease_lost) {
        d.action = Action::abandon;
        return d;
    }
    if (job.shutting_down) {
        d.action = Action::release;
        return d;
    }
    if (job.terminated || o.kind == Outcome::Kind::revoked) {
        d.action = Action::revoke;
        d.reason = job.terminated ? "terminated" : "revoked";
        return d;
    }
    if (o.kind == Outcome::Kind::success) {
        d.action = Action::succeed;
        return d;
    }
    d.failure = fmt::format("{}: {}", o.exc_type, o.message);
    if (o.kind == Outcome::Kind::reject) {
        d.action = Action::dead_letter;
        d.reason = "rejected: " + d.failure;
        return d;
    }
    if (!may_retry(job.policy, job.retries)) {
        d.action = Action::dead_letter;
        d.reason = fmt::format("failed after {} retries: {}", job.retries, d.failure);
        return d;
    }
    d.action = job.keyed ? Action::retry_in_place : Action::retry;
    d.delay = o.retry_after ? *o.retry_after : retry_delay(job.policy, job.retries, unit_random);
    return d;
}

}  // namespace conveyor::detail
