// `conveyor worker` and `conveyor scheduler`: the long-running commands.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include "cli/commands.hpp"
#include "conveyor/scheduler.hpp"
#include "conveyor/worker.hpp"
#include "core/node.hpp"
#include "core/url.hpp"

namespace conveyor::cli {

namespace {

/// `conveyor worker` flags; unset ones take the config's [worker] values.
struct WorkerFlags {
    std::string queues;
    int concurrency = 0, prefetch = 0;
    double lease = 0, grace = -1;
    std::string node;
    bool events = false;
    bool log_success = false;
    int delivery_limit = -1;
    std::string http;
};

int run_worker(const Global& g, const WorkerFlags& f) {
    const std::string& queues_flag = f.queues;
    int concurrency = f.concurrency, prefetch = f.prefetch;
    double lease = f.lease, grace = f.grace;
    Config cfg = load(g);
    std::size_t handlers = 0;
    for (auto& t : cfg.tasks) handlers += (!t.exec.empty() || !t.http.empty()) ? 1 : 0;
    if (handlers == 0)
        die("no task has a handler; add [[task]] tables with 'exec' or 'http' to conveyor.toml", 2);
    std::string http = !f.http.empty() ? f.http : cfg.worker.http;
    if (!http.empty())
        if (auto a = detail::parse_listen_address(http); !a) die(a.error().message, 2);
    stop_on_signals(nullptr, nullptr);
    auto broker = open_broker(broker_url(g, cfg), cfg, /*wait=*/true, http);
    WorkerOptions o;
    o.queues = !queues_flag.empty() ? split_list(queues_flag) : cfg.worker.queues;
    if (o.queues.empty()) {
        for (auto& q : cfg.queues) o.queues.push_back(q.name);
        if (o.queues.empty()) o.queues.push_back(cfg.default_queue);
    }
    o.concurrency = concurrency > 0 ? concurrency : cfg.worker.concurrency;
    o.prefetch = std::size_t(prefetch > 0 ? prefetch : cfg.worker.prefetch);
    o.lease = std::chrono::milliseconds(
        static_cast<long long>((lease > 0 ? lease : cfg.worker.lease) * 1000));
    o.shutdown_grace = std::chrono::milliseconds(
        static_cast<long long>((grace >= 0 ? grace : cfg.worker.shutdown_grace) * 1000));
    o.default_retry = cfg.default_retry;
    o.node_name = detail::node_name(f.node);
    o.task_events = f.events;
    o.log_success = f.log_success;
    o.delivery_limit = f.delivery_limit >= 0 ? f.delivery_limit : cfg.worker.delivery_limit;
    o.track_started = cfg.worker.track_started;
    o.http = http;
    Worker worker(broker, o);
    worker.configure(cfg);
    stop_on_signals(&worker, nullptr);
    detail::log(LogLevel::info, "worker.started",
                fmt::format("conveyor worker: broker {} queues {} concurrency {}", broker->url(),
                            fmt::join(o.queues, ","), o.concurrency),
                Json{{"node", o.node_name}});
    auto r = worker.run();
    stop_on_signals(nullptr, nullptr);
    auto st = worker.stats();
    detail::log(LogLevel::info, "worker.stopped",
                fmt::format("conveyor worker: stopped (succeeded {}, retried {}, dead-lettered {}, "
                            "handed back {})",
                            st.succeeded, st.retried, st.dead_lettered, st.released),
                Json{{"succeeded", st.succeeded},
                     {"retried", st.retried},
                     {"dead_lettered", st.dead_lettered},
                     {"handed_back", st.released}});
    if (!r) die(fmt::format("worker stopped: {}", r.error().message));
    return 0;
}

/// `conveyor scheduler` flags.
struct SchedulerFlags {
    double lease = 3.0;
    std::string http;
};

int run_scheduler(const Global& g, const SchedulerFlags& f) {
    double lease = f.lease;
    Config cfg = load(g);
    if (!f.http.empty())
        if (auto a = detail::parse_listen_address(f.http); !a) die(a.error().message, 2);
    stop_on_signals(nullptr, nullptr);
    auto broker = open_broker(broker_url(g, cfg), cfg, /*wait=*/true, f.http);
    SchedulerOptions o;
    o.schedules = cfg.schedules;
    o.lease = std::chrono::milliseconds(static_cast<long long>(lease * 1000));
    o.tick = std::min(std::chrono::milliseconds(200), o.lease / 4);
    o.queue_for = [cfg](const std::string& task) { return cfg.queue_for(task); };
    o.http = f.http;
    Scheduler scheduler(broker, o);
    stop_on_signals(nullptr, &scheduler);
    detail::log(LogLevel::info, "scheduler.started",
                fmt::format("conveyor scheduler: broker {} ({} configured schedule(s), lease {} s)",
                            broker->url(), cfg.schedules.size(), lease));
    auto r = scheduler.run();
    stop_on_signals(nullptr, nullptr);
    if (!r) die(r.error().message, r.error().code == Errc::invalid_argument ? 2 : 1);
    return 0;
}

}  // namespace

Command add_worker(CLI::App& app, const Global& g) {
    auto* worker = app.add_subcommand("worker", "Run a worker");
    auto wf = std::make_shared<WorkerFlags>();
    worker->add_option("--queues,-Q", wf->queues, "Comma-separated queues to consume");
    worker->add_option("--concurrency,-c", wf->concurrency, "Handler threads")
        ->check(CLI::Range(1, 1024));
    worker->add_option("--prefetch", wf->prefetch, "Deliveries held at once")
        ->check(CLI::Range(1, 100000));
    worker->add_option("--lease", wf->lease, "Seconds a claim lasts without renewal (sqlite)")
        ->check(seconds_within(0.2, 86400.0));
    worker->add_option("--grace", wf->grace, "Seconds running tasks get on SIGTERM")
        ->check(seconds_within(0.0, 86400.0));
    worker->add_option("--name,-n", wf->node,
                       "Node name for monitors and remote control (default conveyor-PID@HOST)");
    worker->add_flag("--events,-E", wf->events, "Send task events (celery events, Flower)");
    worker->add_flag("--log-success", wf->log_success,
                     "Log each success at info (default: debug; failures always)");
    worker
        ->add_option("--delivery-limit", wf->delivery_limit,
                     "Dead-letter a message delivered this many times without being settled "
                     "(0: no limit; default 5)")
        ->check(CLI::Range(0, 1000));
    worker->add_option("--http", wf->http,
                       "Serve /metrics, /healthz and /readyz on HOST:PORT (default: [worker] http; "
                       "a bare port binds 127.0.0.1)");

    return {worker, [&g, wf] { return run_worker(g, *wf); }};
}

Command add_scheduler(CLI::App& app, const Global& g) {
    auto* scheduler = app.add_subcommand(
        "scheduler", "Fire the schedules on time; run several for availability (one leads)");
    auto sf = std::make_shared<SchedulerFlags>();
    scheduler->add_option("--lease", sf->lease, "Seconds a leader holds leadership unrenewed")
        ->check(seconds_within(0.5, 3600.0));
    scheduler->add_option("--http", sf->http,
                          "Serve /metrics, /healthz and /readyz (with whether it leads) on "
                          "HOST:PORT");

    return {scheduler, [&g, sf] { return run_scheduler(g, *sf); }};
}

}  // namespace conveyor::cli
