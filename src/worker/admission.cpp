// Admission: a fetched delivery becomes a job, or at once a settlement (a dead letter for
// whatever is wrong with it, revoked, expired, or back to the broker until its ETA).
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <unordered_set>

#include "core/codec.hpp"
#include "core/time.hpp"
#include "core/try.hpp"
#include "worker/handlers.hpp"
#include "worker/worker_impl.hpp"

namespace conveyor {

const QueueConfig* Worker::Impl::raw_queue(const std::string& name) const {
    for (auto& q : opts.queue_formats)
        if (q.name == name && q.format == QueueFormat::raw) return &q;
    return nullptr;
}

Envelope Worker::Impl::message_of(const Delivery& d) const {
    if (!d.task) return d.envelope;
    if (current_consumer)
        if (auto kept = current_consumer->message(d.tag)) return std::move(*kept);
    return codec::encode(*d.task);
}

Settlement Worker::Impl::dead_letter(const Delivery& d, const std::string& id, int retries,
                                     std::string reason, const std::string& type,
                                     const std::string& module,
                                     std::optional<std::string> message) {
    Settlement s;
    s.kind = Settlement::Kind::dead_letter;
    s.tag = d.tag;
    s.envelope = message_of(d);
    s.reason = reason;
    TaskResult r;
    r.id = id;
    r.state = TaskState::failure;
    r.result = exception_result(type, module, message ? *message : reason);
    r.traceback = reason;
    r.retries = retries;
    r.done_at = SystemClock::now();
    s.result = std::move(r);
    dead++;
    return s;
}

Settlement Worker::Impl::reschedule(const Delivery& d, int retries, TimePoint when) {
    Settlement s;
    s.kind = Settlement::Kind::retry;
    s.tag = d.tag;
    s.envelope = message_of(d);
    if (!s.envelope.headers.is_object()) s.envelope.headers = Json::object();
    s.envelope.headers["retries"] = retries;
    s.envelope.headers["eta"] = detail::format_iso8601(when);
    s.not_before = when;
    return s;
}

Settlement Worker::Impl::revoked_settlement(std::uint64_t tag, const std::string& id,
                                            const char* reason) {
    Settlement s;
    s.kind = Settlement::Kind::ack;
    s.tag = tag;
    TaskResult r;
    r.id = id;
    r.state = TaskState::revoked;
    r.result = exception_result("TaskRevokedError", "celery.exceptions", reason);
    r.done_at = SystemClock::now();
    s.result = std::move(r);
    return s;
}

void Worker::Impl::admit(Delivery&& d, std::vector<Settlement>& settle_now,
                         std::vector<Job*>& ready) {
    std::size_t before = settle_now.size();
    if (opts.delivery_limit > 0 && d.deliveries > opts.delivery_limit) {
        // Delivered again and again without ever being settled: whatever it does to a
        // worker (a crash, a kill), it is not decoded again.
        settle_now.push_back(
            dead_letter(d, d.message_id, 0,
                        fmt::format("delivered {} times without being settled (delivery limit {})",
                                    d.deliveries, opts.delivery_limit),
                        "DeliveryLimitExceeded", "conveyor"));
    } else {
        try {
            admit_unguarded(d, settle_now, ready);
        } catch (const std::exception& e) {
            // `d` is intact unless it had already become a job (only an allocation fails then).
            settle_now.push_back(dead_letter(d, d.message_id, 0,
                                             fmt::format("could not be processed: {}", e.what()),
                                             "InternalError", "conveyor"));
        }
    }
    // What did not become a job (so `d` is intact) is told here, once.
    for (std::size_t i = before; i < settle_now.size(); ++i) {
        const Settlement& s = settle_now[i];
        if (!s.result) continue;
        Json fields = {
            {"id", s.result->id}, {"queue", d.queue}, {"attempt", s.result->retries + 1}};
        if (s.kind == Settlement::Kind::dead_letter)
            report_dead_letter(std::move(fields), s.reason);
        else if (s.result->state == TaskState::revoked)
            detail::log(
                LogLevel::info, "task.revoked",
                fmt::format("task {} {} before it ran", s.result->id,
                            s.result->traceback.starts_with("expired") ? "expired" : "was revoked"),
                std::move(fields));
    }
}

void Worker::Impl::admit_unguarded(Delivery& d, std::vector<Settlement>& settle_now,
                                   std::vector<Job*>& ready) {
    std::shared_ptr<const TaskMessage> task = d.task;  // passed as it is (memory)
    if (!task) {
        Result<TaskMessage> decoded;
        if (auto* rq = raw_queue(d.queue)) {
            // A plain publisher may set no id at all: the task gets one of its own.
            if (d.message_id.empty()) d.message_id = make_task_id();
            decoded = codec::decode_raw(d.envelope, rq->task, d.message_id, opts.max_body);
        } else {
            decoded = codec::decode(d.envelope, opts.max_body);
        }
        if (!decoded) {
            settle_now.push_back(dead_letter(d, d.message_id, 0,
                                             "malformed message: " + decoded.error().message,
                                             "ContentDisallowed", "kombu.exceptions"));
            return;
        }
        task = std::make_shared<const TaskMessage>(std::move(*decoded));
    }
    auto it = handlers.find(task->name);
    if (it == handlers.end()) {
        settle_now.push_back(dead_letter(
            d, task->id, task->retries,
            fmt::format("no handler registered for task '{}' on this worker", task->name),
            "NotRegistered", "celery.exceptions", task->name));
        if (monitor) monitor->failed(task->id, fmt::format("NotRegistered('{}')", task->name), "");
        return;
    }
    if (monitor && monitor->is_revoked(task->id)) {
        settle_now.push_back(revoked_settlement(d.tag, task->id, "revoked"));
        monitor->revoked(task->id, false, false);
        return;
    }
    // (The clock is read for a task with an expiry or an ETA only.)
    auto now = task->expires || task->eta ? SystemClock::now() : TimePoint{};
    if (task->expires && *task->expires < now) {
        if (monitor) monitor->revoked(task->id, true, false);
        Settlement s;
        s.kind = Settlement::Kind::ack;
        s.tag = d.tag;
        TaskResult r;
        r.id = task->id;
        r.state = TaskState::revoked;
        r.result = exception_result("TaskRevokedError", "celery.exceptions", "expired");
        r.traceback = "expired before it could run";
        r.done_at = now;
        s.result = std::move(r);
        settle_now.push_back(std::move(s));
        return;
    }
    if (task->eta && *task->eta > now + milliseconds(50)) {
        // A publisher that set an ETA header without telling the broker: hand the message
        // back to wait in the broker, never in this worker's memory.
        // The message already says when; it goes back unchanged.
        Settlement s;
        s.kind = Settlement::Kind::retry;
        s.tag = d.tag;
        s.envelope = d.task ? message_of(d) : std::move(d.envelope);
        s.not_before = *task->eta;
        settle_now.push_back(std::move(s));
        return;
    }
    if (monitor) monitor->received(task, d);
    std::string key = std::move(d.ordering_key);
    jobs.push_back(Job{std::move(d), std::move(task), &it->second});
    Job& job = jobs.back();
    job.self = std::prev(jobs.end());
    job.key = std::move(key);
    job.due = job.delivery.due;
    if (opts.metrics) job.series = series_of(job.delivery.queue, job.task->name);
    if (job.task->eta && (!job.due || *job.task->eta > *job.due)) job.due = job.task->eta;
    if (!key_order.admit(job.key, &job)) return;  // behind an earlier task with its key
    arm_deadline(job);
    ready.push_back(&job);
}

void Worker::Impl::arm_deadline(Job& job) {
    std::optional<milliseconds> limit = job.reg->options.timeout;
    if (job.task->time_limit && *job.task->time_limit > 0)  // bounded by the codec
        limit = detail::seconds_to_ms(*job.task->time_limit);
    job.deadline.reset();
    if (limit) job.deadline = steady_clock::now() + *limit;
}

}  // namespace conveyor
