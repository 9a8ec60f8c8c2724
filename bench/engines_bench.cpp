// End-to-end throughput: enqueue N no-op tasks (batched, durable when the engine is), then run
// one worker with a no-op handler until every task is acknowledged. The embedded engines, and
// RabbitMQ next to the raw client's figures for the same work (bench_raw_amqp).
// The sqlite engine also as it is used by services: several producer processes and several
// worker processes on one file at the same time (end-to-end: from the start until the last task
// is acknowledged).
// Besides the rates, the client's CPU time per task (µs) while enqueueing and while working.
// usage: bench_engines N_memory N_sqlite JSON_OUT
//                      [AMQP_URL N_amqp RAW_ENQUEUE RAW_END_TO_END [RAW_ENQ_CPU RAW_RUN_CPU]]
//        BENCH_REDIS_URL=redis://...: RabbitMQ also with the Redis result backend and limits
//        (internal) bench_engines --produce URL N | --work URL

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "common.hpp"
#include "conveyor/client.hpp"
#include "conveyor/log.hpp"
#include "conveyor/worker.hpp"

using namespace conveyor;
using namespace conveyor::bench;

namespace {

struct Figures {
    double enqueue_per_s = 0;
    double end_to_end_per_s = 0;
    double enqueue_cpu_us = 0;  ///< this process's CPU time per task while enqueueing
    double run_cpu_us = 0;      ///< ... and while the worker ran them
};

/// How the worker is watched while it runs: not at all, or with what it has by default (metrics
/// collected, the /metrics listener up, a log sink at info writing text lines, to /dev/null).
enum class Watch { none, defaults };

Figures measure(const std::string& url, int n, int concurrency, std::size_t prefetch,
                Watch watch = Watch::defaults) {
    auto broker = *Broker::open(url);
    Client client(broker);
    auto c0 = cpu_us();
    auto t0 = Clock::now();
    produce(client, n);
    auto t1 = Clock::now();
    auto c1 = cpu_us();
    WorkerOptions wo{.queues = {"bench"},
                     .concurrency = concurrency,
                     .prefetch = prefetch,
                     .remote_control = std::getenv("BENCH_NO_MONITOR") == nullptr};
    wo.metrics = watch == Watch::defaults;
    if (watch == Watch::defaults) {
        wo.http = "127.0.0.1:0";
        static int devnull = open("/dev/null", O_WRONLY);
        set_log_sink(
            [](const LogRecord& r) {
                auto line = format_log_text(r) + "\n";
                (void)!write(devnull, line.data(), line.size());
            },
            LogLevel::info);
    } else {
        set_log_sink(nullptr);
    }
    Worker worker(broker, wo);
    worker.handle("noop", [](TaskContext&) -> Json { return nullptr; });
    auto t2 = Clock::now();
    auto c2 = cpu_us();
    std::jthread runner([&] { (void)worker.run(); });
    while (worker.stats().succeeded < std::uint64_t(n))
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    auto t3 = Clock::now();
    auto c3 = cpu_us();
    worker.stop();
    runner.join();
    double enq = std::chrono::duration<double>(t1 - t0).count();
    double run = std::chrono::duration<double>(t3 - t2).count();
    return Figures{n / enq, n / run, (c1 - c0) / n, (c3 - c2) / n};
}

/// The steady state in one process, as the Redis-based peers are measured: a worker (concurrency
/// 2, prefetch 512) runs while this thread enqueues n tasks in batches of 1,000; n over the time
/// from the first enqueue to the last task's acknowledgement.
double measure_steady(const std::string& url, int n) {
    auto broker = *Broker::open(url);
    Client client(broker);
    set_log_sink(nullptr);
    Worker worker(
        broker,
        WorkerOptions{
            .queues = {"bench"}, .concurrency = 2, .prefetch = 512, .remote_control = false});
    worker.handle("noop", [](TaskContext&) -> Json { return nullptr; });
    std::jthread runner([&] { (void)worker.run(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // up and waiting
    auto t0 = Clock::now();
    produce(client, n);
    while (worker.stats().succeeded < std::uint64_t(n))
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    worker.stop();
    runner.join();
    return n / s;
}

/// A child process: `--produce URL N` enqueues N tasks, `--work URL` works until stdin closes.
int child_main(int argc, char** argv) {
    std::string mode = argv[1], url = argv[2];
    auto broker = Broker::open(url);
    if (!broker) {
        fmt::print(stderr, "{}\n", broker.error().message);
        return 1;
    }
    if (mode == "--produce") {
        Client client(*broker);
        produce(client, argc > 3 ? std::atoi(argv[3]) : 0);
        return 0;
    }
    Worker worker(*broker, WorkerOptions{.queues = {"bench"}, .concurrency = 2, .prefetch = 512});
    worker.handle("noop", [](TaskContext&) -> Json { return nullptr; });
    std::jthread stopper([&] {
        char c;
        while (read(0, &c, 1) > 0) {
        }
        worker.stop();
    });
    return worker.run() ? 0 : 1;
}

/// `producers` processes enqueue n tasks between them while `workers` processes run them.
Figures measure_processes(const std::string& url, int n, int producers, int workers) {
    auto broker = *Broker::open(url);
    std::vector<pid_t> pids;
    std::vector<int> pipes;
    auto t0 = Clock::now();
    for (int i = 0; i < workers; ++i) {
        int fd;
        pids.push_back(spawn({"--work", url}, &fd));
        pipes.push_back(fd);
    }
    std::vector<pid_t> producing;
    for (int i = 0; i < producers; ++i) {
        int fd;
        producing.push_back(spawn({"--produce", url, std::to_string(n / producers)}, &fd));
        close(fd);
    }
    for (auto pid : producing) {
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) std::exit(1);
    }
    auto t1 = Clock::now();
    wait_until_done(*broker, {"bench"});
    auto t2 = Clock::now();
    for (auto fd : pipes) close(fd);
    for (auto pid : pids) waitpid(pid, nullptr, 0);
    int total = n / producers * producers;
    return Figures{total / std::chrono::duration<double>(t1 - t0).count(),
                   total / std::chrono::duration<double>(t2 - t0).count()};
}

/// The run with the median end-to-end rate of `repeat` runs (BENCH_REPEAT, default 3): figures
/// on a shared 2-core VM vary a lot from one run to the next.
template <class Fn>
Figures median_of(Fn&& run) {
    int repeat =
        std::getenv("BENCH_REPEAT") ? std::max(1, std::atoi(std::getenv("BENCH_REPEAT"))) : 3;
    std::vector<Figures> runs;
    for (int i = 0; i < repeat; ++i) runs.push_back(run());
    std::sort(runs.begin(), runs.end(), [](const Figures& a, const Figures& b) {
        return a.end_to_end_per_s < b.end_to_end_per_s;
    });
    return runs[runs.size() / 2];
}

/// Enqueue-to-handler-start latency at `rate` tasks/s offered for `seconds`: p50 and p99 in µs.
/// `prefetch`: the worker's (0: its default, concurrency * 4). Each run has a queue of its own.
std::pair<double, double> latency(const std::string& url, double rate, double seconds,
                                  std::size_t prefetch) {
    const std::string queue = fmt::format("latency-{}", prefetch);
    auto broker = *Broker::open(url);
    Client client(broker);
    std::vector<double> lat;
    std::mutex mu;
    Worker worker(broker, WorkerOptions{.queues = {queue}, .concurrency = 2, .prefetch = prefetch});
    worker.handle("stamp", [&](TaskContext& c) -> Json {
        auto sent = c.args()[0].get<std::int64_t>();
        auto now =
            std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch())
                .count();
        std::lock_guard lk(mu);
        lat.push_back(double(now - sent));
        return nullptr;
    });
    std::jthread runner([&] { (void)worker.run(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    auto start = Clock::now();
    auto per_ms = std::max(1.0, rate / 1000.0);
    double owed = 0;
    std::size_t sent = 0;
    while (Clock::now() - start < std::chrono::duration<double>(seconds)) {
        owed += per_ms;
        std::vector<TaskMessage> batch;
        for (; owed >= 1; owed -= 1) {
            auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                          Clock::now().time_since_epoch())
                          .count();
            batch.push_back(TaskMessage{.name = "stamp", .args = {us}, .ignore_result = true});
        }
        sent += batch.size();
        if (!batch.empty()) (void)client.enqueue_many(std::move(batch), {.queue = queue});
        std::this_thread::sleep_until(
            start +
            std::chrono::milliseconds(
                long(std::chrono::duration<double, std::milli>(Clock::now() - start).count()) + 1));
    }
    auto deadline = Clock::now() + std::chrono::seconds(30);
    while (worker.stats().succeeded < sent && Clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    worker.stop();
    runner.join();
    std::sort(lat.begin(), lat.end());
    if (lat.empty()) return {0, 0};
    return {lat[lat.size() / 2], lat[lat.size() * 99 / 100]};
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 2 && std::string(argv[1]).starts_with("--")) return child_main(argc, argv);
    int n_mem = argc > 1 ? std::atoi(argv[1]) : 500000;
    int n_sql = argc > 2 ? std::atoi(argv[2]) : 100000;
    std::string json_out = argc > 3 ? argv[3] : "";
    auto dir = std::filesystem::temp_directory_path() / fmt::format("conveyor-bench-{}", getpid());
    std::filesystem::create_directories(dir);

    struct Row {
        std::string name;
        std::string key;
        Figures f;
        int n;
    };
    std::vector<Row> rows;
    Json extra = Json::object();
    // RabbitMQ first: the resident memory read after it is the worker's under load.
    if (argc > 7) {
        std::string url = argv[4];
        int n_amqp = std::atoi(argv[5]);
        rows.push_back(
            {"raw rabbitmq-c (the limit)", "raw_amqp_tasks_per_s",
             Figures{std::atof(argv[6]), std::atof(argv[7]), argc > 9 ? std::atof(argv[8]) : 0,
                     argc > 9 ? std::atof(argv[9]) : 0},
             n_amqp});
        rows.push_back({"RabbitMQ (confirms, acks)", "conveyor_amqp_tasks_per_s",
                        median_of([&] { return measure(url + "?results=none", n_amqp, 2, 1000); }),
                        n_amqp});
        extra["conveyor_worker_rss_load_mib"] = std::round(rss_mib() * 10) / 10;
        // Latency at half the measured maximum.
        if (!std::getenv("BENCH_NO_LATENCY")) {
            double rate = rows.back().f.end_to_end_per_s / 2;
            // With the raw floor's prefetch (1,000, as the throughput runs), then with the
            // worker's default (concurrency * 4 = 8), which holds each millisecond's burst back
            // until acks come.
            // (conveyor_amqp_latency_*: the default prefetch, as in earlier results.)
            auto [p50, p99] = latency(url + "?results=none", rate, 5.0, 1000);
            extra["conveyor_amqp_latency_prefetch1000_p50_us"] = std::round(p50);
            extra["conveyor_amqp_latency_prefetch1000_p99_us"] = std::round(p99);
            fmt::print("latency at {:.0f} tasks/s: p50 {:.0f} us, p99 {:.0f} us\n", rate, p50, p99);
            auto [d50, d99] = latency(url + "?results=none", rate, 5.0, 0);
            extra["conveyor_amqp_latency_p50_us"] = std::round(d50);
            extra["conveyor_amqp_latency_p99_us"] = std::round(d99);
            fmt::print(
                "latency at {:.0f} tasks/s, default prefetch: p50 {:.0f} us, p99 {:.0f} us\n", rate,
                d50, d99);
        }
        // What a limit costs on RabbitMQ (kept in the Redis result backend): the same drain
        // with that backend, without a limit and with limits that never hold a task back.
        if (const char* redis = std::getenv("BENCH_REDIS_URL"); redis && *redis) {
            std::string with_redis = url + "?results=" + redis;
            auto limited = [&](const TaskLimit& l) {
                return median_of([&] {
                    auto b = *Broker::open(with_redis);
                    if (!b->set_limit(l)) std::exit(1);
                    auto f = measure(with_redis, n_amqp, 2, 1000);
                    (void)b->set_limit({.task = "noop"});
                    return f;
                });
            };
            rows.push_back({"RabbitMQ, Redis results, no limit", "conveyor_amqp_redis_tasks_per_s",
                            limited({.task = "noop"}), n_amqp});
            rows.push_back({"RabbitMQ, Redis, a rate limit that never holds back",
                            "conveyor_amqp_rate_limited_tasks_per_s",
                            limited({.task = "noop", .rate = 1e6}), n_amqp});
            rows.push_back({"RabbitMQ, Redis, a concurrency limit that never holds back",
                            "conveyor_amqp_concurrency_limited_tasks_per_s",
                            limited({.task = "noop", .max_concurrency = 1000000}), n_amqp});
        }
    }
    if (n_mem > 0)
        rows.push_back({"memory", "conveyor_memory_tasks_per_s",
                        median_of([&] { return measure("memory://bench", n_mem, 2, 512); }),
                        n_mem});
    if (n_sql > 0) {
        rows.push_back({"sqlite (sync=full, durable)", "conveyor_sqlite_tasks_per_s",
                        median_of([&] {
                            return measure("sqlite://" + (dir / "full.db").string(), n_sql, 2, 512);
                        }),
                        n_sql});
        rows.push_back(
            {"sqlite (sync=normal)", "conveyor_sqlite_normal_tasks_per_s", median_of([&] {
                 return measure("sqlite://" + (dir / "normal.db").string() + "?sync=normal", n_sql,
                                2, 512);
             }),
             n_sql});
        {
            std::vector<double> runs;
            for (int i = 0; i < 3; ++i)
                runs.push_back(measure_steady(
                    "sqlite://" + (dir / fmt::format("steady-{}.db", i)).string(), n_sql));
            std::ranges::sort(runs);
            extra["conveyor_sqlite_steady_per_s"] = std::round(runs[1]);
            fmt::print("sqlite (sync=full) steady state, one process: {:.0f} tasks/s\n", runs[1]);
        }
        rows.push_back({"sqlite, 2 producer + 2 worker processes",
                        "conveyor_sqlite_processes_tasks_per_s", median_of([&] {
                            return measure_processes("sqlite://" + (dir / "procs.db").string(),
                                                     n_sql, 2, 2);
                        }),
                        n_sql});
    }
    // What watching costs: metrics and logs at their defaults against neither, runs interleaved
    // (none, defaults, none, ...), median of three each.
    if (n_mem > 0 && !std::getenv("BENCH_NO_WATCH_COST")) {
        auto cost = [&](const std::string& key, const std::string& url, int n) {
            std::vector<double> none, defaults, none_cpu, defaults_cpu;
            for (int i = 0; i < 3; ++i) {
                auto off = measure(url, n, 2, 512, Watch::none);
                auto on = measure(url, n, 2, 512, Watch::defaults);
                none.push_back(off.end_to_end_per_s);
                none_cpu.push_back(off.run_cpu_us);
                defaults.push_back(on.end_to_end_per_s);
                defaults_cpu.push_back(on.run_cpu_us);
            }
            for (auto* v : {&none, &defaults, &none_cpu, &defaults_cpu})
                std::sort(v->begin(), v->end());
            extra[key + "_unwatched_tasks_per_s"] = std::round(none[1]);
            extra[key + "_watched_tasks_per_s"] = std::round(defaults[1]);
            extra[key + "_unwatched_worker_cpu_us"] = std::round(none_cpu[1] * 100) / 100;
            extra[key + "_watched_worker_cpu_us"] = std::round(defaults_cpu[1] * 100) / 100;
            fmt::print(
                "{}: metrics and logs on {:.0f} tasks/s ({:.2f} us CPU each), off {:.0f} tasks/s "
                "({:.2f} us) ({:+.1f}%)\n",
                key, defaults[1], defaults_cpu[1], none[1], none_cpu[1],
                (defaults[1] / none[1] - 1) * 100);
        };
        cost("conveyor_memory", "memory://watch", n_mem);
        if (n_sql > 0)
            cost("conveyor_sqlite_normal",
                 "sqlite://" + (dir / "watch.db").string() + "?sync=normal", n_sql);
    }
    // What the task history costs the sqlite engine: finished tasks kept (the default) against
    // deleted at once (?history=0), sync=normal, interleaved, median of three each; a fresh
    // file per run, so the kept tasks of one run do not weigh on the next.
    if (n_sql > 0 && !std::getenv("BENCH_NO_HISTORY_COST")) {
        std::vector<double> kept, gone, kept_cpu, gone_cpu;
        for (int i = 0; i < 3; ++i) {
            auto file = [&](const char* what) {
                auto f = dir / fmt::format("history-{}-{}.db", what, i);
                return "sqlite://" + f.string() + "?sync=normal";
            };
            auto off = measure(file("off") + "&history=0", n_sql, 2, 512, Watch::none);
            auto on = measure(file("on"), n_sql, 2, 512, Watch::none);
            gone.push_back(off.end_to_end_per_s);
            gone_cpu.push_back(off.run_cpu_us);
            kept.push_back(on.end_to_end_per_s);
            kept_cpu.push_back(on.run_cpu_us);
        }
        for (auto* v : {&kept, &gone, &kept_cpu, &gone_cpu}) std::sort(v->begin(), v->end());
        extra["conveyor_sqlite_history_tasks_per_s"] = std::round(kept[1]);
        extra["conveyor_sqlite_no_history_tasks_per_s"] = std::round(gone[1]);
        extra["conveyor_sqlite_history_worker_cpu_us"] = std::round(kept_cpu[1] * 100) / 100;
        extra["conveyor_sqlite_no_history_worker_cpu_us"] = std::round(gone_cpu[1] * 100) / 100;
        fmt::print(
            "sqlite task history: kept {:.0f} tasks/s ({:.2f} us worker CPU each), off {:.0f} "
            "tasks/s ({:.2f} us) ({:+.1f}%)\n",
            kept[1], kept_cpu[1], gone[1], gone_cpu[1], (kept[1] / gone[1] - 1) * 100);
    }
    std::filesystem::remove_all(dir);

    fmt::print("{:<42} {:>8} {:>11} {:>14} {:>12} {:>12}\n", "engine", "tasks", "enqueue/s",
               "end-to-end/s", "enq cpu us", "work cpu us");
    for (auto& r : rows)
        fmt::print("{:<42} {:>8} {:>11.0f} {:>14.0f} {:>12.1f} {:>12.1f}\n", r.name, r.n,
                   r.f.enqueue_per_s, r.f.end_to_end_per_s, r.f.enqueue_cpu_us, r.f.run_cpu_us);
    if (!json_out.empty()) {
        std::ofstream out(json_out);
        Json j = Json::object();
        for (auto& r : rows) {
            j[r.key] = std::round(r.f.end_to_end_per_s);
            std::string prefix = r.key.substr(0, r.key.size() - 12);
            j[prefix + "_enqueue_per_s"] = std::round(r.f.enqueue_per_s);
            if (r.f.run_cpu_us > 0) {
                j[prefix + "_enqueue_cpu_us"] = std::round(r.f.enqueue_cpu_us * 10) / 10;
                j[prefix + "_worker_cpu_us"] = std::round(r.f.run_cpu_us * 10) / 10;
            }
        }
        j.update(extra);
        out << j.dump(2) << "\n";
    }
    return 0;
}
