// End-to-end throughput: enqueue N no-op tasks (batched, durable when the engine is), then run
// one worker with a no-op handler until every task is acknowledged. The embedded engines, and
// RabbitMQ next to the raw client's figures for the same work (bench_raw_amqp).
// usage: bench_engines N_memory N_sqlite JSON_OUT [AMQP_URL N_amqp RAW_ENQUEUE RAW_END_TO_END]

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "conveyor/client.hpp"
#include "conveyor/worker.hpp"

using namespace conveyor;
using Clock = std::chrono::steady_clock;

namespace {

struct Figures {
    double enqueue_per_s = 0;
    double end_to_end_per_s = 0;
};

Figures measure(const std::string& url, int n, int concurrency, std::size_t prefetch) {
    auto broker = *Broker::open(url);
    Client client(broker);
    const int batch = 1000;
    auto t0 = Clock::now();
    for (int first = 0; first < n; first += batch) {
        std::vector<TaskMessage> tasks;
        for (int i = first; i < std::min(n, first + batch); ++i)
            tasks.push_back(TaskMessage{.name = "noop", .args = {i}, .ignore_result = true});
        if (auto ids = client.enqueue_many(std::move(tasks), {.queue = "bench"}); !ids) {
            fmt::print(stderr, "enqueue failed: {}\n", ids.error().message);
            std::exit(1);
        }
    }
    auto t1 = Clock::now();
    Worker worker(broker,
                  WorkerOptions{.queues = {"bench"},
                                .concurrency = concurrency,
                                .prefetch = prefetch,
                                .remote_control = std::getenv("BENCH_NO_MONITOR") == nullptr});
    worker.handle("noop", [](TaskContext&) -> Json { return nullptr; });
    auto t2 = Clock::now();
    std::jthread runner([&] { (void)worker.run(); });
    while (worker.stats().succeeded < std::uint64_t(n))
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    auto t3 = Clock::now();
    worker.stop();
    runner.join();
    double enq = std::chrono::duration<double>(t1 - t0).count();
    double run = std::chrono::duration<double>(t3 - t2).count();
    return Figures{n / enq, n / run};
}

}  // namespace

int main(int argc, char** argv) {
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
    rows.push_back(
        {"memory", "conveyor_memory_tasks_per_s", measure("memory://bench", n_mem, 2, 512), n_mem});
    rows.push_back({"sqlite (sync=full, durable)", "conveyor_sqlite_tasks_per_s",
                    measure("sqlite://" + (dir / "full.db").string(), n_sql, 2, 512), n_sql});
    rows.push_back(
        {"sqlite (sync=normal)", "conveyor_sqlite_normal_tasks_per_s",
         measure("sqlite://" + (dir / "normal.db").string() + "?sync=normal", n_sql, 2, 512),
         n_sql});
    std::filesystem::remove_all(dir);
    if (argc > 7) {
        std::string url = argv[4];
        int n_amqp = std::atoi(argv[5]);
        rows.push_back({"raw rabbitmq-c (the limit)", "raw_amqp_tasks_per_s",
                        Figures{std::atof(argv[6]), std::atof(argv[7])}, n_amqp});
        rows.push_back({"RabbitMQ (confirms, acks)", "conveyor_amqp_tasks_per_s",
                        measure(url + "?results=none", n_amqp, 2, 1000), n_amqp});
    }

    fmt::print("{:<30} {:>10} {:>16} {:>18}\n", "engine", "tasks", "enqueue/s", "end-to-end/s");
    for (auto& r : rows)
        fmt::print("{:<30} {:>10} {:>16.0f} {:>18.0f}\n", r.name, r.n, r.f.enqueue_per_s,
                   r.f.end_to_end_per_s);
    if (!json_out.empty()) {
        std::ofstream out(json_out);
        Json j = Json::object();
        for (auto& r : rows) {
            j[r.key] = std::round(r.f.end_to_end_per_s);
            j[r.key.substr(0, r.key.size() - 12) + "_enqueue_per_s"] =
                std::round(r.f.enqueue_per_s);
        }
        out << j.dump(2) << "\n";
    }
    return 0;
}
