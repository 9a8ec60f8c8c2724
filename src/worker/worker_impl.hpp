#pragma once
// The worker's insides, shared by the files that implement it: admission.cpp (a delivery
// becomes a job or a settlement), executor.cpp (handler threads), conclusion.cpp (an outcome
// becomes a settlement), dispatcher.cpp (the loop that fetches, settles and renews).

#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "client/canvas.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/log.hpp"
#include "conveyor/worker.hpp"
#include "core/lifecycle.hpp"
#include "core/node.hpp"
#include "core/try.hpp"
#include "server/listener.hpp"
#include "worker/key_order.hpp"
#include "worker/metrics.hpp"
#include "worker/monitor.hpp"
#include "worker/outcome.hpp"
#include "worker/storage_backoff.hpp"

namespace conveyor {

using detail::Outcome;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

namespace worker_detail {

struct Registration {
    Handler fn;
    TaskOptions options;
};

struct Job {
    Delivery delivery;
    /// Decoded from the delivery, or the engine's own (Delivery::task); replaced, not changed.
    std::shared_ptr<const TaskMessage> task;
    const Registration* reg = nullptr;
    std::stop_source stop;
    std::optional<steady_clock::time_point> deadline;
    bool started = false;
    bool release_on_finish = false;
    bool revoked = false;     ///< `revoke --terminate` stopped it
    bool lease_lost = false;  ///< another worker may run it now: stopped, its outcome dropped
    steady_clock::time_point started_at{};
    steady_clock::time_point finished_at{};  ///< when its handler returned
    std::optional<TimePoint> due;  ///< when it could have started (for the wait-time metric)
    detail::WorkerMetrics::Series* series = nullptr;  ///< its metrics (none: not collected)
    double waited = -1;  ///< seconds from `due` to its start; counted when it is concluded
    std::string key;     ///< ordering key: jobs with the same key run one at a time, in order
    std::list<Job>::iterator self;  ///< its place in Worker::Impl::jobs (forget erases it)
};

/// A job's run and what it came to, on its way from an executor to the dispatcher.
struct Finished {
    Job* job = nullptr;
    detail::Outcome outcome;
};

/// How long its handler ran (so far, while it runs).
inline double run_seconds(const Job& job) {
    auto end = job.finished_at > job.started_at ? job.finished_at : steady_clock::now();
    return std::chrono::duration<double>(end - job.started_at).count();
}

/// The fields every log line about a task carries; `duration` (seconds) once it ran.
inline Json task_fields(const Job& job, bool ran = false) {
    Json f = {{"id", job.task->id},
              {"task", job.task->name},
              {"queue", job.delivery.queue},
              {"attempt", job.task->retries + 1}};
    if (ran) f["duration"] = std::round(run_seconds(job) * 1e6) / 1e6;
    return f;
}

inline Json exception_result(const std::string& type, const std::string& module,
                             const std::string& message) {
    return Json{
        {"exc_type", type}, {"exc_message", Json::array({message})}, {"exc_module", module}};
}

}  // namespace worker_detail

using worker_detail::exception_result;
using worker_detail::Finished;
using worker_detail::Job;
using worker_detail::Registration;
using worker_detail::run_seconds;
using worker_detail::task_fields;

/// A StorageBackoff that says, in one line each, when failing begins and when it ends.
class StorageTrouble {
  public:
    bool ready(steady_clock::time_point now) const { return backoff_.ready(now); }
    /// True when `e` passes by itself (the caller carries on later); false when it is fatal.
    bool failed(const Error& e, const char* doing) {
        bool began = !backoff_.failing();
        if (!backoff_.failed(e, steady_clock::now())) return false;
        reason_ = fmt::format("{} failed: {}", doing, e.message);
        if (began)
            detail::log(LogLevel::warning, "broker.failing",
                        fmt::format("{} failed ({}); retrying with backoff", doing, e.message));
        return true;
    }
    void succeeded() {
        if (backoff_.failing())
            detail::log(LogLevel::info, "broker.recovered", "the broker works again");
        backoff_.succeeded();
    }
    /// Why it fails now; nullopt while it works.
    std::optional<std::string> failing() const {
        return backoff_.failing() ? std::optional(reason_) : std::nullopt;
    }

  private:
    detail::StorageBackoff backoff_;
    std::string reason_;
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
    // Per-key order (dispatcher thread only): the key of a running or sleeping job is busy;
    // later jobs with that key wait behind it. A keyed job that fails sleeps here for its
    // backoff and runs again, so it keeps its place in the order.
    detail::KeyOrder<Job*> key_order;
    std::multimap<steady_clock::time_point, Job*> sleeping;
    std::mt19937_64 rng;
    std::unique_ptr<detail::Monitor> monitor;  // amqp: Celery events and remote control

    // Monitoring: metrics, and what /healthz and /readyz say.
    detail::WorkerMetrics metrics;
    detail::WorkerMetrics::Series* last_series = nullptr;  // the dispatcher's last lookup
    std::string last_series_queue, last_series_task;
    /// The series of a job's queue and task; the previous job's when they are the same.
    detail::WorkerMetrics::Series* series_of(const std::string& queue, const std::string& task) {
        if (!last_series || queue != last_series_queue || task != last_series_task) {
            last_series = &metrics.series(queue, task);
            last_series_queue = queue;
            last_series_task = task;
        }
        return last_series;
    }
    std::atomic<bool> ready{false};  // consuming, not shutting down
    mutable std::mutex health_mu;
    std::optional<std::string> trouble;  // why the broker cannot be reached now
    // The dispatcher's pulse: when its loop last turned, and what it waits on. A loop stuck
    // in one call (a broker that stopped answering) is unhealthy though no error came yet.
    std::atomic<std::int64_t> pulse{0};  // steady_clock nanoseconds
    std::atomic<const char*> doing{"starting"};
    void beat(const char* what) {
        doing = what;
        pulse = steady_clock::now().time_since_epoch().count();
    }
    /// Why /healthz says 503 now; nullopt while healthy.
    std::optional<std::string> unhealthy() const;
    struct DepthCache {
        std::mutex mu;
        steady_clock::time_point at{};
        std::optional<std::vector<QueueStats>> depths;
    } depth_cache;
    std::unique_ptr<detail::HttpListener> http;
    std::atomic<int> http_port{0};

    Impl(std::shared_ptr<Broker> b, WorkerOptions o)
        : broker(std::move(b)), opts(std::move(o)), metrics(opts.queues) {
        if (opts.name.empty()) opts.name = detail::process_name();
        opts.node_name = detail::node_name(opts.node_name);
        if (opts.prefetch == 0) opts.prefetch = std::size_t(std::max(1, opts.concurrency)) * 4;
        if (opts.concurrency < 1) opts.concurrency = 1;
        rng.seed(opts.seed ? opts.seed : std::random_device{}());
    }

    const QueueConfig* raw_queue(const std::string& name) const;

    // ---- executor threads -------------------------------------------------------------
    void executor_loop();

    /// Celery's track_started: STARTED, with who runs it, before the handler does.
    void store_started(const Job& job);

    Outcome execute(Job& job);

    // ---- dispatcher -------------------------------------------------------------------
    /// The delivery's message: its envelope; or, when the engine passed or decoded the task
    /// (Delivery::task), the message as the engine kept it (Consumer::message), else the task
    /// encoded.
    Envelope message_of(const Delivery& d) const;
    /// The dispatcher's consumer while it runs (message_of asks it; that thread alone).
    Consumer* current_consumer = nullptr;
    /// `message` is the exception's message for results (default: the reason).
    Settlement dead_letter(const Delivery& d, const std::string& id, int retries,
                           std::string reason, const std::string& type, const std::string& module,
                           std::optional<std::string> message = std::nullopt);

    Settlement reschedule(const Delivery& d, int retries, TimePoint when);

    /// Acked, with REVOKED stored (`reason`: "revoked" or "terminated"), as Celery does.
    Settlement revoked_settlement(std::uint64_t tag, const std::string& id, const char* reason);

    // Decides what a freshly fetched delivery becomes: a job, or an immediate settlement.
    // Nothing in a message may stop the worker: whatever goes wrong with one becomes its dead
    // letter, with the reason.
    void admit(Delivery&& d, std::vector<Settlement>& settle_now, std::vector<Job*>& ready);

    /// Moves `d` into a job when it becomes one.
    void admit_unguarded(Delivery& d, std::vector<Settlement>& settle_now,
                         std::vector<Job*>& ready);

    void arm_deadline(Job& job);

    void enqueue_ready(const std::vector<Job*>& ready);

    /// What an outcome becomes; nullopt while a keyed job sleeps before it runs again. Any
    /// failure on the way (a workflow field of the wrong type, say) dead-letters the task.
    /// How a job's run went, for the engine's history.
    static Settlement::Attempt attempt_of(const Job& job, std::string error);
    std::optional<Settlement> conclude(Finished& f);

    detail::JobState state_of(const Job& job) const;

    /// Decides (detail::decide), acts (workflow steps, the settlement), then tells the
    /// monitor once.
    std::optional<Settlement> conclude_unguarded(Job& job, Outcome& o);

    /// Acked with SUCCESS; a workflow's next steps are published first (if that cannot be
    /// done now, the task goes back to its queue; if it can never be, it is dead-lettered).
    std::optional<Settlement> succeed(Job& job, Outcome& o);

    /// Dead-lettered with FAILURE; a workflow's error path (errbacks, the rest of a chain, a
    /// chord) is followed on a best-effort basis: the failure stands either way.
    Settlement fail(Job& job, const Outcome& o, const detail::Decision& decision);

    /// Back to the broker with RETRY stored, or (keyed) asleep here to run again in place.
    std::optional<Settlement> retry(Job& job, const Outcome& o, const detail::Decision& decision);

    static std::string exc_repr(const Outcome& o);
    /// One error line for a dead-lettered task (its fields and why), and its count.
    void report_dead_letter(Json fields, const std::string& reason);

    canvas::Context context_for(const Job& job) const;

    /// Runs a workflow step (`fn` fills the messages to publish and results to store), then
    /// publishes and stores them.
    template <class Fn>
    Result<void> follow(const Job& job, Fn&& fn) {
        std::vector<OutgoingMessage> out;
        std::vector<TaskResult> extra;
        CONVEYOR_TRY(fn(out, extra));
        if (!out.empty()) CONVEYOR_TRY(broker->publish(out));
        if (!extra.empty()) CONVEYOR_TRY(broker->store_results(extra, job.task->reply_to));
        return {};
    }

    /// The broker says these deliveries are no longer ours (a lease ran out and another worker
    /// took the task, or the connection they came on is gone): their runs are stopped (an
    /// `exec` process is killed), so a task never runs twice at once.
    void lose_leases(const std::vector<std::uint64_t>& tags);

    /// Erases a job from `jobs`, once: every path that forgets one has taken it out of
    /// `queued`, `sleeping` and the key order first, and none forgets it twice.
    void forget(Job* job);

    /// The remote-control channel (amqp), not connected yet, and whether it connected since;
    /// no channel where the engine has none or it could not be made (a line says so).
    struct OpenedControl {
        std::unique_ptr<ControlChannel> channel;
        bool connected = false;
    };
    OpenedControl open_control();
    /// Celery events and remote control on the channel (none: nothing).
    void start_monitor(OpenedControl control);

    /// The dispatcher's state from one round of its loop to the next.
    struct Round {
        std::vector<Settlement> pending;  // settlements waiting for a group commit
        // Ordering keys of pending settlements: the next task with the key starts once its
        // predecessor's settlement is sent, so a worker killed in between leaves at most one
        // unsettled task per key to run again (never two out of order).
        std::vector<std::string> settling_keys;
        // The last time nothing was pending: the oldest pending settlement is younger.
        steady_clock::time_point pending_since{};
        steady_clock::time_point last_deadline_scan{};
        steady_clock::time_point last_settle{};
        steady_clock::time_point last_renew{};
        steady_clock::time_point last_report{};
        milliseconds renew_every{};
        bool draining = false;   // shutting down: no more fetches
        bool stop_sent = false;  // the grace period is over: running handlers are told to stop
        steady_clock::time_point grace_deadline{};
        StorageTrouble storage;
    };

    /// Every 5 s (and as it stops): what this worker is and does, for the dashboard
    /// (Broker::report_worker).
    void report(Round& r, steady_clock::time_point now, bool offline = false);
    TimePoint started_wall = SystemClock::now();

    /// 1. Outcomes become settlements; keyed jobs whose retry delay passed run again.
    void collect_outcomes(Round& r);

    /// 2. Shutdown: stop fetching, hand back what has not started, wait for the rest; after
    /// the grace period, tell running handlers to stop.
    void drain(Round& r);

    /// Queues added or cancelled by remote control.
    void apply_consumer_changes(Consumer& consumer);

    /// 3. Time limits, and `revoke --terminate`.
    void stop_overdue(Round& r, steady_clock::time_point now);

    /// 4. Settles (one transaction for the whole batch: group commit) and keeps leases alive.
    /// While other jobs are still running their outcomes join the batch, for at most
    /// kSettleWindow or kSettleBatch settlements; an idle worker settles at once. While
    /// storage is failing (disk full, locked past its timeout) nothing is lost: settlements
    /// wait here, running tasks go on, and the worker looks again later. An error only when
    /// the broker fails for good.
    Result<void> settle_and_renew(Consumer& consumer, Round& r, steady_clock::time_point now);
    /// After a settle: the next job of each settled key may run.
    void release_keys(Round& r);

    /// 5. Fetches more when a quarter of the window is free (fewer, larger batches), or when
    /// handler threads would otherwise idle. True when deliveries came.
    Result<bool> fetch_more(Consumer& consumer, Round& r, steady_clock::time_point now);

    /// After the loop: running handlers are stopped and joined, what is still held is handed
    /// back (best effort), the monitor says the worker is offline.
    void finish(Consumer& consumer, std::vector<std::jthread>& threads);

    // ---- monitoring (status.cpp) -----------------------------------------------------------
    /// The /metrics exposition now.
    std::string metrics_text();
    /// Serves /metrics, /healthz and /readyz on opts.http; a bind failure is the run's error.
    Result<void> start_http();
    /// What the dispatcher learnt of its broker this round (nullopt: reachable).
    void set_trouble(std::optional<std::string> why);

    Result<void> run();
};

}  // namespace conveyor
