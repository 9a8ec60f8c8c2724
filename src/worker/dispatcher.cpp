// The dispatcher: the worker's loop that fetches, admits, settles in groups, renews leases,
// keeps per-key order, and drains on shutdown.
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

void Worker::Impl::release_keys(Round& r) {
    std::vector<Job*> ready;
    for (auto& key : r.settling_keys)
        if (auto next = key_order.done(key)) {
            arm_deadline(**next);
            ready.push_back(*next);
        }
    r.settling_keys.clear();
    enqueue_ready(ready);
}

void Worker::Impl::enqueue_ready(const std::vector<Job*>& ready) {
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

void Worker::Impl::lose_leases(const std::vector<std::uint64_t>& tags) {
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
        if (monitor) monitor->released(j->task->id);
        forget(j);
    }
    // The next task of a dropped one's key moves up.
    for (Job* j : promoted) arm_deadline(*j);
    enqueue_ready(promoted);
}

void Worker::Impl::forget(Job* job) { jobs.erase(job->self); }

Worker::Impl::OpenedControl Worker::Impl::open_control() {
    auto ch = broker->control(opts.node_name);
    if (!ch) {
        detail::log(LogLevel::warning, "worker.no_monitoring",
                    fmt::format("no monitoring/remote control: {}", ch.error().message));
        return {};
    }
    return OpenedControl{std::move(*ch)};
}

void Worker::Impl::start_monitor(OpenedControl control) {
    if (!control.channel) return;
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
    // Celery's `control rate_limit`: the task's rate across the fleet (its other limits kept).
    mo.on_rate_limit = [this](const std::string& task, const std::string& text) -> Json {
        auto rate = parse_rate(text);
        if (!rate)
            return Json{
                {"error", fmt::format("Invalid rate limit string: {}", rate.error().message)}};
        if (!handlers.contains(task)) return Json{{"error", "unknown task"}};
        TaskLimit l{.task = task};
        if (auto all = broker->limits(); all)
            for (auto& x : *all)
                if (x.limit.task == task) l = x.limit;
        l.rate = *rate;
        if (auto ok = broker->set_limit(l); !ok) return Json{{"error", ok.error().message}};
        detail::log(LogLevel::info, "worker.rate_limit",
                    fmt::format("task '{}' rate limit across the fleet: {}", task,
                                *rate > 0 ? format_rate(*rate) : "none"),
                    {{"task", task}, {"rate", *rate}});
        return Json{{"ok", *rate > 0 ? "new rate limit set successfully"
                                     : "rate limit disabled successfully"}};
    };
    mo.conf = Json{{"broker_url", broker->url()},
                   {"worker_concurrency", opts.concurrency},
                   {"worker_prefetch_count", opts.prefetch},
                   {"task_acks_late", true},
                   {"task_queues", opts.queues},
                   {"worker_delivery_limit", opts.delivery_limit},
                   {"worker_shutdown_grace", opts.shutdown_grace.count() / 1000.0}};
    monitor = std::make_unique<detail::Monitor>(std::move(control.channel), std::move(mo));
    monitor->start(control.connected);
}

void Worker::Impl::collect_outcomes(Round& r) {
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
        if (!o.job->key.empty()) r.settling_keys.push_back(o.job->key);
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

void Worker::Impl::drain(Round& r) {
    if (!r.draining) {
        r.draining = true;
        ready = false;
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

void Worker::Impl::apply_consumer_changes(Consumer& consumer) {
    std::vector<std::pair<std::string, bool>> changes;
    {
        std::lock_guard lk(mu);
        changes.swap(consumer_changes);
    }
    for (auto& [queue, consume] : changes)
        if (auto ok = consumer.set_consuming(queue, consume); !ok)
            detail::log(LogLevel::warning, "worker.consumer_change_failed",
                        fmt::format("{} queue '{}': {}",
                                    consume ? "cannot consume from" : "cannot stop consuming from",
                                    queue, ok.error().message));
}

void Worker::Impl::stop_overdue(Round& r, steady_clock::time_point now) {
    if (monitor)
        for (auto& id : monitor->take_terminations())
            for (auto& j : jobs)
                if (j.task->id == id && j.started) {
                    detail::log(LogLevel::info, "task.terminating",
                                fmt::format("task {} ({}): revoke --terminate; stopping it",
                                            j.task->id, j.task->name),
                                task_fields(j));
                    j.revoked = true;
                    j.stop.request_stop();
                }
    if (now - r.last_deadline_scan < milliseconds(5)) return;  // not per outcome: O(jobs)
    r.last_deadline_scan = now;
    for (auto& j : jobs)
        if (j.deadline && now >= *j.deadline && !j.stop.stop_requested()) j.stop.request_stop();
}

Result<void> Worker::Impl::settle_and_renew(Consumer& consumer, Round& r,
                                            steady_clock::time_point now) {
    if (r.pending.empty()) r.pending_since = now;
    bool more_coming = !jobs.empty() && !r.draining;
    // Unsettled deliveries count against the broker's prefetch window: a quarter at most.
    std::size_t batch_max = std::min(kSettleBatch, std::max<std::size_t>(1, opts.prefetch / 4));
    bool storage_up = r.storage.ready(now);
    // A task waiting for its key's predecessor to be settled is not kept waiting for a group.
    if (storage_up && !r.pending.empty() &&
        (!more_coming || r.pending.size() >= batch_max || now - r.pending_since >= kSettleWindow ||
         !r.settling_keys.empty())) {
        beat("settling tasks");
        if (auto ok = consumer.settle(r.pending); !ok) {
            if (!r.storage.failed(ok.error(), "settling tasks")) return ok;
        } else {
            r.storage.succeeded();
            r.pending.clear();
            r.pending_since = now;
            r.last_settle = now;
            release_keys(r);
        }
    } else if (storage_up && r.pending.empty() && now - r.last_settle >= milliseconds(50)) {
        // Nothing to settle: lets the consumer send what it holds back (RabbitMQ acks
        // waiting behind a long task) even while no fetch or outcome comes.
        r.last_settle = now;
        beat("sending acknowledgements");
        CONVEYOR_TRY(consumer.settle(std::span<Settlement>()));
    }
    if (r.storage.ready(now) && now - r.last_renew >= r.renew_every) {
        r.last_renew = now;
        beat("renewing leases");
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

Result<bool> Worker::Impl::fetch_more(Consumer& consumer, Round& r, steady_clock::time_point now) {
    std::size_t held = jobs.size();
    bool idle_threads = held < std::size_t(opts.concurrency);
    if (r.draining || held >= opts.prefetch ||
        (!idle_threads && opts.prefetch - held < std::max<std::size_t>(1, opts.prefetch / 4)))
        return false;
    milliseconds wait = held == 0      ? milliseconds(20)
                        : idle_threads ? milliseconds(2)
                                       : milliseconds(0);
    if (!r.storage.ready(now)) return false;
    beat("fetching tasks");
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

void Worker::Impl::report(Round& r, steady_clock::time_point now, bool offline) {
    if (!offline && (now - r.last_report < std::chrono::seconds(5) || !r.storage.ready(now)))
        return;
    r.last_report = now;
    Json info = {{"node", opts.node_name},
                 {"consumer", opts.name},
                 {"pid", ::getpid()},
                 {"queues", opts.queues},
                 {"concurrency", opts.concurrency},
                 {"busy", running.load()},
                 {"held", jobs.size()},
                 {"succeeded", succeeded.load()},
                 {"retried", retried.load()},
                 {"dead_lettered", dead.load()},
                 {"started", detail::format_iso8601(started_wall)},
                 {"offline", offline}};
    if (http_port.load() > 0) info["http_port"] = http_port.load();
    beat("reporting");
    // A report that fails is not worth stopping for: the next one comes in 5 s.
    if (auto ok = broker->report_worker(opts.node_name, info); !ok)
        detail::log(LogLevel::debug, "worker.report",
                    fmt::format("could not report to the dashboard: {}", ok.error().message));
}

void Worker::Impl::finish(Consumer& consumer, std::vector<std::jthread>& threads) {
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
        for (auto& j : jobs) back.push_back(Settlement{Settlement::Kind::release, j.delivery.tag});
        (void)consumer.settle(back);
        jobs.clear();
    }
    outcomes.clear();
    sleeping.clear();
    key_order.clear();
    if (monitor) {
        monitor->stop();  // worker-offline
        monitor.reset();
    }
}

Result<void> Worker::Impl::run() {
    // Health checks and metrics answer from the start (a wait for storage below says why), and
    // the listener goes when run() ends, however it ends.
    std::vector<std::string> names;
    for (auto& [name, _] : handlers) names.push_back(name);
    metrics.set_tasks(names);
    beat("starting");
    CONVEYOR_TRY(start_http());
    struct StopHttp {
        Impl* impl;
        ~StopHttp() {
            if (!impl->http) return;
            impl->http->stop();
            impl->http.reset();
            impl->http_port = 0;
        }
    } stop_http{this};
    // The limits of the tasks handled here hold for the whole fleet: the broker keeps them.
    for (auto& [name, reg] : handlers) {
        auto& o = reg.options;
        if (!o.rate_limit && !o.max_concurrency) continue;
        TaskLimit l{.task = name,
                    .rate = o.rate_limit.value_or(0),
                    .max_concurrency = o.max_concurrency.value_or(0),
                    .key = o.limit_key};
        // Storage trouble (another process's lock past the busy timeout, a full disk) is waited
        // out here as while running, a line when it begins and one when it ends; a worker
        // stopped meanwhile has claimed nothing and ends as a stopped worker does.
        StorageTrouble trouble;
        std::string setting = fmt::format("setting task '{}' limits", name);
        for (;;) {
            beat("setting task limits");  // (a wait for storage is no stall)
            auto ok = broker->set_limit(l);
            if (ok) {
                trouble.succeeded();
                break;
            }
            if (!trouble.failed(ok.error(), setting.c_str())) return ok;
            set_trouble(trouble.failing());
            while (!stopping.load() && !trouble.ready(steady_clock::now())) {
                std::this_thread::sleep_for(milliseconds(20));
                beat("setting task limits");
            }
            if (stopping.load()) {
                detail::log(LogLevel::info, "worker.wait_stopped",
                            fmt::format("stopped while {}", setting));
                return {};
            }
        }
        set_trouble(std::nullopt);
        if (l.limited())
            detail::log(
                LogLevel::info, "worker.task_limited",
                fmt::format("task '{}' limited across the fleet: {}", name, describe_limit(l)),
                {{"task", name},
                 {"rate", l.rate},
                 {"max_concurrency", l.max_concurrency},
                 {"key", l.key}});
    }
    beat("starting");
    ConsumerOptions co;
    co.queues = opts.queues;
    co.prefetch = opts.prefetch;
    co.read_ahead = true;
    co.decode = true;
    co.max_body = opts.max_body;
    for (auto& q : opts.queue_formats)
        if (q.format == QueueFormat::raw) co.raw_queues.push_back(q.name);
    co.lease = opts.lease;
    co.name = opts.name;
    // The remote-control connection (amqp: a connection of its own) opens while the consumer
    // does, rather than after it: the worker is still online, its pidbox declared, before it
    // takes a task. A failed connect is tried again by the monitor's thread, not at once
    // (start-up would wait out the broker's timeout twice).
    OpenedControl control = opts.remote_control ? open_control() : OpenedControl{};
    std::jthread connecting;
    if (control.channel)
        connecting = std::jthread([&] {
            try {
                control.connected = control.channel->connect().has_value();
            } catch (const std::exception& e) {  // (out of memory): the monitor tries again
                detail::log(LogLevel::warning, "worker.no_monitoring",
                            fmt::format("no monitoring/remote control yet: {}", e.what()));
            }
        });
    auto consumer_r = broker->consume(co);
    if (connecting.joinable()) connecting.join();
    CONVEYOR_TRY(consumer_r);
    auto& consumer = **consumer_r;
    current_consumer = &consumer;
    struct ForgetConsumer {
        Impl* impl;
        ~ForgetConsumer() { impl->current_consumer = nullptr; }
    } forget_consumer{this};
    {
        std::lock_guard lk(mu);
        executors_exit = false;
    }
    start_monitor(std::move(control));
    std::vector<std::jthread> threads;
    for (int i = 0; i < opts.concurrency; ++i) threads.emplace_back([this] { executor_loop(); });

    ready = true;
    Round r;
    r.last_renew = steady_clock::now();
    r.renew_every = std::max(milliseconds(50), opts.lease / 3);
    Result<void> failure;
    for (;;) {
        beat("waiting for outcomes");
        collect_outcomes(r);
        if (stopping.load()) {
            // What the consumer claimed ahead goes back at once, for other workers to take;
            // a failure leaves it to the lease or to the consumer's end.
            if (!r.draining) (void)consumer.stop_reading_ahead();
            drain(r);
        }
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
        auto why = r.storage.failing();
        set_trouble(why ? std::move(why) : consumer.trouble());
        report(r, now);
        if (*fetched) continue;
        std::unique_lock lk(mu);
        outcome_cv.wait_for(
            lk, r.pending.empty() || !r.storage.ready(now) ? milliseconds(20) : kSettleWindow,
            [&] { return !outcomes.empty(); });
    }
    ready = false;
    finish(consumer, threads);
    report(r, steady_clock::now(), true);
    return failure;
}

}  // namespace conveyor
