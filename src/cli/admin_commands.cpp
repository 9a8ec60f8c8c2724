// `conveyor topology apply`, `conveyor queues` and `conveyor dlq list|replay|purge`: looking
// after the broker.

#include <fmt/format.h>

#include <map>
#include <memory>

#include "cli/commands.hpp"
#include "core/json_bounds.hpp"
#include "core/time.hpp"

namespace conveyor::cli {

namespace {

/// `conveyor dlq` flags and which subcommand was given.
struct DlqFlags {
    std::string queue;
    std::size_t limit = 50;
    std::vector<std::string> ids;
    CLI::App *dlist = nullptr, *dreplay = nullptr, *dpurge = nullptr;
};

int run_topology_apply(const Global& g) {
    Session s = open_session(g);
    if (auto ok = s.broker->declare_topology(); !ok)
        die(ok.error().message,
            ok.error().code == Errc::conflict || ok.error().code == Errc::not_found ? 2 : 1);
    auto t = s.cfg.topology();
    fmt::print("declared {} exchange(s), {} queue(s), {} binding(s)\n", t.exchanges.size(),
               t.queues.size(), t.bindings.size());
    return 0;
}

/// `conveyor queues pause|resume QUEUE` and which subcommand was given.
struct QueueFlags {
    std::string queue;
    CLI::App *pause = nullptr, *resume = nullptr;
};

int run_queues(const Global& g, const QueueFlags& f) {
    Session s = open_session(g);
    if (f.pause->parsed() || f.resume->parsed()) {
        bool pause = f.pause->parsed();
        if (auto ok = s.broker->pause_queue(f.queue, pause); !ok)
            die(ok.error().message, ok.error().code == Errc::invalid_argument ? 2 : 1);
        fmt::print("queue '{}' {}\n", f.queue, pause ? "paused" : "resumed");
        return 0;
    }
    auto st = s.broker->stats();
    if (!st) die(st.error().message);
    std::map<std::string, QueueStats> all;
    for (auto& q : s.cfg.queues) all[q.name].queue = q.name;
    for (auto& s : *st) all[s.queue] = s;
    if (g.json) {
        Json arr = Json::array();
        for (auto& [name, s] : all)
            arr.push_back({{"queue", name},
                           {"ready", s.ready},
                           {"delayed", s.delayed < 0 ? Json() : Json(s.delayed)},
                           {"in_flight", s.in_flight < 0 ? Json() : Json(s.in_flight)},
                           {"dead", s.dead},
                           {"limited", s.limited},
                           {"paused", s.paused}});
        fmt::print("{}\n", detail::dump_lossy(arr));
    } else {
        std::vector<std::vector<std::string>> rows;
        for (auto& [name, s] : all)
            rows.push_back(
                {name, std::to_string(s.ready), s.delayed < 0 ? "-" : std::to_string(s.delayed),
                 s.in_flight < 0 ? "-" : std::to_string(s.in_flight), std::to_string(s.dead),
                 std::to_string(s.limited), s.paused ? "paused" : "active"});
        print_table({"QUEUE", "READY", "DELAYED", "IN FLIGHT", "DEAD", "LIMITED", "STATE"}, rows);
    }
    return 0;
}

/// `conveyor limits [set|remove] TASK ...` and which subcommand was given.
struct LimitFlags {
    std::string task, rate, key;
    int max_concurrency = 0;
    CLI::App *set = nullptr, *remove = nullptr;
};

int run_limits(const Global& g, const LimitFlags& f) {
    Session s = open_session(g);
    if (f.set->parsed() || f.remove->parsed()) {
        TaskLimit l;
        l.task = f.task;
        if (f.set->parsed()) {
            auto rate = parse_rate(f.rate);
            if (!rate) die(rate.error().message, 2);
            l.rate = *rate;
            l.max_concurrency = f.max_concurrency;
            l.key = f.key;
            if (!l.key.empty())
                if (auto k = parse_limit_key(l.key); !k) die(k.error().message, 2);
            if (!l.limited())
                die("give --rate or --max-concurrency (or remove the limits: conveyor limits "
                    "remove TASK)",
                    2);
        }
        if (auto ok = s.broker->set_limit(l); !ok)
            die(ok.error().message, ok.error().code == Errc::invalid_argument ? 2 : 1);
        if (l.limited())
            fmt::print("task '{}' limited: {}\n", l.task, describe_limit(l));
        else
            fmt::print("task '{}' has no limits\n", l.task);
        return 0;
    }
    auto all = s.broker->limits();
    if (!all) die(all.error().message);
    if (g.json) {
        Json arr = Json::array();
        for (auto& x : *all) arr.push_back(limit_json(x));
        fmt::print("{}\n", detail::dump_lossy(arr));
        return 0;
    }
    std::vector<std::vector<std::string>> rows;
    for (auto& x : *all)
        rows.push_back({x.limit.task, x.limit.rate > 0 ? format_rate(x.limit.rate) : "-",
                        x.limit.max_concurrency > 0 ? std::to_string(x.limit.max_concurrency) : "-",
                        x.limit.key.empty() ? "-" : x.limit.key, std::to_string(x.waiting),
                        std::to_string(x.running)});
    if (rows.empty())
        fmt::print("no task has limits\n");
    else
        print_table({"TASK", "RATE", "MAX RUNNING", "KEY", "WAITING", "RUNNING"}, rows);
    return 0;
}

int run_dlq(const Global& g, const DlqFlags& f) {
    Session s = open_session(g);
    if (f.dlist->parsed()) {
        auto dl = s.broker->dead_letters(f.queue, f.limit);
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
            if (rows.empty()) fmt::print("no dead messages in queue {}\n", f.queue);
        }
        return 0;
    }
    if (f.dreplay->parsed()) {
        auto n = s.broker->replay_dead(f.queue, f.ids);
        if (!n) die(n.error().message);
        if (g.json)
            fmt::print("{}\n", Json{{"replayed", *n}}.dump());
        else
            fmt::print("replayed {} message(s) to queue {}\n", *n, f.queue);
        return 0;
    }
    auto n = s.broker->purge_dead(f.queue);
    if (!n) die(n.error().message);
    if (g.json)
        fmt::print("{}\n", Json{{"purged", *n}}.dump());
    else
        fmt::print("purged {} dead message(s) from queue {}\n", *n, f.queue);
    return 0;
}

}  // namespace

Command add_topology(CLI::App& app, const Global& g) {
    auto* topology = app.add_subcommand("topology", "Exchanges, queues and bindings");
    topology->require_subcommand(1);
    auto* tapply = topology->add_subcommand(
        "apply", "Declare the configured exchanges, queues and bindings (idempotent)");

    return {tapply, [&g] { return run_topology_apply(g); }};
}

Command add_queues(CLI::App& app, const Global& g) {
    auto* queues =
        app.add_subcommand("queues", "Ready, delayed, in-flight and dead counts per queue");
    auto f = std::make_shared<QueueFlags>();
    f->pause = queues->add_subcommand("pause", "Workers take nothing from QUEUE until resumed");
    f->pause->add_option("QUEUE", f->queue, "Queue")->required();
    f->resume = queues->add_subcommand("resume", "Workers take from QUEUE again");
    f->resume->add_option("QUEUE", f->queue, "Queue")->required();

    return {queues, [&g, f] { return run_queues(g, *f); }};
}

Command add_limits(CLI::App& app, const Global& g) {
    auto* limits = app.add_subcommand(
        "limits", "Tasks' rate and concurrency limits across the fleet, and what waits on them");
    auto f = std::make_shared<LimitFlags>();
    f->set = limits->add_subcommand("set", "Set TASK's limits (replacing its earlier ones)");
    f->set->add_option("TASK", f->task, "Task name")->required();
    f->set->add_option("--rate", f->rate, "Starts across the fleet: N/s, N/m or N/h");
    f->set
        ->add_option("--max-concurrency", f->max_concurrency,
                     "At most this many running at once across the fleet")
        ->check(CLI::NonNegativeNumber);
    f->set->add_option("--key", f->key, "Limits per key: kwargs.NAME or args.N");
    f->remove = limits->add_subcommand("remove", "TASK has no limits from now on");
    f->remove->add_option("TASK", f->task, "Task name")->required();

    return {limits, [&g, f] { return run_limits(g, *f); }};
}

Command add_dlq(CLI::App& app, const Global& g) {
    auto* dlq = app.add_subcommand("dlq", "Dead-letter queue: list, replay, purge");
    dlq->require_subcommand(1);
    auto f = std::make_shared<DlqFlags>();
    auto* dlist = f->dlist = dlq->add_subcommand("list", "List dead messages with their reasons");
    dlist->add_option("--queue", f->queue, "Queue")->required();
    dlist->add_option("--limit", f->limit, "At most this many");
    auto* dreplay = f->dreplay =
        dlq->add_subcommand("replay", "Move dead messages back to their queue");
    dreplay->add_option("--queue", f->queue, "Queue")->required();
    dreplay->add_option("--id", f->ids, "Only these ids (repeatable)");
    auto* dpurge = f->dpurge = dlq->add_subcommand("purge", "Delete dead messages");
    dpurge->add_option("--queue", f->queue, "Queue")->required();

    return {dlq, [&g, f] { return run_dlq(g, *f); }};
}

}  // namespace conveyor::cli
