// The dashboard's task list and search over a big history: N finished tasks (1,000,000 by
// default) in a sqlite store, then the queries the dashboard's Tasks view sends, timed through
// TaskHistory (what /api/v1/tasks calls), median of 7 runs each.
//   usage: bench_history [N] [JSON_OUT]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "broker/sqlite/sqlite_db.hpp"
#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/history.hpp"

using namespace conveyor;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

template <class Fn>
double median_ms(Fn&& fn) {
    std::vector<double> runs;
    for (int i = 0; i < 7; ++i) {
        auto t = Clock::now();
        fn();
        runs.push_back(ms_since(t));
    }
    std::sort(runs.begin(), runs.end());
    return runs[runs.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    int n = argc > 1 ? std::atoi(argv[1]) : 1000000;
    std::string json_out = argc > 2 ? argv[2] : "";
    auto dir = std::filesystem::temp_directory_path() /
               fmt::format("conveyor-history-bench-{}", ::getpid());
    std::filesystem::create_directories(dir);
    std::string path = (dir / "history.db").string();
    auto broker = Broker::open("sqlite://" + path + "?sync=normal");
    if (!broker) {
        fmt::print(stderr, "{}\n", broker.error().message);
        return 1;
    }
    // N tasks of 10 names over 4 queues, each with a customer id in its kwargs; one in a
    // thousand of the name "rare".
    auto t0 = Clock::now();
    {
        Client client(*broker);
        const int batch = 5000;
        for (int first = 0; first < n; first += batch) {
            std::vector<TaskMessage> tasks;
            for (int i = first; i < std::min(n, first + batch); ++i)
                tasks.push_back(TaskMessage{
                    .name = i % 1000 == 0 ? "rare" : fmt::format("task.{}", i % 10),
                    .args = {i},
                    .kwargs = {{"customer", fmt::format("cust-{:07}", i)}, {"amount", i % 977}},
                    .ignore_result = true});
            if (auto ids = client.enqueue_many(std::move(tasks),
                                               {.queue = fmt::format("q{}", first / batch % 4)});
                !ids) {
                fmt::print(stderr, "enqueue failed: {}\n", ids.error().message);
                return 1;
            }
        }
    }
    double fill_s = ms_since(t0) / 1000;
    // ... all of them finished, as a worker leaves them (one in 50 dead).
    {
        auto db = sqlite::Db::open(path, "NORMAL");
        if (!db ||
            !db->exec("UPDATE tasks SET state=CASE WHEN seq % 50 = 0 THEN 2 ELSE 4 END, "
                      "started_at=created_at, finished_at=created_at+5, "
                      "lease_owner='bench#1'") ||
            !db->exec("ANALYZE")) {
            fmt::print(stderr, "cannot finish the tasks\n");
            return 1;
        }
    }
    auto history = (*broker)->history();
    if (!history) {
        fmt::print(stderr, "{}\n", history.error().message);
        return 1;
    }
    auto& h = **history;
    auto t1 = Clock::now();
    std::size_t indexed = 0;
    for (;;) {
        auto added = h.index(50000);
        if (!added) {
            fmt::print(stderr, "index: {}\n", added.error().message);
            return 1;
        }
        indexed += *added;
        if (*added < 50000) break;
    }
    double index_s = ms_since(t1) / 1000;

    auto page = [&](TaskQuery q) {
        auto p = h.tasks(q);
        if (!p || p->tasks.empty()) {
            fmt::print(stderr, "query found nothing\n");
            std::exit(1);
        }
        return *p;
    };
    auto middle = page({.limit = 1}).tasks[0].cursor / 2;
    struct Row {
        const char* what;
        const char* key;
        double ms;
    };
    std::vector<Row> rows = {
        {"newest 50", "history_list_ms", median_ms([&] { page({}); })},
        {"50 from the middle (keyset cursor)", "history_list_deep_ms",
         median_ms([&] { page({.before = middle}); })},
        {"state = dead", "history_state_ms",
         median_ms([&] { page({.state = HistoryState::dead}); })},
        {"name = rare (1 in 1,000)", "history_name_ms", median_ms([&] { page({.name = "rare"}); })},
        {"queue = q2", "history_queue_ms", median_ms([&] { page({.queue = "q2"}); })},
        {"search a customer id (1 match)", "history_search_one_ms",
         median_ms([&] { page({.search = fmt::format("cust-{:07}", n / 3)}); })},
        {"search \"amount\": 5 (1 in 977, newest 50)", "history_search_some_ms",
         median_ms([&] { page({.search = "\"amount\":5,"}); })},
        {"a task by id", "history_task_ms", median_ms([&] {
             auto id = page({.before = middle, .limit = 1}).tasks[0].id;
             if (!h.task(id)) std::exit(1);
         })},
    };
    fmt::print(
        "history of {} tasks: filled in {:.1f} s, search index built in {:.1f} s ({:.0f} "
        "tasks/s), file {:.0f} MB\n",
        n, fill_s, index_s, double(indexed) / index_s,
        double(std::filesystem::file_size(path)) / 1e6);
    fmt::print("| query | ms (median of 7) |\n|---|---:|\n");
    for (auto& r : rows) fmt::print("| {} | {:.2f} |\n", r.what, r.ms);
    if (!json_out.empty()) {
        std::ofstream out(json_out);
        out << "{\"history_tasks\": " << n
            << ", \"history_index_per_s\": " << double(indexed) / index_s;
        for (auto& r : rows) out << ", \"" << r.key << "\": " << r.ms;
        out << "}\n";
    }
    std::filesystem::remove_all(dir);
    return 0;
}
