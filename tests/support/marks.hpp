#pragma once
// The log of test_worker's "test.timed" handler, read back: when each run started and ended, in
// which process, under which key, and when the broker handed it over.

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

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

}  // namespace testsupport
