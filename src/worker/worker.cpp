#include "conveyor/worker.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "client/canvas.hpp"
#include "conveyor/engine.hpp"
#include "core/codec.hpp"
#include "core/lifecycle.hpp"
#include "core/node.hpp"
#include "core/time.hpp"
#include "core/try.hpp"
#include "worker/handlers.hpp"
#include "worker/key_order.hpp"
#include "worker/monitor.hpp"
#include "worker/outcome.hpp"
#include "worker/storage_backoff.hpp"

namespace conveyor {

using detail::Outcome;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

Json task_payload(const TaskMessage& t, const std::string& queue) {
    Json j = {{"id", t.id},           {"task", t.name}, {"args", t.args},      {"kwargs", t.kwargs},
              {"retries", t.retries}, {"queue", queue}, {"root_id", t.root_id}};
    j["parent_id"] = t.parent_id.empty() ? Json() : Json(t.parent_id);
    j["eta"] = t.eta ? Json(detail::format_iso8601(*t.eta)) : Json();
    if (t.body) j["content_type"] = t.content_type;
    return j;
}

namespace {

struct Registration {
    Handler fn;
    TaskOptions options;
};

struct Job {
    Delivery delivery;
    TaskMessage task;
    const Registration* reg = nullptr;
    std::stop_source stop;
    std::optional<steady_clock::time_point> deadline;
    bool started = false;
    bool release_on_finish = false;
    bool revoked = false;     ///< `revoke --terminate` stopped it
    bool lease_lost = false;  ///< another worker may run it now: stopped, its outcome dropped
    steady_clock::time_point started_at{};
    std::string key;  ///< ordering key: jobs with the same key run one at a time, in order
};

/// A job's run and what it came to, on its way from an executor to the dispatcher.
struct Finished {
    Job* job = nullptr;
    detail::Outcome outcome;
};

Json exception_result(const std::string& type, const std::string& module,
                      const std::string& message) {
    return Json{
        {"exc_type", type}, {"exc_message", Json::array({message})}, {"exc_module", module}};
}

}  // namespace

/// A StorageBackoff that says, in one line each, when failing begins and when it ends.
class StorageTrouble {
  public:
    bool ready(steady_clock::time_point now) const { return backoff_.ready(now); }
    /// True when `e` passes by itself (the caller carries on later); false when it is fatal.
    bool failed(const Error& e, const char* doing) {
        bool began = !backoff_.failing();
        if (!backoff_.failed(e, steady_clock::now())) return false;
        if (began)
            fmt::print(stderr, "conveyor: {} failed ({}); retrying with backoff\n", doing,
                       e.message);
        return true;
    }
    void succeeded() {
        if (backoff_.failing()) fmt::print(stderr, "conveyor: the broker works again\n");
        backoff_.succeeded();
    }

  private:
    detail::StorageBackoff backoff_;
};

/// Group commit of settlements: how long and how many outcomes wait for others.
constexpr milliseconds kSettleWindow{2};
constexpr std::size_t kSettleBatch = 256;

struct Worker::Impl {
    std::shared_ptr<Broker> broker;
    WorkerOptions opts;
    std::map<std::string, Registration, std::less<>> handlers;

    std::atomic<bool> stopping{false};
    detail::Lifecycle life;  // Worker::end waits on it before the Impl goes
    std::atomic<std::uint64_t> succeeded{0}, retried{0}, dead{0}, released{0}, running{0};

    // Jobs waiting for an executor thread, and their outcomes going back.
    std::mutex mu;
    std::condition_variable work_cv;
    std::condition_variable outcome_cv;
    std::deque<Job*> queued;
    std::vector<Finished> outcomes;
    bool executors_exit = false;
    /// `celery control add_consumer / cancel_consumer`, applied by the dispatcher.
    std::vector<std::pair<std::string, bool>> consumer_changes;

    std::list<Job> jobs;  // every unsettled delivery; owned by the dispatcher thread
    std::unordered_map<Job*, std::list<Job>::iterator> job_index;
    // Per-key order (dispatcher thread only): the key of a running or sleeping job is busy;
    // later jobs with that key wait behind it. A keyed job that fails sleeps here for its
    // backoff and runs again, so it keeps its place in the order.
    detail::KeyOrder<Job*> key_order;
    std::multimap<steady_clock::time_point, Job*> sleeping;
    std::mt19937_64 rng;
    std::unique_ptr<detail::Monitor> monitor;  // amqp: Celery events and remote control

    Impl(std::shared_ptr<Broker> b, WorkerOptions o) : broker(std::move(b)), opts(std::move(o)) {
        if (opts.name.empty()) opts.name = detail::process_name();
        opts.node_name = detail::node_name(opts.node_name);
        if (opts.prefetch == 0) opts.prefetch = std::size_t(std::max(1, opts.concurrency)) * 4;
        if (opts.concurrency < 1) opts.concurrency = 1;
        rng.seed(opts.seed ? opts.seed : std::random_device{}());
    }

    const QueueConfig* raw_queue(const std::string& name) const {
        for (auto& q : opts.queue_formats)
            if (q.name == name && q.format == QueueFormat::raw) return &q;
        return nullptr;
    }

    // ---- executor threads -------------------------------------------------------------
    void executor_loop() {
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
            if (monitor && monitor->is_revoked(job->task.id)) {
                out.outcome.kind = Outcome::Kind::revoked;  // revoked while it waited here
            } else {
                if (monitor) monitor->started(job->task.id);
                if ((opts.track_started || job->reg->options.track_started) &&
                    !job->task.ignore_result)
                    store_started(*job);
                running++;
                out.outcome = execute(*job);
                running--;
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

    /// Celery's track_started: STARTED, with who runs it, before the handler does.
    void store_started(const Job& job) {
        TaskResult r;
        r.id = job.task.id;
        r.state = TaskState::started;
        r.result = Json{{"pid", getpid()}, {"hostname", opts.node_name}};
        r.retries = job.task.retries;
        if (auto ok = broker->store_results(std::span(&r, 1), job.task.reply_to); !ok)
            fmt::print(stderr, "conveyor: task {}: STARTED not stored: {}\n", job.task.id,
                       ok.error().message);
    }

    Outcome execute(Job& job) {
        Outcome out;
        TaskContext ctx(job.task, job.delivery.queue, job.stop.get_token(), job.deadline);
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

    // ---- dispatcher -------------------------------------------------------------------
    /// `message` is the exception's message for results (default: the reason).
    Settlement dead_letter(const Delivery& d, const std::string& id, int retries,
                           std::string reason, const std::string& type, const std::string& module,
                           std::optional<std::string> message = std::nullopt) {
        Settlement s;
        s.kind = Settlement::Kind::dead_letter;
        s.tag = d.tag;
        s.envelope = d.envelope;
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

    Settlement reschedule(const Delivery& d, int retries, TimePoint when) {
        Settlement s;
        s.kind = Settlement::Kind::retry;
        s.tag = d.tag;
        s.envelope = d.envelope;
        if (!s.envelope.headers.is_object()) s.envelope.headers = Json::object();
        s.envelope.headers["retries"] = retries;
        s.envelope.headers["eta"] = detail::format_iso8601(when);
        s.not_before = when;
        return s;
    }

    /// Acked, with REVOKED stored (`reason`: "revoked" or "terminated"), as Celery does.
    Settlement revoked_settlement(std::uint64_t tag, const std::string& id, const char* reason) {
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

    // Decides what a freshly fetched delivery becomes: a job, or an immediate settlement.
    // Nothing in a message may stop the worker: whatever goes wrong with one becomes its dead
    // letter, with the reason.
    void admit(Delivery&& d, std::vector<Settlement>& settle_now, std::vector<Job*>& ready) {
        if (opts.delivery_limit > 0 && d.deliveries > opts.delivery_limit) {
            // Delivered again and again without ever being settled: whatever it does to a
            // worker (a crash, a kill), it is not decoded again.
            settle_now.push_back(dead_letter(
                d, d.message_id, 0,
                fmt::format("delivered {} times without being settled (delivery limit {})",
                            d.deliveries, opts.delivery_limit),
                "DeliveryLimitExceeded", "conveyor"));
            return;
        }
        try {
            admit_unguarded(d, settle_now, ready);
        } catch (const std::exception& e) {
            // `d` is intact unless it had already become a job (only an allocation fails then).
            settle_now.push_back(dead_letter(d, d.message_id, 0,
                                             fmt::format("could not be processed: {}", e.what()),
                                             "InternalError", "conveyor"));
        }
    }

    /// Moves `d` into a job when it becomes one.
    void admit_unguarded(Delivery& d, std::vector<Settlement>& settle_now,
                         std::vector<Job*>& ready) {
        Result<TaskMessage> task;
        if (auto* rq = raw_queue(d.queue)) {
            // A plain publisher may set no id at all: the task gets one of its own.
            if (d.message_id.empty()) d.message_id = make_task_id();
            task = codec::decode_raw(d.envelope, rq->task, d.message_id, opts.max_body);
        } else {
            task = codec::decode(d.envelope, opts.max_body);
        }
        if (!task) {
            settle_now.push_back(dead_letter(d, d.message_id, 0,
                                             "malformed message: " + task.error().message,
                                             "ContentDisallowed", "kombu.exceptions"));
            return;
        }
        auto it = handlers.find(task->name);
        if (it == handlers.end()) {
            settle_now.push_back(dead_letter(
                d, task->id, task->retries,
                fmt::format("no handler registered for task '{}' on this worker", task->name),
                "NotRegistered", "celery.exceptions", task->name));
            if (monitor)
                monitor->failed(task->id, fmt::format("NotRegistered('{}')", task->name), "");
            return;
        }
        if (monitor && monitor->is_revoked(task->id)) {
            settle_now.push_back(revoked_settlement(d.tag, task->id, "revoked"));
            monitor->revoked(task->id, false, false);
            return;
        }
        auto now = SystemClock::now();
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
            s.envelope = std::move(d.envelope);
            s.not_before = *task->eta;
            settle_now.push_back(std::move(s));
            return;
        }
        if (monitor) monitor->received(*task, d);
        std::string key = std::move(d.ordering_key);
        jobs.push_back(Job{std::move(d), std::move(*task), &it->second});
        Job& job = jobs.back();
        job_index[&job] = std::prev(jobs.end());
        job.key = std::move(key);
        if (!key_order.admit(job.key, &job)) return;  // behind an earlier task with its key
        arm_deadline(job);
        ready.push_back(&job);
    }

    void arm_deadline(Job& job) {
        std::optional<milliseconds> limit = job.reg->options.timeout;
        if (job.task.time_limit && *job.task.time_limit > 0)  // bounded by the codec
            limit = detail::seconds_to_ms(*job.task.time_limit);
        job.deadline.reset();
        if (limit) job.deadline = steady_clock::now() + *limit;
    }

    /// A keyed job is settled: the next job with its key may run.
    void release_key(Job* job, std::vector<Job*>& ready) {
        if (auto next = key_order.done(job->key)) {
            arm_deadline(**next);
            ready.push_back(*next);
        }
    }

    void enqueue_ready(const std::vector<Job*>& ready) {
        if (ready.empty()) return;
        {
            std::lock_guard lk(mu);
            for (Job* j : ready) queued.push_back(j);
        }
        if (ready.size() == 1)
            work_cv.notify_one();
        else
            work_cv.notify_all();
    }

    /// What an outcome becomes; nullopt while a keyed job sleeps before it runs again. Any
    /// failure on the way (a workflow field of the wrong type, say) dead-letters the task.
    std::optional<Settlement> conclude(Finished& f) {
        try {
            return conclude_unguarded(*f.job, f.outcome);
        } catch (const std::exception& e) {
            const Job& job = *f.job;
            if (monitor) monitor->released(job.task.id);
            return dead_letter(job.delivery, job.task.id, job.task.retries,
                               fmt::format("could not be concluded: {}", e.what()), "InternalError",
                               "conveyor");
        }
    }

    detail::JobState state_of(const Job& job) const {
        detail::JobState s;
        s.retries = job.task.retries;
        s.policy = job.reg->options.retry;
        if (job.task.max_retries) s.policy.max_retries = *job.task.max_retries;
        s.lease_lost = job.lease_lost;
        s.shutting_down = job.release_on_finish;
        s.terminated = job.revoked;
        s.keyed = !job.key.empty();
        return s;
    }

    /// Decides (detail::decide), acts (workflow steps, the settlement), then tells the
    /// monitor once.
    std::optional<Settlement> conclude_unguarded(Job& job, Outcome& o) {
        using Action = detail::Decision::Action;
        std::uniform_real_distribution<double> u(0.0, 1.0);
        auto decision = detail::decide(o, state_of(job), u(rng));
        const Delivery& d = job.delivery;
        switch (decision.action) {
            case Action::abandon:
                fmt::print(stderr, "conveyor: task {}: its lease was lost; stopped, not settled\n",
                           job.task.id);
                if (monitor) monitor->released(job.task.id);
                return Settlement{Settlement::Kind::release, d.tag};
            case Action::release:
                released++;
                if (monitor) monitor->released(job.task.id);
                return Settlement{Settlement::Kind::release, d.tag};
            case Action::revoke:
                if (monitor) monitor->revoked(job.task.id, false, job.revoked);
                return revoked_settlement(d.tag, job.task.id, decision.reason.c_str());
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

    /// Acked with SUCCESS; a workflow's next steps are published first (if that cannot be
    /// done now, the task goes back to its queue; if it can never be, it is dead-lettered).
    std::optional<Settlement> succeed(Job& job, Outcome& o) {
        const Delivery& d = job.delivery;
        std::vector<std::string> children;
        if (canvas::has_followers(job.task)) {
            if (auto ok = follow(job,
                                 [&](auto& out, auto& extra) {
                                     return canvas::on_success(*broker, job.task, o.result,
                                                               context_for(job), out, extra,
                                                               &children);
                                 });
                !ok) {
                if (ok.error().code == Errc::unavailable) {
                    fmt::print(stderr, "conveyor: task {}: {}; it goes back to its queue\n",
                               job.task.id, ok.error().message);
                    released++;
                    if (monitor) monitor->released(job.task.id);
                    return Settlement{Settlement::Kind::release, d.tag};
                }
                return dead_letter(d, job.task.id, job.task.retries,
                                   "workflow: " + ok.error().message, "ChordError",
                                   "celery.exceptions", ok.error().message);
            }
        }
        Settlement s;
        s.kind = Settlement::Kind::ack;
        s.tag = d.tag;
        succeeded++;
        if (monitor)
            monitor->succeeded(
                job.task.id, o.result,
                std::chrono::duration<double>(steady_clock::now() - job.started_at).count());
        if (!job.task.ignore_result) {
            TaskResult r;
            r.id = job.task.id;
            r.state = TaskState::success;
            r.result = std::move(o.result);
            r.retries = job.task.retries;
            r.done_at = SystemClock::now();
            r.children = std::move(children);
            s.result = std::move(r);
        }
        return s;
    }

    /// Dead-lettered with FAILURE; a workflow's error path (errbacks, the rest of a chain, a
    /// chord) is followed on a best-effort basis: the failure stands either way.
    Settlement fail(Job& job, const Outcome& o, const detail::Decision& decision) {
        Settlement s = dead_letter(job.delivery, job.task.id, job.task.retries, decision.reason,
                                   o.exc_type, o.exc_module, o.message);
        if (canvas::has_followers(job.task) && s.result) {
            if (auto ok = follow(job,
                                 [&](auto& out, auto& extra) {
                                     return canvas::on_failure(*broker, job.task, *s.result,
                                                               context_for(job), out, extra);
                                 });
                !ok)
                fmt::print(stderr, "conveyor: task {}: workflow after its failure: {}\n",
                           job.task.id, ok.error().message);
        }
        if (monitor) monitor->failed(job.task.id, exc_repr(o), decision.failure);
        return s;
    }

    /// Back to the broker with RETRY stored, or (keyed) asleep here to run again in place.
    std::optional<Settlement> retry(Job& job, const Outcome& o, const detail::Decision& decision) {
        retried++;
        if (monitor) monitor->retried(job.task.id, exc_repr(o), decision.failure);
        if (decision.action == detail::Decision::Action::retry_in_place) {
            job.task.retries++;
            job.started = false;
            job.stop = std::stop_source();
            sleeping.emplace(steady_clock::now() + decision.delay, &job);
            return std::nullopt;
        }
        Settlement s =
            reschedule(job.delivery, job.task.retries + 1, SystemClock::now() + decision.delay);
        if (!job.task.ignore_result) {
            // Stored (and sent to rpc senders) as Celery does: RETRY with the exception.
            TaskResult r;
            r.id = job.task.id;
            r.state = TaskState::retry;
            r.result = exception_result(o.exc_type, o.exc_module, o.message);
            r.traceback = decision.failure;
            r.retries = job.task.retries + 1;
            s.result = std::move(r);
        }
        return s;
    }

    static std::string exc_repr(const Outcome& o) {
        return fmt::format("{}({})", o.exc_type, codec::value_repr(Json(o.message)));
    }

    canvas::Context context_for(const Job& job) const {
        return canvas::Context{job.delivery.queue, job.task.reply_to, {}};
    }

    /// Runs a workflow step (`fn` fills the messages to publish and results to store), then
    /// publishes and stores them.
    template <class Fn>
    Result<void> follow(const Job& job, Fn&& fn) {
        std::vector<OutgoingMessage> out;
        std::vector<TaskResult> extra;
        CONVEYOR_TRY(fn(out, extra));
        if (!out.empty()) CONVEYOR_TRY(broker->publish(out));
        if (!extra.empty()) CONVEYOR_TRY(broker->store_results(extra, job.task.reply_to));
        return {};
    }

    /// The broker says these deliveries are no longer ours (a lease ran out and another worker
    /// took the task, or the connection they came on is gone): their runs are stopped (an
    /// `exec` process is killed), so a task never runs twice at once.
    void lose_leases(const std::vector<std::uint64_t>& tags) {
        if (tags.empty()) return;
        std::unordered_set<std::uint64_t> lost(tags.begin(), tags.end());
        std::vector<Job*> not_started, promoted;
        {
            std::lock_guard lk(mu);  // `started` and `queued` are shared with the executors
            for (auto& j : jobs) {
                if (!lost.contains(j.delivery.tag)) continue;
                j.lease_lost = true;
                j.stop.request_stop();
                if (!j.started) not_started.push_back(&j);
            }
            // Not started yet: dropped here (queued, waiting for their key, or sleeping before
            // a retry); running ones are concluded when they return.
            for (Job* j : not_started) {
                std::erase(queued, j);
                for (auto it = sleeping.begin(); it != sleeping.end();)
                    it = it->second == j ? sleeping.erase(it) : std::next(it);
                if (auto next = key_order.drop(j->key, j)) promoted.push_back(*next);
            }
        }
        std::unordered_set<Job*> dropped(not_started.begin(), not_started.end());
        std::erase_if(promoted, [&](Job* j) { return dropped.contains(j); });
        for (Job* j : not_started) {
            if (monitor) monitor->released(j->task.id);
            forget(j);
        }
        // The next task of a dropped one's key moves up.
        for (Job* j : promoted) arm_deadline(*j);
        enqueue_ready(promoted);
    }

    void forget(Job* job) {
        auto it = job_index.find(job);
        if (it == job_index.end()) return;
        jobs.erase(it->second);
        job_index.erase(it);
    }

    /// Celery events and remote control (amqp), when the engine has them.
    void start_monitor() {
        auto ch = broker->control(opts.node_name);
        if (!ch) {
            fmt::print(stderr, "conveyor: no monitoring/remote control: {}\n", ch.error().message);
            return;
        }
        if (!*ch) return;
        detail::MonitorOptions mo;
        mo.node = opts.node_name;
        mo.concurrency = opts.concurrency;
        mo.prefetch = opts.prefetch;
        mo.queues = opts.queues;
        for (auto& [name, _] : handlers) mo.registered.push_back(name);
        mo.task_events = opts.task_events;
        mo.on_shutdown = [this] { stopping.store(true); };
        mo.on_consumer_change = [this](const std::string& queue, bool consume) {
            std::lock_guard lk(mu);
            consumer_changes.emplace_back(queue, consume);
        };
        mo.conf = Json{{"broker_url", broker->url()},
                       {"worker_concurrency", opts.concurrency},
                       {"worker_prefetch_count", opts.prefetch},
                       {"task_acks_late", true},
                       {"task_queues", opts.queues},
                       {"worker_delivery_limit", opts.delivery_limit},
                       {"worker_shutdown_grace", opts.shutdown_grace.count() / 1000.0}};
        monitor = std::make_unique<detail::Monitor>(std::move(*ch), std::move(mo));
        monitor->start();
    }

    /// The dispatcher's state from one round of its loop to the next.
    struct Round {
        std::vector<Settlement> pending;  // settlements waiting for a group commit
        // The last time nothing was pending: the oldest pending settlement is younger.
        steady_clock::time_point pending_since{};
        steady_clock::time_point last_deadline_scan{};
        steady_clock::time_point last_settle{};
        steady_clock::time_point last_renew{};
        milliseconds renew_every{};
        bool draining = false;   // shutting down: no more fetches
        bool stop_sent = false;  // the grace period is over: running handlers are told to stop
        steady_clock::time_point grace_deadline{};
        StorageTrouble storage;
    };

    /// 1. Outcomes become settlements; keyed jobs whose retry delay passed run again.
    void collect_outcomes(Round& r) {
        std::vector<Finished> done;
        {
            std::lock_guard lk(mu);
            done.swap(outcomes);
        }
        std::vector<Job*> unblocked;
        for (auto& o : done) {
            auto s = conclude(o);
            if (!s) continue;  // sleeping before it runs again
            r.pending.push_back(std::move(*s));
            release_key(o.job, unblocked);
            forget(o.job);
        }
        for (auto now = steady_clock::now();
             !sleeping.empty() && sleeping.begin()->first <= now && !stopping.load();) {
            Job* j = sleeping.begin()->second;
            sleeping.erase(sleeping.begin());
            arm_deadline(*j);
            unblocked.push_back(j);
        }
        enqueue_ready(unblocked);
    }

    /// 2. Shutdown: stop fetching, hand back what has not started, wait for the rest; after
    /// the grace period, tell running handlers to stop.
    void drain(Round& r) {
        if (!r.draining) {
            r.draining = true;
            r.grace_deadline = steady_clock::now() + opts.shutdown_grace;
            std::deque<Job*> not_started;
            {
                std::lock_guard lk(mu);
                not_started.swap(queued);
            }
            for (auto& [_, j] : sleeping) not_started.push_back(j);
            sleeping.clear();
            for (Job* j : key_order.take_waiting()) not_started.push_back(j);
            for (Job* j : not_started) {
                r.pending.push_back(Settlement{Settlement::Kind::release, j->delivery.tag});
                released++;
                forget(j);
            }
        }
        if (!r.stop_sent && steady_clock::now() >= r.grace_deadline) {
            r.stop_sent = true;
            for (auto& j : jobs) {
                j.release_on_finish = true;
                j.stop.request_stop();
            }
        }
    }

    /// Queues added or cancelled by remote control.
    void apply_consumer_changes(Consumer& consumer) {
        std::vector<std::pair<std::string, bool>> changes;
        {
            std::lock_guard lk(mu);
            changes.swap(consumer_changes);
        }
        for (auto& [queue, consume] : changes)
            if (auto ok = consumer.set_consuming(queue, consume); !ok)
                fmt::print(stderr, "conveyor: {} queue '{}': {}\n",
                           consume ? "cannot consume from" : "cannot stop consuming from", queue,
                           ok.error().message);
    }

    /// 3. Time limits, and `revoke --terminate`.
    void stop_overdue(Round& r, steady_clock::time_point now) {
        if (monitor)
            for (auto& id : monitor->take_terminations())
                for (auto& j : jobs)
                    if (j.task.id == id && j.started) {
                        j.revoked = true;
                        j.stop.request_stop();
                    }
        if (now - r.last_deadline_scan < milliseconds(5)) return;  // not per outcome: O(jobs)
        r.last_deadline_scan = now;
        for (auto& j : jobs)
            if (j.deadline && now >= *j.deadline && !j.stop.stop_requested()) j.stop.request_stop();
    }

    /// 4. Settles (one transaction for the whole batch: group commit) and keeps leases alive.
    /// While other jobs are still running their outcomes join the batch, for at most
    /// kSettleWindow or kSettleBatch settlements; an idle worker settles at once. While
    /// storage is failing (disk full, locked past its timeout) nothing is lost: settlements
    /// wait here, running tasks go on, and the worker looks again later. An error only when
    /// the broker fails for good.
    Result<void> settle_and_renew(Consumer& consumer, Round& r, steady_clock::time_point now) {
        if (r.pending.empty()) r.pending_since = now;
        bool more_coming = !jobs.empty() && !r.draining;
        // Unsettled deliveries count against the broker's prefetch window: a quarter at most.
        std::size_t batch_max = std::min(kSettleBatch, std::max<std::size_t>(1, opts.prefetch / 4));
        bool storage_up = r.storage.ready(now);
        if (storage_up && !r.pending.empty() &&
            (!more_coming || r.pending.size() >= batch_max ||
             now - r.pending_since >= kSettleWindow)) {
            if (auto ok = consumer.settle(r.pending); !ok) {
                if (!r.storage.failed(ok.error(), "settling tasks")) return ok;
            } else {
                r.storage.succeeded();
                r.pending.clear();
                r.pending_since = now;
                r.last_settle = now;
            }
        } else if (storage_up && r.pending.empty() && now - r.last_settle >= milliseconds(50)) {
            // Nothing to settle: lets the consumer send what it holds back (RabbitMQ acks
            // waiting behind a long task) even while no fetch or outcome comes.
            r.last_settle = now;
            CONVEYOR_TRY(consumer.settle(std::span<Settlement>()));
        }
        if (r.storage.ready(now) && now - r.last_renew >= r.renew_every) {
            r.last_renew = now;
            auto lost = consumer.renew();
            if (!lost) {
                if (!r.storage.failed(lost.error(), "renewing leases"))
                    return std::unexpected(lost.error());
            } else {
                lose_leases(*lost);
            }
        }
        return {};
    }

    /// 5. Fetches more when a quarter of the window is free (fewer, larger batches), or when
    /// handler threads would otherwise idle. True when deliveries came.
    Result<bool> fetch_more(Consumer& consumer, Round& r, steady_clock::time_point now) {
        std::size_t held = jobs.size();
        bool idle_threads = held < std::size_t(opts.concurrency);
        if (r.draining || held >= opts.prefetch ||
            (!idle_threads && opts.prefetch - held < std::max<std::size_t>(1, opts.prefetch / 4)))
            return false;
        milliseconds wait = held == 0      ? milliseconds(20)
                            : idle_threads ? milliseconds(2)
                                           : milliseconds(0);
        if (!r.storage.ready(now)) return false;
        auto got = consumer.fetch(opts.prefetch - held, wait);
        if (!got) {
            if (r.storage.failed(got.error(), "fetching tasks")) return false;
            return std::unexpected(got.error());
        }
        r.storage.succeeded();
        std::vector<Job*> ready;
        for (auto& d : *got) admit(std::move(d), r.pending, ready);
        enqueue_ready(ready);
        return !got->empty();
    }

    /// After the loop: running handlers are stopped and joined, what is still held is handed
    /// back (best effort), the monitor says the worker is offline.
    void finish(Consumer& consumer, std::vector<std::jthread>& threads) {
        for (auto& j : jobs) {
            j.release_on_finish = true;
            j.stop.request_stop();
        }
        {
            std::lock_guard lk(mu);
            queued.clear();
            executors_exit = true;
        }
        work_cv.notify_all();
        threads.clear();  // joins
        if (!jobs.empty()) {
            std::vector<Settlement> back;
            for (auto& j : jobs)
                back.push_back(Settlement{Settlement::Kind::release, j.delivery.tag});
            (void)consumer.settle(back);
            jobs.clear();
            job_index.clear();
        }
        outcomes.clear();
        sleeping.clear();
        key_order.clear();
        if (monitor) {
            monitor->stop();  // worker-offline
            monitor.reset();
        }
    }

    Result<void> run() {
        ConsumerOptions co;
        co.queues = opts.queues;
        co.prefetch = opts.prefetch;
        co.lease = opts.lease;
        co.name = opts.name;
        auto consumer_r = broker->consume(co);
        CONVEYOR_TRY(consumer_r);
        auto& consumer = **consumer_r;
        {
            std::lock_guard lk(mu);
            executors_exit = false;
        }
        if (opts.remote_control) start_monitor();
        std::vector<std::jthread> threads;
        for (int i = 0; i < opts.concurrency; ++i)
            threads.emplace_back([this] { executor_loop(); });

        Round r;
        r.last_renew = steady_clock::now();
        r.renew_every = std::max(milliseconds(50), opts.lease / 3);
        Result<void> failure;
        for (;;) {
            collect_outcomes(r);
            if (stopping.load()) drain(r);
            apply_consumer_changes(consumer);
            auto now = steady_clock::now();
            stop_overdue(r, now);
            if (auto ok = settle_and_renew(consumer, r, now); !ok) {
                failure = std::move(ok);
                break;
            }
            // Shutdown ends once every job is settled, or when storage stays down past the
            // grace period (the leases run out and other workers take the tasks).
            if (r.draining && jobs.empty() && (r.pending.empty() || now >= r.grace_deadline)) break;
            auto fetched = fetch_more(consumer, r, now);
            if (!fetched) {
                failure = std::unexpected(fetched.error());
                break;
            }
            if (*fetched) continue;
            std::unique_lock lk(mu);
            outcome_cv.wait_for(
                lk, r.pending.empty() || !r.storage.ready(now) ? milliseconds(20) : kSettleWindow,
                [&] { return !outcomes.empty(); });
        }
        finish(consumer, threads);
        return failure;
    }
};

Worker::Worker(std::shared_ptr<Broker> broker, WorkerOptions options)
    : impl_(std::make_unique<Impl>(std::move(broker), std::move(options))) {}
Worker::Worker(Worker&&) noexcept = default;
Worker& Worker::operator=(Worker&& other) noexcept {
    if (this != &other) {
        end();
        impl_ = std::move(other.impl_);
    }
    return *this;
}
Worker::~Worker() { end(); }

void Worker::end() noexcept {
    if (!impl_) return;
    impl_->stopping.store(true);
    (void)impl_->life.wait(std::nullopt, "the worker");
    impl_->life.join();
}

void Worker::handle(std::string task, TaskOptions options, Handler fn) {
    impl_->handlers[std::move(task)] = Registration{std::move(fn), options};
}

void Worker::handle(std::string task, Handler fn) {
    TaskOptions o;
    o.retry = impl_->opts.default_retry;
    handle(std::move(task), o, std::move(fn));
}

void Worker::handle_exec(std::string task, std::vector<std::string> argv, TaskOptions options) {
    handle(std::move(task), options,
           [argv = std::move(argv), input = options.input](TaskContext& ctx) {
               return detail::run_exec(argv, ctx, input);
           });
}

void Worker::handle_http(std::string task, std::string url, TaskOptions options) {
    handle(std::move(task), options,
           [url = std::move(url), input = options.input](TaskContext& ctx) {
               return detail::run_http(url, ctx, input);
           });
}

void Worker::configure(const Config& config) {
    impl_->opts.default_retry = config.default_retry;
    for (auto& q : config.queues) impl_->opts.queue_formats.push_back(q);
    for (auto& t : config.tasks) {
        TaskOptions o;
        o.retry = t.retry;
        o.track_started = t.track_started || config.worker.track_started;
        o.input = t.input_body ? HandlerInput::body : HandlerInput::task;
        if (t.timeout) o.timeout = milliseconds(static_cast<long long>(*t.timeout * 1000));
        if (!t.exec.empty())
            handle_exec(t.name, t.exec, o);
        else if (!t.http.empty())
            handle_http(t.name, t.http, o);
        else if (auto it = impl_->handlers.find(t.name); it != impl_->handlers.end())
            it->second.options = o;  // in-process handler registered in code; config sets policy
    }
}

Result<void> Worker::run() {
    Impl* impl = impl_.get();
    return impl->life.run("the worker", [impl] { return impl->run(); });
}
Result<void> Worker::start() {
    Impl* impl = impl_.get();
    return impl->life.start("the worker", [impl] { return impl->run(); });
}
void Worker::stop() noexcept { impl_->stopping.store(true); }
Result<void> Worker::wait(std::optional<std::chrono::milliseconds> timeout) {
    return impl_->life.wait(timeout, "the worker");
}
bool Worker::running() const noexcept { return impl_->life.running(); }

WorkerStats Worker::stats() const noexcept {
    return WorkerStats{impl_->succeeded.load(), impl_->retried.load(), impl_->dead.load(),
                       impl_->released.load(), impl_->running.load()};
}

}  // namespace conveyor
