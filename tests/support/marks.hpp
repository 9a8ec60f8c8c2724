#pragma once
// The log of test_worker's "test.timed" handler, read back: when each run started and ended, in
// which process, under which key, and when the broker handed it over.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "conveyor/task.hpp"
#include "support/process.hpp"

namespace testsupport {

/// A line of test.timed's log: "start|done ID PID MICROSECONDS KEY TAKEN".
struct Mark {
    std::string id;
    long pid = 0;
    std::int64_t us = 0;
    std::string key;
    std::int64_t taken = 0;  // when the broker handed it over
};

inline std::vector<Mark> marks(const std::string& log, const std::string& what) {
    std::vector<Mark> out;
    for (auto& l : lines_with(log, what + " ")) {
        std::istringstream in(l.substr(what.size() + 1));
        Mark m;
        in >> m.id >> m.pid >> m.us >> m.key >> m.taken;
        if (in) out.push_back(m);
    }
    return out;
}

/// The most tasks running at once, from their start and done marks (per key when asked).
inline int most_at_once(const std::vector<Mark>& starts, const std::vector<Mark>& dones,
                        const std::string& key = {}) {
    std::vector<std::pair<std::int64_t, int>> ev;  // (time, +1 start / -1 done); done first
    for (auto& m : starts)
        if (key.empty() || m.key == key) ev.emplace_back(m.us, +1);
    for (auto& m : dones)
        if (key.empty() || m.key == key) ev.emplace_back(m.us, -1);
    std::sort(ev.begin(), ev.end());
    int now = 0, most = 0;
    for (auto& [_, d] : ev) most = std::max(most, now += d);
    return most;
}

/// The most starts (of `ts`, sorted) within any one second.
inline int most_in_a_second(const std::vector<std::int64_t>& ts) {
    int most = 0;
    for (std::size_t i = 0; i < ts.size(); ++i) {
        auto end = std::lower_bound(ts.begin(), ts.end(), ts[i] + 1000000);
        most = std::max(most, int(end - (ts.begin() + std::ptrdiff_t(i))));
    }
    return most;
}

/// The checks of 200 test.timed runs at a rate of 20/s (any engine): the moments the broker
/// handed them over span 199 gaps of 50 ms (9.95 s, within 10%), never more than 20 in any
/// second nor much fewer, and more than one process ran them.
inline void expect_two_hundred_at_twenty(const std::vector<Mark>& starts) {
    std::vector<std::int64_t> t;
    std::set<long> pids;
    // The limit spaces the moments the broker hands tasks over (README: a worker's own
    // scheduling then adds its jitter to each start).
    for (auto& m : starts) {
        t.push_back(m.taken);
        pids.insert(m.pid);
    }
    std::sort(t.begin(), t.end());
    double span = double(t.back() - t.front()) / 1e6;
    int most = most_in_a_second(t);
    std::printf("200 takes over %.3f s, at most %d in any second, %zu processes\n", span, most,
                pids.size());
    EXPECT_GT(span, 9.95 * 0.9);
    EXPECT_LT(span, 9.95 * 1.1);
    EXPECT_LE(most, 20);
    EXPECT_GE(most, 18);  // and the limit is used, not undershot
    EXPECT_GE(pids.size(), 2u) << "the limit holds across processes, so more than one ran them";
}

/// `n` tasks of test.timed that sleep `sleep_ms` each, with kwargs.key = `key` when given.
inline std::vector<conveyor::TaskMessage> timed_tasks(int n, int sleep_ms,
                                                      const std::string& key = {}) {
    std::vector<conveyor::TaskMessage> tasks;
    for (int i = 0; i < n; ++i)
        tasks.push_back(conveyor::TaskMessage{
            .name = "test.timed",
            .args = {sleep_ms},
            .kwargs = key.empty() ? conveyor::Json::object() : conveyor::Json{{"key", key}}});
    return tasks;
}

/// A test_worker process on `url` and `queue` that logs to `log`, its output in `dir`'s
/// worker.out, configured by `dir`'s conveyor.toml.
inline std::unique_ptr<Process> timed_worker(const std::string& worker, const TempDir& dir,
                                             const std::string& url, const std::string& queue,
                                             int concurrency, int lease_ms,
                                             const std::string& log) {
    return std::make_unique<Process>(
        std::vector<std::string>{worker, url, queue, std::to_string(concurrency),
                                 std::to_string(lease_ms), "5000", log},
        dir.file("worker.out"),
        std::vector<std::string>{"CONVEYOR_CONFIG=" + dir.file("conveyor.toml")});
}

}  // namespace testsupport
