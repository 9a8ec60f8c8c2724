// Conclusion: what a finished job becomes (decided by worker/outcome), the workflow's next
// steps, the result stored, the monitor told.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <unordered_set>

#include "conveyor/log.hpp"
#include "core/codec.hpp"
#include "core/time.hpp"
#include "core/try.hpp"
#include "worker/handlers.hpp"
#include "worker/worker_impl.hpp"

namespace conveyor {

void Worker::Impl::report_dead_letter(Json fields, const std::string& reason) {
    if (opts.metrics)
        detail::WorkerMetrics::dead_lettered(
            metrics.series(fields.value("queue", ""), fields.value("task", "")));
    if (!detail::log_enabled(LogLevel::error)) return;
    std::string what = fmt::format(
        "task {}{} dead-lettered: {}", fields.value("id", ""),
        fields.contains("task") ? fmt::format(" ({})", fields.value("task", "")) : std::string(),
        reason);
    fields["reason"] = reason;
    detail::log(LogLevel::error, "task.dead_lettered", std::move(what), std::move(fields));
}

Settlement::Attempt Worker::Impl::attempt_of(const Job& job, std::string error) {
    Settlement::Attempt a;
    a.task = job.task->name;
    a.finished = SystemClock::now();
    a.started = a.finished - std::chrono::duration_cast<SystemClock::duration>(
                                 std::chrono::duration<double>(run_seconds(job)));
    a.waited = job.waited;
    a.error = std::move(error);
    return a;
}

std::optional<Settlement> Worker::Impl::conclude(Finished& f) {
    try {
        return conclude_unguarded(*f.job, f.outcome);
    } catch (const std::exception& e) {
        const Job& job = *f.job;
        if (monitor) monitor->released(job.task->id);
        std::string reason = fmt::format("could not be concluded: {}", e.what());
        report_dead_letter(task_fields(job, true), reason);
        return dead_letter(job.delivery, job.task->id, job.task->retries, reason, "InternalError",
                           "conveyor");
    }
}

detail::JobState Worker::Impl::state_of(const Job& job) const {
    detail::JobState s;
    s.retries = job.task->retries;
    s.policy = job.reg->options.retry;
    if (job.task->max_retries) s.policy.max_retries = *job.task->max_retries;
    s.lease_lost = job.lease_lost;
    s.shutting_down = job.release_on_finish;
    s.terminated = job.revoked;
    s.keyed = !job.key.empty();
    return s;
}

std::optional<Settlement> Worker::Impl::conclude_unguarded(Job& job, Outcome& o) {
    using Action = detail::Decision::Action;
    if (job.series && job.waited >= 0)  // counted here, on the dispatcher's thread
        detail::WorkerMetrics::waited(*job.series, job.waited);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    auto decision = detail::decide(o, state_of(job), u(rng));
    const Delivery& d = job.delivery;
    if (o.kind != Outcome::Kind::success && o.exc_type == "TimeLimitExceeded")
        detail::log(LogLevel::warning, "task.time_limit",
                    fmt::format("task {} ({}) stopped at its time limit: {}", job.task->id,
                                job.task->name, o.message),
                    task_fields(job, true));
    switch (decision.action) {
        case Action::abandon:
            detail::log(
                LogLevel::warning, "task.lease_lost",
                fmt::format("task {}: its lease was lost; stopped, not settled", job.task->id),
                task_fields(job, true));
            if (monitor) monitor->released(job.task->id);
            return Settlement{Settlement::Kind::release, d.tag};
        case Action::release:
            detail::log(LogLevel::info, "task.released",
                        fmt::format("task {}: stopped by shutdown; it goes back to its queue",
                                    job.task->id),
                        task_fields(job, true));
            released++;
            if (monitor) monitor->released(job.task->id);
            return Settlement{Settlement::Kind::release, d.tag};
        case Action::revoke:
            detail::log(LogLevel::info, "task.revoked",
                        fmt::format("task {} ({}) {}", job.task->id, job.task->name,
                                    decision.reason == "terminated" ? "terminated while it ran"
                                                                    : "revoked"),
                        task_fields(job, job.revoked));
            if (monitor) monitor->revoked(job.task->id, false, job.revoked);
            return revoked_settlement(d.tag, job.task->id, decision.reason.c_str());
        case Action::succeed:
            return succeed(job, o);
        case Action::dead_letter:
            return fail(job, o, decision);
        case Action::retry:
        case Action::retry_in_place:
            return retry(job, o, decision);
    }
    return std::nullopt;  // not reached: every action is handled above
}

std::optional<Settlement> Worker::Impl::succeed(Job& job, Outcome& o) {
    const Delivery& d = job.delivery;
    std::vector<std::string> children;
    if (canvas::has_followers(*job.task)) {
        if (auto ok = follow(job,
                             [&](auto& out, auto& extra) {
                                 return canvas::on_success(*broker, *job.task, o.result,
                                                           context_for(job), out, extra, &children);
                             });
            !ok) {
            if (ok.error().code == Errc::unavailable) {
                detail::log(LogLevel::warning, "task.released",
                            fmt::format("task {}: {}; it goes back to its queue", job.task->id,
                                        ok.error().message),
                            task_fields(job));
                released++;
                if (monitor) monitor->released(job.task->id);
                return Settlement{Settlement::Kind::release, d.tag};
            }
            report_dead_letter(task_fields(job, true), "workflow: " + ok.error().message);
            return dead_letter(d, job.task->id, job.task->retries,
                               "workflow: " + ok.error().message, "ChordError", "celery.exceptions",
                               ok.error().message);
        }
    }
    Settlement s;
    s.kind = Settlement::Kind::ack;
    s.tag = d.tag;
    s.attempt = attempt_of(job, {});
    succeeded++;
    if (job.series) detail::WorkerMetrics::succeeded(*job.series, run_seconds(job));
    if (auto level = opts.log_success ? LogLevel::info : LogLevel::debug;
        detail::log_enabled(level))
        detail::log(level, "task.succeeded",
                    fmt::format("task {} ({}) succeeded", job.task->id, job.task->name),
                    task_fields(job, true));
    if (monitor) monitor->succeeded(job.task->id, o.result, run_seconds(job));
    if (!job.task->ignore_result) {
        TaskResult r;
        r.id = job.task->id;
        r.state = TaskState::success;
        r.result = std::move(o.result);
        r.retries = job.task->retries;
        r.done_at = SystemClock::now();
        r.children = std::move(children);
        s.result = std::move(r);
    }
    return s;
}

Settlement Worker::Impl::fail(Job& job, const Outcome& o, const detail::Decision& decision) {
    if (job.series) detail::WorkerMetrics::failed(*job.series, run_seconds(job));
    report_dead_letter(task_fields(job, true), decision.reason);
    Settlement s = dead_letter(job.delivery, job.task->id, job.task->retries, decision.reason,
                               o.exc_type, o.exc_module, o.message);
    s.attempt = attempt_of(job, decision.failure.empty() ? exc_repr(o) : decision.failure);
    if (canvas::has_followers(*job.task) && s.result) {
        if (auto ok = follow(job,
                             [&](auto& out, auto& extra) {
                                 return canvas::on_failure(*broker, *job.task, *s.result,
                                                           context_for(job), out, extra);
                             });
            !ok)
            detail::log(LogLevel::warning, "workflow.failed",
                        fmt::format("task {}: workflow after its failure: {}", job.task->id,
                                    ok.error().message),
                        task_fields(job));
    }
    if (monitor) monitor->failed(job.task->id, exc_repr(o), decision.failure);
    return s;
}

std::optional<Settlement> Worker::Impl::retry(Job& job, const Outcome& o,
                                              const detail::Decision& decision) {
    retried++;
    if (job.series) {
        detail::WorkerMetrics::failed(*job.series, run_seconds(job));
        detail::WorkerMetrics::retried(*job.series);
    }
    if (detail::log_enabled(LogLevel::warning)) {
        Json fields = task_fields(job, true);
        fields["delay"] = double(decision.delay.count()) / 1000.0;
        fields["error"] = decision.failure;
        detail::log(LogLevel::warning, "task.retried",
                    fmt::format("task {} ({}) failed: {}; retry {} in {:.3g} s", job.task->id,
                                job.task->name, decision.failure, job.task->retries + 1,
                                double(decision.delay.count()) / 1000.0),
                    std::move(fields));
    }
    if (monitor) monitor->retried(job.task->id, exc_repr(o), decision.failure);
    if (decision.action == detail::Decision::Action::retry_in_place) {
        auto next = std::make_shared<TaskMessage>(*job.task);  // it may be the engine's too
        next->retries++;
        job.task = std::move(next);
        job.waited = -1;
        job.due = SystemClock::now() + decision.delay;
        job.started = false;
        job.stop = std::stop_source();
        sleeping.emplace(steady_clock::now() + decision.delay, &job);
        return std::nullopt;
    }
    Settlement s =
        reschedule(job.delivery, job.task->retries + 1, SystemClock::now() + decision.delay);
    s.attempt = attempt_of(job, decision.failure.empty() ? exc_repr(o) : decision.failure);
    if (!job.task->ignore_result) {
        // Stored (and sent to rpc senders) as Celery does: RETRY with the exception.
        TaskResult r;
        r.id = job.task->id;
        r.state = TaskState::retry;
        r.result = exception_result(o.exc_type, o.exc_module, o.message);
        r.traceback = decision.failure;
        r.retries = job.task->retries + 1;
        s.result = std::move(r);
    }
    return s;
}

std::string Worker::Impl::exc_repr(const Outcome& o) {
    return fmt::format("{}({})", o.exc_type, codec::value_repr(Json(o.message)));
}

canvas::Context Worker::Impl::context_for(const Job& job) const {
    return canvas::Context{job.delivery.queue, job.task->reply_to, {}};
}

}  // namespace conveyor
