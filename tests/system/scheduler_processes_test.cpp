// `conveyor scheduler` as real processes on one sqlite file: three instances, the leader killed
// with SIGKILL again and again during a per-second schedule. Every second must fire exactly
// once, and no fire may come later than the failover bound.

#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <map>
#include <memory>
#include <set>

#include "conveyor/task.hpp"
#include "core/time.hpp"
#include "support/process.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::Process;
using testsupport::TempDir;

namespace {

struct Cluster {
    TempDir dir;
    std::string db = dir.file("s.db");
    std::string config = dir.file("conveyor.toml");
    std::vector<std::unique_ptr<Process>> procs;
    int started = 0;

    Cluster() {
        testsupport::write_file(config, "broker = \"sqlite://" + db +
                                            "\"\n"
                                            "[[schedule]]\n"
                                            "name = \"tick\"\n"
                                            "task = \"t.tick\"\n"
                                            "every = 1\n"
                                            "queue = \"ticks\"\n");
    }
    std::unique_ptr<Process> spawn() {
        return std::make_unique<Process>(
            std::vector<std::string>{CONVEYOR_CLI, "--config", config, "scheduler", "--lease", "2"},
            dir.file("scheduler-" + std::to_string(started++) + ".log"));
    }
    /// The pid holding the lease (owner "host:pid"), or -1.
    pid_t leader() {
        auto [rc, out] = testsupport::run({"sqlite3", db,
                                           "SELECT owner FROM scheduler_lease WHERE until > "
                                           "CAST(strftime('%s','now') AS INTEGER) * 1000"},
                                          {}, {}, 10s);
        auto colon = out.rfind(':');
        if (rc != 0 || colon == std::string::npos) return -1;
        return pid_t(std::atoi(out.c_str() + colon + 1));
    }
};

}  // namespace

TEST(SchedulerProcesses, LeaderKilledAgainAndAgainEverySecondFiresExactlyOnce) {
    Cluster c;
    for (int i = 0; i < 3; ++i) c.procs.push_back(c.spawn());
    std::set<pid_t> killed;
    auto end = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < end) {
        std::this_thread::sleep_for(3s);
        pid_t l = c.leader();
        for (auto& p : c.procs)
            if (p->pid() == l) {
                p->signal(SIGKILL);
                p->wait(5s);
                killed.insert(l);
                p = c.spawn();  // a fresh standby takes the slot
            }
    }
    for (auto& p : c.procs) p->signal(SIGTERM);
    for (auto& p : c.procs) EXPECT_TRUE(p->wait(10s));
    EXPECT_GE(killed.size(), 4u) << "the leader was not found to kill";

    auto [rc, out] = testsupport::run(
        {"sqlite3", "-separator", " ", c.db,
         "SELECT id, json_extract(headers, '$.\"x-conveyor-scheduled-at\"'), "
         "json_extract(headers, '$.\"x-conveyor-fired-at\"') FROM tasks WHERE queue='ticks'"},
        {}, {}, 10s);
    ASSERT_EQ(rc, 0) << out;
    std::map<std::int64_t, std::string> by_second;  // scheduled second -> id
    double worst_lateness = 0;
    std::istringstream in(out);
    std::string id, scheduled, fired;
    int rows = 0;
    while (in >> id >> scheduled >> fired) {
        ++rows;
        auto s = detail::parse_iso8601(scheduled);
        auto f = detail::parse_iso8601(fired);
        ASSERT_TRUE(s && f) << scheduled << " " << fired;
        auto sec = std::chrono::duration_cast<std::chrono::seconds>(s->time_since_epoch()).count();
        EXPECT_TRUE(by_second.emplace(sec, id).second) << "second fired twice: " << scheduled;
        worst_lateness = std::max(worst_lateness, std::chrono::duration<double>(*f - *s).count());
    }
    ASSERT_GE(rows, 18) << out;
    // Contiguous: no second between the first and the last fire is missing.
    auto first = by_second.begin()->first, last = by_second.rbegin()->first;
    EXPECT_EQ(std::int64_t(by_second.size()), last - first + 1)
        << "a second was never fired between the first and the last";
    // Failover bound: lease (2 s) + one look (0.5 s) + slack for a loaded machine.
    EXPECT_LE(worst_lateness, 3.5) << "a fire came later than the failover bound";
    RecordProperty("worst_lateness_s", std::to_string(worst_lateness));
    std::printf("%d fires over %zu leaders killed; worst lateness %.3f s\n", rows, killed.size(),
                worst_lateness);
}
