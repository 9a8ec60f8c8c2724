// The `conveyor` command: argument parsing and printing only.

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <thread>

#include "cli/demo.hpp"
#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/config.hpp"
#include "conveyor/scheduler.hpp"
#include "conveyor/version.hpp"
#include "conveyor/worker.hpp"
#include "core/json_bounds.hpp"
#include "core/time.hpp"
#include "core/url.hpp"

namespace {

using namespace conveyor;

struct Global {
    std::string broker;
    std::string config_path;
    bool json = false;
};

[[noreturn]] void die(const std::string& sentence, int code = 1) {
    std::string s = sentence;
    if (!s.empty() && s.back() != '.') s += '.';
    fmt::print(stderr, "conveyor: {}\n", s);
    std::fflush(stderr);
    std::exit(code);
}

Config load(const Global& g) {
    std::string path = g.config_path;
    if (path.empty() && std::filesystem::exists("conveyor.toml")) path = "conveyor.toml";
    if (path.empty()) return Config{};
    auto cfg = load_config(path);
    if (!cfg) die(cfg.error().message, 2);
    return *cfg;
}

std::string broker_url(const Global& g, const Config& cfg) {
    if (!g.broker.empty()) return g.broker;
    if (const char* env = std::getenv("CONVEYOR_BROKER"); env && *env) return env;
    if (!cfg.broker.empty()) return cfg.broker;
    return "sqlite://conveyor.db";
}

volatile sig_atomic_t g_signals = 0;

/// Opens the broker. A long-running command (`wait`) started while the broker cannot be
/// reached for now (RabbitMQ down, the sqlite file locked or its disk full) waits for it with
/// backoff, one line per attempt, until it opens or a signal comes; others fail at once.
std::shared_ptr<Broker> open_broker(const std::string& url, const Config& cfg, bool wait = false) {
    auto backoff = std::chrono::milliseconds(500);
    for (;;) {
        auto b = Broker::open(url);
        if (b) {
            if (auto ok = (*b)->set_topology(cfg.topology()); !ok) die(ok.error().message, 2);
            return *b;
        }
        std::string why =
            fmt::format("cannot open broker {}: {}", detail::redact_url(url), b.error().message);
        bool passes = b.error().code == Errc::unavailable || b.error().code == Errc::timeout;
        if (!wait || !passes || g_signals)
            die(why, b.error().code == Errc::invalid_argument ? 2 : 1);
        fmt::print(stderr, "conveyor: {}; retrying in {:.1f} s\n", why, backoff.count() / 1000.0);
        for (auto until = std::chrono::steady_clock::now() + backoff;
             std::chrono::steady_clock::now() < until && !g_signals;)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (g_signals) die(why);
        backoff = std::min(backoff * 2, std::chrono::milliseconds(10000));
    }
}

Json parse_json_flag(const std::string& text, const char* flag, bool want_array) {
    if (detail::json_text_depth(text) > detail::kMaxJsonDepth)
        die(fmt::format("{} nests deeper than {} levels", flag, detail::kMaxJsonDepth), 2);
    Json j = Json::parse(text, nullptr, false);
    if (j.is_discarded())
        die(fmt::format("{} is not valid JSON: {}", flag,
                        text.size() > 200 ? text.substr(0, 200) + "..." : text),
            2);
    if (want_array && !j.is_array())
        die(fmt::format("{} must be a JSON array, e.g. '[1, 2]'", flag), 2);
    if (!want_array && !j.is_object())
        die(fmt::format("{} must be a JSON object, e.g. '{{\"x\": 1}}'", flag), 2);
    return j;
}

/// A number of seconds within [lo, hi]; NaN and infinities are refused (CLI11's Range lets
/// NaN through, and a NaN duration is undefined).
CLI::Validator seconds_within(double lo, double hi) {
    return CLI::Validator(
        [lo, hi](std::string& in) -> std::string {
            char* end = nullptr;
            double v = std::strtod(in.c_str(), &end);
            if (in.empty() || end != in.c_str() + in.size() || !(v >= lo && v <= hi))
                return fmt::format("must be a number of seconds from {} to {}", lo, hi);
            return {};
        },
        fmt::format("SECONDS in [{} - {}]", lo, hi));
}

std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= s.size()) {
        auto comma = s.find(',', start);
        auto item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!item.empty()) out.push_back(item);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

Worker* g_worker = nullptr;
Scheduler* g_scheduler = nullptr;

void on_signal(int) {
    g_signals = g_signals + 1;
    if (g_signals >= 2) _exit(130);  // second signal: cold shutdown
    if (g_worker) g_worker->stop();
    if (g_scheduler) g_scheduler->stop();
}

void install_signal_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
}

int cmd_scheduler(const Global& g, double lease) {
    Config cfg = load(g);
    install_signal_handlers();
    auto broker = open_broker(broker_url(g, cfg), cfg, /*wait=*/true);
    SchedulerOptions o;
    o.schedules = cfg.schedules;
    o.lease = std::chrono::milliseconds(static_cast<long long>(lease * 1000));
    o.tick = std::min(std::chrono::milliseconds(200), o.lease / 4);
    o.queue_for = [cfg](const std::string& task) { return cfg.queue_for(task); };
    Scheduler scheduler(broker, o);
    g_scheduler = &scheduler;
    fmt::print(stderr, "conveyor scheduler: broker {} ({} configured schedule(s), lease {} s)\n",
               broker->url(), cfg.schedules.size(), lease);
    auto r = scheduler.run();
    g_scheduler = nullptr;
    if (!r) die(r.error().message, r.error().code == Errc::invalid_argument ? 2 : 1);
    return 0;
}

std::string when_of(const ScheduleSpec& s) {
    if (s.every) return fmt::format("every {}s", *s.every);
    return s.timezone == "UTC" ? s.cron : fmt::format("{} ({})", s.cron, s.timezone);
}

/// `conveyor worker` flags; unset ones take the config's [worker] values.
struct WorkerFlags {
    std::string queues;
    int concurrency = 0, prefetch = 0;
    double lease = 0, grace = -1;
    std::string node;
    bool events = false;
    int delivery_limit = -1;
};

int cmd_worker(const Global& g, const WorkerFlags& f) {
    const std::string& queues_flag = f.queues;
    int concurrency = f.concurrency, prefetch = f.prefetch;
    double lease = f.lease, grace = f.grace;
    Config cfg = load(g);
    std::size_t handlers = 0;
    for (auto& t : cfg.tasks) handlers += (!t.exec.empty() || !t.http.empty()) ? 1 : 0;
    if (handlers == 0)
        die("no task has a handler; add [[task]] tables with 'exec' or 'http' to conveyor.toml", 2);
    install_signal_handlers();
    auto broker = open_broker(broker_url(g, cfg), cfg, /*wait=*/true);
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
    o.node_name = f.node;
    o.task_events = f.events;
    o.delivery_limit = f.delivery_limit >= 0 ? f.delivery_limit : cfg.worker.delivery_limit;
    o.track_started = cfg.worker.track_started;
    Worker worker(broker, o);
    worker.configure(cfg);
    g_worker = &worker;
    fmt::print(stderr, "conveyor worker: broker {} queues {} concurrency {}\n", broker->url(),
               fmt::join(o.queues, ","), o.concurrency);
    auto r = worker.run();
    g_worker = nullptr;
    auto st = worker.stats();
    fmt::print(
        stderr,
        "conveyor worker: stopped (succeeded {}, retried {}, dead-lettered {}, handed back {})\n",
        st.succeeded, st.retried, st.dead_lettered, st.released);
    if (!r) die(fmt::format("worker stopped: {}", r.error().message));
    return 0;
}

void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
    std::vector<std::size_t> w(header.size());
    for (std::size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
    for (auto& r : rows)
        for (std::size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
    auto line = [&](const std::vector<std::string>& r) {
        std::string s;
        for (std::size_t i = 0; i < r.size(); ++i) {
            if (i == 0)
                s += fmt::format("{:<{}}", r[i], w[i]);
            else
                s += fmt::format("  {:>{}}", r[i], w[i]);
        }
        fmt::print("{}\n", s);
    };
    line(header);
    for (auto& r : rows) line(r);
}

/// Prints a task's result as JSON (after waiting up to `wait` seconds when given); exit 3 when
/// it is not ready in time.
int print_result(Client& client, const std::string& id, std::optional<double> wait) {
    if (wait)
        if (auto now = client.result(id); !now) die(now.error().message);
    Result<TaskResult> r =
        wait ? client.wait(id, std::chrono::milliseconds(static_cast<long long>(*wait * 1000)))
             : client.result(id);
    if (!r && r.error().code == Errc::timeout) {
        auto now = client.result(id);
        if (now) fmt::print("{}\n", detail::dump_lossy(to_json(*now)));
        std::fflush(stdout);
        die(fmt::format("task {} did not finish within {} seconds", id, *wait), 3);
    }
    if (!r) die(r.error().message);
    fmt::print("{}\n", detail::dump_lossy(to_json(*r)));
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Conveyor: distributed task scheduling and dispatch"};
    app.set_version_flag("--version", std::string("conveyor ") + conveyor::version());
    app.require_subcommand(1);
    Global g;
    app.add_option("--broker", g.broker,
                   "Broker URL (sqlite://PATH, amqp://USER:PASS@HOST:PORT/VHOST, memory://); "
                   "env CONVEYOR_BROKER");
    app.add_option("--config", g.config_path, "Config file (default ./conveyor.toml when present)");
    app.add_flag("--json", g.json, "JSON output instead of tables");

    auto* worker = app.add_subcommand("worker", "Run a worker");
    WorkerFlags wf;
    worker->add_option("--queues,-Q", wf.queues, "Comma-separated queues to consume");
    worker->add_option("--concurrency,-c", wf.concurrency, "Handler threads")
        ->check(CLI::Range(1, 1024));
    worker->add_option("--prefetch", wf.prefetch, "Deliveries held at once")
        ->check(CLI::Range(1, 100000));
    worker->add_option("--lease", wf.lease, "Seconds a claim lasts without renewal (sqlite)")
        ->check(seconds_within(0.2, 86400.0));
    worker->add_option("--grace", wf.grace, "Seconds running tasks get on SIGTERM")
        ->check(seconds_within(0.0, 86400.0));
    worker->add_option("--name,-n", wf.node,
                       "Node name for monitors and remote control (default conveyor-PID@HOST)");
    worker->add_flag("--events,-E", wf.events, "Send task events (celery events, Flower)");
    worker
        ->add_option("--delivery-limit", wf.delivery_limit,
                     "Dead-letter a message delivered this many times without being settled "
                     "(0: no limit; default 5)")
        ->check(CLI::Range(0, 1000));

    auto* enqueue = app.add_subcommand("enqueue", "Enqueue a task and print its id");
    std::string e_task, e_args = "[]", e_kwargs = "{}", e_queue, e_eta, e_id;
    std::optional<double> e_countdown, e_expires;
    std::optional<int> e_priority, e_max_retries;
    enqueue->add_option("TASK", e_task, "Task name")->required();
    auto* e_args_opt = enqueue->add_option("--args", e_args, "Positional arguments, a JSON array");
    auto* e_kwargs_opt =
        enqueue->add_option("--kwargs", e_kwargs, "Keyword arguments, a JSON object");
    enqueue->add_option("--queue", e_queue, "Queue (default: the task's, else celery)");
    auto* cd = enqueue->add_option("--countdown", e_countdown, "Run after this many seconds");
    auto* eta = enqueue->add_option("--eta", e_eta, "Run at this ISO-8601 time");
    cd->excludes(eta);
    enqueue->add_option("--priority", e_priority, "0..255, higher first")
        ->check(CLI::Range(0, 255));
    enqueue->add_option("--id", e_id, "Task id (default: a new uuid4)");
    enqueue->add_option("--max-retries", e_max_retries, "Retry budget for this task")
        ->check(CLI::Range(0, 1000000));
    enqueue->add_option("--expires", e_expires, "Discard if not started within this many seconds");
    std::string e_exchange, e_routing_key, e_key;
    auto* exo = enqueue->add_option("--exchange", e_exchange,
                                    "Publish to this exchange (amqp; fan-out) instead of a queue");
    enqueue->add_option("--routing-key", e_routing_key, "Routing key with --exchange")->needs(exo);
    bool e_raw = false;
    enqueue->add_flag("--raw", e_raw,
                      "Publish the one argument as the plain body (as php-amqplib would)");
    std::string e_body_file, e_content_type;
    enqueue
        ->add_option("--body-file", e_body_file,
                     "Publish this file's bytes (- for stdin) as the plain body, exactly")
        ->excludes(e_args_opt)
        ->excludes(e_kwargs_opt);
    enqueue->add_option("--content-type", e_content_type,
                        "Content type of a plain body (default: text/plain for UTF-8 text, "
                        "application/octet-stream for other bytes, application/json otherwise)");
    enqueue->add_option("--key", e_key,
                        "Ordering key: tasks with one key run in order (ordered queues)");
    std::optional<double> e_wait;
    enqueue
        ->add_option("--wait", e_wait,
                     "Then wait up to this many seconds for the result and print it as JSON")
        ->check(seconds_within(0.0, 1e7));

    auto* topology = app.add_subcommand("topology", "Exchanges, queues and bindings");
    topology->require_subcommand(1);
    auto* tapply = topology->add_subcommand(
        "apply", "Declare the configured exchanges, queues and bindings (idempotent)");

    auto* result = app.add_subcommand("result", "Print a task's state and result as JSON");
    std::string r_id;
    std::optional<double> r_wait;
    result->add_option("ID", r_id, "Task id")->required();
    result->add_option("--wait", r_wait, "Wait up to this many seconds for the outcome")
        ->check(seconds_within(0.0, 1e7));

    auto* queues =
        app.add_subcommand("queues", "Ready, delayed, in-flight and dead counts per queue");

    auto* dlq = app.add_subcommand("dlq", "Dead-letter queue: list, replay, purge");
    dlq->require_subcommand(1);
    std::string d_queue;
    std::size_t d_limit = 50;
    std::vector<std::string> d_ids;
    auto* dlist = dlq->add_subcommand("list", "List dead messages with their reasons");
    dlist->add_option("--queue", d_queue, "Queue")->required();
    dlist->add_option("--limit", d_limit, "At most this many");
    auto* dreplay = dlq->add_subcommand("replay", "Move dead messages back to their queue");
    dreplay->add_option("--queue", d_queue, "Queue")->required();
    dreplay->add_option("--id", d_ids, "Only these ids (repeatable)");
    auto* dpurge = dlq->add_subcommand("purge", "Delete dead messages");
    dpurge->add_option("--queue", d_queue, "Queue")->required();

    auto* scheduler = app.add_subcommand(
        "scheduler", "Fire the schedules on time; run several for availability (one leads)");
    double s_lease = 3.0;
    scheduler->add_option("--lease", s_lease, "Seconds a leader holds leadership unrenewed")
        ->check(seconds_within(0.5, 3600.0));

    auto* schedule = app.add_subcommand("schedule", "Schedules: list, add, remove, pause, resume");
    schedule->require_subcommand(1);
    auto* slist = schedule->add_subcommand("list", "Schedules with their last and next fires");
    auto* sadd = schedule->add_subcommand("add", "Add (or replace) a schedule");
    ScheduleSpec sa_spec;
    std::string sa_args = "[]", sa_kwargs = "{}";
    std::optional<double> sa_every;
    sadd->add_option("NAME", sa_spec.name, "Schedule name")->required();
    sadd->add_option("TASK", sa_spec.task, "Task to fire")->required();
    auto* sa_cron = sadd->add_option("--cron", sa_spec.cron, "Cron expression (5 or 6 fields)");
    auto* sa_ev = sadd->add_option("--every", sa_every, "Or: every this many seconds");
    sa_cron->excludes(sa_ev);
    sadd->add_option("--timezone", sa_spec.timezone, "IANA time zone of the cron expression");
    sadd->add_option("--args", sa_args, "Positional arguments, a JSON array");
    sadd->add_option("--kwargs", sa_kwargs, "Keyword arguments, a JSON object");
    sadd->add_option("--queue", sa_spec.queue, "Queue (default: the task's)");
    sadd->add_option("--catch-up", sa_spec.catch_up, "Missed fires: skip, once or all");
    sadd->add_option("--overlap", sa_spec.overlap, "allow, or skip while the last run runs");
    std::string s_name;
    auto* sremove = schedule->add_subcommand("remove", "Remove a schedule added from the CLI");
    sremove->add_option("NAME", s_name, "Schedule name")->required();
    auto* spause = schedule->add_subcommand("pause", "Stop firing a schedule");
    spause->add_option("NAME", s_name, "Schedule name")->required();
    auto* sresume = schedule->add_subcommand("resume", "Fire a paused schedule again");
    sresume->add_option("NAME", s_name, "Schedule name")->required();

    auto* demo = app.add_subcommand("demo", "Run the order-processing demo on the embedded engine");
    DemoOptions demo_opts;
    demo->add_option("--orders", demo_opts.orders, "Orders to place")
        ->check(CLI::Range(1, 1000000));
    demo->add_option("--db", demo_opts.db_path, "SQLite file for the demo");

    // Name an unknown command plainly (CLI11 would only say that one is required).
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--broker" || a == "--config") {
            ++i;
            continue;
        }
        if (a.starts_with("-")) continue;
        bool known = false;
        for (auto* sub : app.get_subcommands({})) known |= sub->get_name() == a;
        if (!known) die(fmt::format("unknown command '{}' (see 'conveyor --help')", a), 2);
        break;
    }
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::string msg = e.what();
        die(fmt::format("{} (see 'conveyor --help')", msg), 2);
    }

    if (worker->parsed()) return cmd_worker(g, wf);
    if (demo->parsed()) {
        if (!g.broker.empty()) demo_opts.broker = g.broker;
        auto r = run_demo(demo_opts);
        if (!r) die(r.error().message);
        return 0;
    }

    if (scheduler->parsed()) return cmd_scheduler(g, s_lease);

    Config cfg = load(g);
    auto broker = open_broker(broker_url(g, cfg), cfg);

    if (schedule->parsed()) {
        auto store = broker->schedule_store();
        if (!store) die(store.error().message, 2);
        auto known = [&](const std::string& name) {
            auto all = Scheduler::status(**store, cfg.schedules);
            if (!all) die(all.error().message);
            for (auto& st : *all)
                if (st.spec.name == name) return std::optional<ScheduleStatus>(st);
            return std::optional<ScheduleStatus>();
        };
        if (slist->parsed()) {
            auto all = Scheduler::status(**store, cfg.schedules);
            if (!all) die(all.error().message);
            auto when = [](const std::optional<TimePoint>& t) {
                return t ? detail::format_iso8601(std::chrono::floor<std::chrono::seconds>(*t))
                         : std::string("-");
            };
            if (g.json) {
                Json arr = Json::array();
                for (auto& st : *all) {
                    Json j = st.spec.to_json();
                    j["source"] = st.source;
                    j["last_run"] = st.last_run ? Json(when(st.last_run)) : Json();
                    j["next_fire"] = st.next_fire ? Json(when(st.next_fire)) : Json();
                    arr.push_back(std::move(j));
                }
                fmt::print("{}\n", detail::dump_lossy(arr));
            } else {
                std::vector<std::vector<std::string>> rows;
                for (auto& st : *all)
                    rows.push_back({st.spec.name, st.spec.task, when_of(st.spec),
                                    st.spec.paused ? "paused" : "active", when(st.last_run),
                                    st.spec.paused ? "-" : when(st.next_fire), st.source});
                print_table({"SCHEDULE", "TASK", "WHEN", "STATE", "LAST RUN", "NEXT", "FROM"},
                            rows);
            }
            return 0;
        }
        if (sadd->parsed()) {
            sa_spec.args = parse_json_flag(sa_args, "--args", true);
            sa_spec.kwargs = parse_json_flag(sa_kwargs, "--kwargs", false);
            sa_spec.every = sa_every;
            if (auto ok = sa_spec.validate(); !ok) die(ok.error().message, 2);
            for (auto& c : cfg.schedules)
                if (c.name == sa_spec.name)
                    die(fmt::format("schedule '{}' is in the configuration; change it there",
                                    sa_spec.name),
                        2);
            if (auto ok = (*store)->add(sa_spec.to_json()); !ok) die(ok.error().message);
            auto st = known(sa_spec.name);
            fmt::print("schedule '{}' added; next fire {}\n", sa_spec.name,
                       st && st->next_fire
                           ? detail::format_iso8601(
                                 std::chrono::floor<std::chrono::seconds>(*st->next_fire))
                           : "-");
            return 0;
        }
        if (!known(s_name)) die(fmt::format("no schedule named '{}'", s_name), 2);
        if (sremove->parsed()) {
            for (auto& c : cfg.schedules)
                if (c.name == s_name)
                    die(fmt::format("schedule '{}' is in the configuration; remove it there, or "
                                    "pause it",
                                    s_name),
                        2);
            if (auto ok = (*store)->remove(s_name); !ok) die(ok.error().message);
            fmt::print("schedule '{}' removed\n", s_name);
            return 0;
        }
        bool pause = spause->parsed();
        if (auto ok = (*store)->set_paused(s_name, pause); !ok) die(ok.error().message);
        fmt::print("schedule '{}' {}\n", s_name, pause ? "paused" : "resumed");
        return 0;
    }

    if (enqueue->parsed()) {
        Json args = parse_json_flag(e_args, "--args", true);
        Json kwargs = parse_json_flag(e_kwargs, "--kwargs", false);
        if (!e_body_file.empty()) {
            std::string bytes;
            if (e_body_file == "-") {
                bytes.assign(std::istreambuf_iterator<char>(std::cin), {});
            } else {
                std::ifstream in(e_body_file, std::ios::binary);
                if (!in)
                    die(fmt::format("--body-file '{}' cannot be read: {}", e_body_file,
                                    std::strerror(errno)),
                        2);
                bytes.assign(std::istreambuf_iterator<char>(in), {});
            }
            args = Json::array({std::move(bytes)});
            e_raw = true;
        }
        EnqueueOptions o;
        o.content_type = e_content_type;
        o.queue = e_queue;
        o.id = e_id;
        o.priority = e_priority;
        o.max_retries = e_max_retries;
        o.exchange = e_exchange;
        o.routing_key = e_routing_key;
        o.ordering_key = e_key;
        o.raw = e_raw;
        auto now = SystemClock::now();
        // A time the clock cannot hold is refused, not wrapped around into the past.
        auto in_future = [&](std::optional<double> seconds, const char* flag) {
            if (!seconds || !(*seconds >= 0))  // NaN fails too
                die(fmt::format("{} must be a number of seconds from 0", flag), 2);
            double room = std::chrono::duration<double>(detail::kLatestTime - now).count();
            if (*seconds >= room)
                die(fmt::format("{} {} ends after 2262-01-01T00:00:00Z, the latest time Conveyor "
                                "can represent",
                                flag, *seconds),
                    2);
            return *detail::seconds_to_ms(*seconds);
        };
        if (e_countdown) o.countdown = in_future(e_countdown, "--countdown");
        if (!e_eta.empty()) {
            auto t = detail::parse_iso8601(e_eta);
            if (!t)
                die(fmt::format("--eta '{}' is not an ISO-8601 time such as 2030-01-01T12:00:00Z",
                                e_eta),
                    2);
            if (auto ok = detail::check_time(*t, fmt::format("--eta '{}'", e_eta)); !ok)
                die(ok.error().message, 2);
            o.eta = *t;
        }
        if (e_expires) o.expires = now + in_future(e_expires, "--expires");
        Client client(broker, cfg);
        auto id = client.enqueue(e_task, std::move(args), std::move(kwargs), o);
        if (!id) die(fmt::format("enqueue failed: {}", id.error().message));
        fmt::print("{}\n", *id);
        if (e_wait) {
            std::fflush(stdout);
            return print_result(client, *id, e_wait);
        }
        return 0;
    }
    if (result->parsed()) {
        Client client(broker, cfg);
        return print_result(client, r_id, r_wait);
    }
    if (tapply->parsed()) {
        if (auto ok = broker->declare_topology(); !ok)
            die(ok.error().message,
                ok.error().code == Errc::conflict || ok.error().code == Errc::not_found ? 2 : 1);
        auto t = cfg.topology();
        fmt::print("declared {} exchange(s), {} queue(s), {} binding(s)\n", t.exchanges.size(),
                   t.queues.size(), t.bindings.size());
        return 0;
    }
    if (queues->parsed()) {
        auto st = broker->stats();
        if (!st) die(st.error().message);
        std::map<std::string, QueueStats> all;
        for (auto& q : cfg.queues) all[q.name].queue = q.name;
        for (auto& s : *st) all[s.queue] = s;
        if (g.json) {
            Json arr = Json::array();
            for (auto& [name, s] : all)
                arr.push_back({{"queue", name},
                               {"ready", s.ready},
                               {"delayed", s.delayed},
                               {"in_flight", s.in_flight < 0 ? Json() : Json(s.in_flight)},
                               {"dead", s.dead}});
            fmt::print("{}\n", detail::dump_lossy(arr));
        } else {
            std::vector<std::vector<std::string>> rows;
            for (auto& [name, s] : all)
                rows.push_back({name, std::to_string(s.ready), std::to_string(s.delayed),
                                s.in_flight < 0 ? "-" : std::to_string(s.in_flight),
                                std::to_string(s.dead)});
            print_table({"QUEUE", "READY", "DELAYED", "IN FLIGHT", "DEAD"}, rows);
        }
        return 0;
    }
    if (dlist->parsed()) {
        auto dl = broker->dead_letters(d_queue, d_limit);
        if (!dl) die(dl.error().message);
        if (g.json) {
            Json arr = Json::array();
            for (auto& d : *dl) {
                arr.push_back({{"id", d.message_id},
                               {"queue", d.queue},
                               {"reason", d.reason},
                               {"dead_at", detail::format_iso8601(d.dead_at)},
                               {"task", d.envelope.headers.is_object()
                                            ? d.envelope.headers.value("task", Json())
                                            : Json()},
                               {"body", d.envelope.body}});
            }
            fmt::print("{}\n", detail::dump_lossy(arr));
        } else {
            std::vector<std::vector<std::string>> rows;
            for (auto& d : *dl) {
                std::string task;
                if (d.envelope.headers.is_object() && d.envelope.headers.contains("task") &&
                    d.envelope.headers["task"].is_string())
                    task = d.envelope.headers["task"].get<std::string>();
                rows.push_back({d.message_id, task, detail::format_iso8601(d.dead_at).substr(0, 19),
                                d.reason});
            }
            std::vector<std::string> header = {"ID", "TASK", "DEAD AT", "REASON"};
            for (auto& r : rows)
                fmt::print("{}  {}  {}  {}\n", r[0], r[1].empty() ? "-" : r[1], r[2], r[3]);
            if (rows.empty()) fmt::print("no dead messages in queue {}\n", d_queue);
        }
        return 0;
    }
    if (dreplay->parsed()) {
        auto n = broker->replay_dead(d_queue, d_ids);
        if (!n) die(n.error().message);
        if (g.json)
            fmt::print("{}\n", Json{{"replayed", *n}}.dump());
        else
            fmt::print("replayed {} message(s) to queue {}\n", *n, d_queue);
        return 0;
    }
    if (dpurge->parsed()) {
        auto n = broker->purge_dead(d_queue);
        if (!n) die(n.error().message);
        if (g.json)
            fmt::print("{}\n", Json{{"purged", *n}}.dump());
        else
            fmt::print("purged {} dead message(s) from queue {}\n", *n, d_queue);
        return 0;
    }
    return 0;
}
