// Handler threads: each takes a job, runs its handler and hands the outcome back.
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

void Worker::Impl::executor_loop() {
    for (;;) {
        Job* job = nullptr;
        {
            std::unique_lock lk(mu);
            work_cv.wait(lk, [&] { return executors_exit || !queued.empty(); });
            if (queued.empty()) return;
            job = queued.front();
            queued.pop_front();
            job->started = true;
            job->started_at = steady_clock::now();
        }
        Finished out{job, {}};
        if (monitor && monitor->is_revoked(job->task->id)) {
            out.outcome.kind = Outcome::Kind::revoked;  // revoked while it waited here
        } else {
            if (monitor) monitor->started(job->task->id);
            if ((opts.track_started || job->reg->options.track_started) &&
                !job->task->ignore_result)
                store_started(*job);
            if (job->due)
                job->waited = std::chrono::duration<double>(SystemClock::now() - *job->due).count();
            running++;
            out.outcome = execute(*job);
            running--;
            job->finished_at = steady_clock::now();
        }
        bool first;
        {
            std::lock_guard lk(mu);
            first = outcomes.empty();
            outcomes.push_back(std::move(out));
        }
        // The dispatcher takes every outcome at once: wake it for the first one only.
        if (first) outcome_cv.notify_one();
    }
}

void Worker::Impl::store_started(const Job& job) {
    TaskResult r;
    r.id = job.task->id;
    r.state = TaskState::started;
    r.result = Json{{"pid", getpid()}, {"hostname", opts.node_name}};
    r.retries = job.task->retries;
    if (auto ok = broker->store_results(std::span(&r, 1), job.task->reply_to); !ok)
        detail::log(
            LogLevel::warning, "task.started_not_stored",
            fmt::format("task {}: STARTED not stored: {}", job.task->id, ok.error().message),
            task_fields(job));
}

Outcome Worker::Impl::execute(Job& job) {
    Outcome out;
    TaskContext ctx(*job.task, job.delivery.queue, job.stop.get_token(), job.deadline,
                    job.delivery.taken);
    try {
        out.result = job.reg->fn(ctx);
        if (job.deadline && steady_clock::now() > *job.deadline) {
            out.kind = Outcome::Kind::failure;
            out.exc_type = "TimeLimitExceeded";
            out.exc_module = "celery.exceptions";
            out.message = "handler returned after its time limit";
        }
    } catch (const Reject& e) {
        out.kind = Outcome::Kind::reject;
        out.exc_type = "Reject";
        out.exc_module = "celery.exceptions";
        out.message = e.what();
    } catch (const TaskError& e) {
        out.kind = e.retryable ? Outcome::Kind::failure : Outcome::Kind::reject;
        out.exc_type = e.type;
        out.exc_module = e.module;
        out.message = e.what();
        out.retry_after = e.retry_after;
    } catch (const std::exception& e) {
        out.kind = Outcome::Kind::failure;
        out.exc_type = "Exception";
        out.message = e.what();
    } catch (...) {
        out.kind = Outcome::Kind::failure;
        out.exc_type = "Exception";
        out.message = "unknown exception";
    }
    return out;
}

}  // namespace conveyor
