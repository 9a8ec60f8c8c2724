// Cost curves of the sqlite engine: how its rates, its counts, its file and a worker's memory grow
// with the work (sync=normal throughout, so that the curves show the engine, not the disk's fsync;
// each point the median of BENCH_REPEAT runs, 3 by default, on a fresh file):
//  - drain with 1, 2 and 4 worker processes (N enqueued first), and a steady state with 2 producer
//    processes and 1, 2 or 4 worker processes at once (N over the whole time);
//  - one worker on 1 queue against 8 queues (N spread round-robin);
//  - payloads of 100 B, 10 KB and 1 MB (N, N / 5 and 100 tasks);
//  - enqueue and drain with 0, 10,000 and 1,000,000 (N_BACKLOG) other tasks waiting and with
//    100,000 delayed, with the time `conveyor queues` takes to count them and the file's size;
//  - a worker's resident memory working on an empty file and on 1,000,000 waiting tasks;
//  - the file's size after rounds of N tasks enqueued and run, history kept and ?history=0;
//  - the cost of flow control: one worker's drain with no limit, a rate limit and a concurrency
//    limit that never hold a task back (what deciding costs), a rate limit per key with a key
//    per task (a bucket each), and a fair queue with a tenant per task.
// usage: bench_curves N JSON_OUT
//        (internal) bench_curves --work URL QUEUE[,QUEUE...] | --produce URL N

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common.hpp"
#include "conveyor/log.hpp"
#include "conveyor/worker.hpp"

using namespace conveyor;
using namespace conveyor::bench;
namespace fs = std::filesystem;

namespace {

struct Rate {
    double enqueue_per_s = 0;
    double drain_per_s = 0;
};

int repeat() {
    const char* r = std::getenv("BENCH_REPEAT");
    return r != nullptr ? std::max(1, std::atoi(r)) : 3;
}

/// The run with the median drain rate of `repeat()` runs.
template <class Fn>
Rate median_of(Fn&& run) {
    std::vector<Rate> runs;
    for (int i = 0; i < repeat(); ++i) runs.push_back(run(i));
    std::ranges::sort(runs, {}, &Rate::drain_per_s);
    return runs[runs.size() / 2];
}

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<std::string> split(const std::string& list) {
    std::vector<std::string> out;
    std::size_t start = 0;
    for (;;) {
        auto comma = list.find(',', start);
        out.push_back(list.substr(start, comma - start));
        if (comma == std::string::npos) return out;
        start = comma + 1;
    }
}

/// Enqueues n tasks to `queues` and then runs them with one worker in this process
/// (concurrency 2, prefetch 512, as bench_engines).
Rate one_worker(const std::string& url, int n, const std::vector<std::string>& queues,
                std::size_t payload = 0) {
    auto broker = *Broker::open(url);
    Client client(broker);
    auto t0 = Clock::now();
    produce(client, n, queues, {}, payload);
    double enqueue = seconds_since(t0);
    Worker worker(
        broker, WorkerOptions{
                    .queues = queues, .concurrency = 2, .prefetch = 512, .remote_control = false});
    worker.handle("noop", [](TaskContext&) -> Json { return nullptr; });
    auto t1 = Clock::now();
    std::jthread runner([&] { (void)worker.run(); });
    while (worker.stats().succeeded < std::uint64_t(n))
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    double drain = seconds_since(t1);
    worker.stop();
    runner.join();
    return {n / enqueue, n / drain};
}

struct Child {
    pid_t pid;
    int stdin_fd;
};

Child start_worker(const std::string& url, const std::string& queues) {
    Child c{};
    c.pid = spawn({"--work", url, queues}, &c.stdin_fd);
    return c;
}

void stop(const Child& c) {
    close(c.stdin_fd);
    waitpid(c.pid, nullptr, 0);
}

/// Enqueues n tasks, then `workers` worker processes drain them.
Rate drain_by_processes(const std::string& url, int n, int workers) {
    auto broker = *Broker::open(url);
    Client client(broker);
    auto t0 = Clock::now();
    produce(client, n);
    double enqueue = seconds_since(t0);
    std::vector<Child> children;
    auto t1 = Clock::now();
    for (int i = 0; i < workers; ++i) children.push_back(start_worker(url, "bench"));
    wait_until_done(*broker, {"bench"});
    double drain = seconds_since(t1);
    for (auto& c : children) stop(c);
    return {n / enqueue, n / drain};
}

/// 2 producer processes enqueue n tasks between them while `workers` worker processes run them:
/// n over the time until the last is done (reported as the drain rate).
Rate steady(const std::string& url, int n, int workers) {
    auto broker = *Broker::open(url);
    std::vector<Child> children;
    auto t0 = Clock::now();
    for (int i = 0; i < workers; ++i) children.push_back(start_worker(url, "bench"));
    std::vector<Child> producers;
    for (int i = 0; i < 2; ++i) {
        Child p{};
        p.pid = spawn({"--produce", url, std::to_string(n / 2)}, &p.stdin_fd);
        producers.push_back(p);
    }
    for (auto& p : producers) {
        close(p.stdin_fd);
        int status = 0;
        waitpid(p.pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) std::exit(1);
    }
    double enqueue = seconds_since(t0);
    wait_until_done(*broker, {"bench"});
    double total = seconds_since(t0);
    for (auto& c : children) stop(c);
    return {n / 2 * 2 / enqueue, n / 2 * 2 / total};
}

double file_mib(const fs::path& db) {
    std::error_code ec;
    double bytes = 0;
    for (const char* suffix : {"", "-wal"}) {
        auto size = fs::file_size(db.string() + suffix, ec);
        if (!ec) bytes += double(size);
    }
    return bytes / (1024.0 * 1024.0);
}

/// The time one `Broker::stats()` takes (what `conveyor queues` and the dashboard call), in ms:
/// the median of 7.
double stats_ms(Broker& broker) {
    std::vector<double> ms;
    for (int i = 0; i < 7; ++i) {
        auto t = Clock::now();
        if (!broker.stats()) std::exit(1);
        ms.push_back(seconds_since(t) * 1000);
    }
    std::ranges::sort(ms);
    return ms[ms.size() / 2];
}

/// A worker process's largest resident memory while it works on `queue` for 3 s.
double worker_rss_mib(const std::string& url, const std::string& queue) {
    auto c = start_worker(url, queue);
    double most = 0;
    for (int i = 0; i < 60; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        most = std::max(most, status_mib(c.pid, "VmRSS"));
    }
    stop(c);
    return most;
}

int child_main(int argc, char** argv) {
    std::string mode = argv[1];
    std::string url = argv[2];
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
    Worker worker(*broker, WorkerOptions{.queues = split(argc > 3 ? argv[3] : "bench"),
                                         .concurrency = 2,
                                         .prefetch = 512,
                                         .remote_control = false});
    worker.handle("noop", [](TaskContext&) -> Json { return nullptr; });
    std::jthread stopper([&] {
        char c;
        while (read(0, &c, 1) > 0) {
        }
        worker.stop();
    });
    return worker.run() ? 0 : 1;
}

/// Whether a group of curves runs: all by default, or those CURVES names (workers, queues,
/// payload, backlog, space, limits; comma-separated).
bool wanted(const std::string& group) {
    const char* only = std::getenv("CURVES");
    if (only == nullptr) return true;
    auto groups = split(only);
    return std::ranges::find(groups, group) != groups.end();
}

double round2(double v) { return std::round(v * 100) / 100; }

}  // namespace

int main(int argc, char** argv) {
    if (argc > 2 && std::string(argv[1]).starts_with("--")) return child_main(argc, argv);
    if (argc < 3) {
        fmt::print(stderr, "usage: bench_curves N JSON_OUT\n");
        return 2;
    }
    int n = std::max(1000, std::atoi(argv[1]));
    std::string json_out = argv[2];
    set_log_sink(nullptr);
    auto dir = fs::temp_directory_path() / fmt::format("conveyor-curves-{}", getpid());
    fs::create_directories(dir);
    int file_no = 0;
    auto fresh = [&](const std::string& query = "") {
        auto db = dir / fmt::format("{}.db", file_no++);
        return "sqlite://" + db.string() + "?sync=normal" + query;
    };
    Json j = Json::object();
    auto put = [&](const std::string& key, Rate r) {
        j["conveyor_sqlite_" + key + "_enqueue_per_s"] = std::round(r.enqueue_per_s);
        j["conveyor_sqlite_" + key + "_tasks_per_s"] = std::round(r.drain_per_s);
        fmt::print(stderr, "{}: enqueue {:.0f}/s, run {:.0f}/s\n", key, r.enqueue_per_s,
                   r.drain_per_s);
    };

    for (int k : {1, 2, 4}) {
        if (!wanted("workers")) break;
        put(fmt::format("workers_{}", k),
            median_of([&](int) { return drain_by_processes(fresh(), n, k); }));
        put(fmt::format("steady_{}", k), median_of([&](int) { return steady(fresh(), n, k); }));
    }

    std::vector<std::string> eight;
    for (int q = 0; q < 8; ++q) eight.push_back(fmt::format("bench{}", q));
    if (wanted("queues")) {
        put("queues_1", median_of([&](int) { return one_worker(fresh(), n, {"bench"}); }));
        put("queues_8", median_of([&](int) { return one_worker(fresh(), n, eight); }));
    }

    struct Payload {
        const char* key;
        std::size_t bytes;
        int tasks;
    };
    for (auto [key, bytes, tasks] : {Payload{"payload_100b", 100, n},
                                     Payload{"payload_10kb", 10 * 1024, std::max(1000, n / 5)},
                                     Payload{"payload_1mb", 1024 * 1024, 100}}) {
        if (!wanted("payload")) break;
        put(key, median_of([&](int) { return one_worker(fresh(), tasks, {"bench"}, bytes); }));
    }

    // Other work in the file: a fresh file filled first, then N enqueued and run on top.
    int big = std::getenv("N_BACKLOG") != nullptr ? std::atoi(std::getenv("N_BACKLOG")) : 1000000;
    struct Backlog {
        const char* key;
        int waiting;
        int delayed;
    };
    for (auto [key, waiting, delayed] :
         {Backlog{"backlog_none", 0, 0}, Backlog{"backlog_10k", 10000, 0},
          Backlog{"backlog_1m", big, 0}, Backlog{"delayed_100k", 0, 100000}}) {
        if (!wanted("backlog")) break;
        auto db = dir / fmt::format("{}.db", key);
        auto url = "sqlite://" + db.string() + "?sync=normal";
        {
            auto broker = *Broker::open(url);
            Client client(broker);
            if (waiting > 0) produce(client, waiting, {"waiting"});
            if (delayed > 0) produce(client, delayed, {"later"}, std::chrono::hours(1));
            j[fmt::format("conveyor_sqlite_{}_stats_ms", key)] = round2(stats_ms(*broker));
        }
        j[fmt::format("conveyor_sqlite_{}_file_mib", key)] = round2(file_mib(db));
        put(key, median_of([&](int) { return one_worker(url, n, {"bench"}); }));
        if (waiting == big)
            j["conveyor_sqlite_worker_rss_backlog_mib"] = round2(worker_rss_mib(url, "waiting"));
        if (waiting == 0 && delayed == 0)
            j["conveyor_sqlite_worker_rss_empty_mib"] = round2(worker_rss_mib(url, "waiting"));
        fs::remove(db);
        fs::remove(db.string() + "-wal");
        fs::remove(db.string() + "-shm");
    }
    j["conveyor_sqlite_backlog_tasks"] = big;

    // The cost of a limit: limits that let every task through, so that only deciding costs.
    struct Limited {
        const char* key;
        TaskLimit limit;
        const char* fair_key;
    };
    for (auto& [key, limit, fair_key] :
         {Limited{"limits_none", {}, ""}, Limited{"limits_rate", {.task = "noop", .rate = 1e6}, ""},
          Limited{"limits_concurrency", {.task = "noop", .max_concurrency = 1000000}, ""},
          Limited{"limits_rate_per_key", {.task = "noop", .rate = 1e6, .key = "args.0"}, ""},
          Limited{"limits_fair", {}, "args.0"}}) {
        if (!wanted("limits")) break;
        put(key, median_of([&](int) {
                auto url = fresh();
                {
                    auto broker = *Broker::open(url);
                    if (limit.limited() && !broker->set_limit(limit)) std::exit(1);
                    if (*fair_key &&
                        !broker->set_topology(
                            Topology{.queues = {QueueSpec{.name = "bench", .fair_key = fair_key}}}))
                        std::exit(1);
                }
                return one_worker(url, n, {"bench"});
            }));
    }

    // Space: rounds of N enqueued and run on one file; its size after each.
    for (auto [key, query] : {std::pair{"history", ""}, std::pair{"no_history", "&history=0"}}) {
        if (!wanted("space")) break;
        auto db = dir / fmt::format("space-{}.db", key);
        auto url = "sqlite://" + db.string() + "?sync=normal" + query;
        Json sizes = Json::array();
        for (int round = 0; round < 5; ++round) {
            (void)one_worker(url, n, {"bench"});
            sizes.push_back(round2(file_mib(db)));
        }
        j[fmt::format("conveyor_sqlite_space_{}_mib", key)] = sizes;
        fmt::print(stderr, "file after rounds of {} tasks, {}: {} MiB\n", n, key, sizes.dump());
    }
    j["conveyor_sqlite_curves_tasks"] = n;
    fs::remove_all(dir);
    std::ofstream(json_out) << j.dump(2) << "\n";
    return 0;
}
