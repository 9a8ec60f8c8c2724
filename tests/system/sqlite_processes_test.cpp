// Several real worker processes sharing one SQLite file: SIGKILL, leases, graceful shutdown.

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "support/process.hpp"
#include "support/queue_stats.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::eventually;
using testsupport::lines_with;
using testsupport::Process;
using testsupport::stats_of;
using testsupport::TempDir;

namespace {

std::unique_ptr<Process> start_worker(const TempDir& dir, const std::string& url, int concurrency,
                                      int lease_ms, int grace_ms, int prefetch = 0) {
    std::vector<std::string> argv = {CONVEYOR_TEST_WORKER,
                                     url,
                                     "q",
                                     std::to_string(concurrency),
                                     std::to_string(lease_ms),
                                     std::to_string(grace_ms),
                                     dir.file("log")};
    if (prefetch) argv.push_back(std::to_string(prefetch));
    return std::make_unique<Process>(argv, dir.file("worker.out"));
}

std::map<std::string, int> count_by_id(const std::vector<std::string>& lines) {
    std::map<std::string, int> n;
    for (auto& l : lines) {
        auto a = l.find(' ');
        auto b = l.find(' ', a + 1);
        n[l.substr(a + 1, b - a - 1)]++;
    }
    return n;
}

}  // namespace

TEST(SqliteProcesses, TenThousandTasksSurviveAWorkerKilledMidRun) {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    auto broker = *Broker::open(url);
    Client client(broker);
    const int n = 10000;
    std::vector<TaskMessage> tasks;
    for (int i = 0; i < n; ++i) tasks.push_back(TaskMessage{.name = "test.noop", .args = {i}});
    auto ids = client.enqueue_many(std::move(tasks), {.queue = "q"});
    ASSERT_TRUE(ids) << ids.error().message;

    std::vector<std::unique_ptr<Process>> workers;
    for (int i = 0; i < 3; ++i) workers.push_back(start_worker(dir, url, 2, 1000, 5000));
    // Kill one worker once a tenth of the work is done, while it holds claimed tasks.
    ASSERT_TRUE(
        eventually([&] { return lines_with(dir.file("log"), "done").size() >= n / 10; }, 60s));
    workers[0]->signal(SIGKILL);
    ASSERT_EQ(workers[0]->wait(5s), 128 + SIGKILL);

    ASSERT_TRUE(eventually(
        [&] {
            auto s = stats_of(*broker, "q");
            return s.ready + s.delayed + s.in_flight == 0;
        },
        120s));
    for (std::size_t i = 1; i < workers.size(); ++i) {
        workers[i]->signal(SIGTERM);
        EXPECT_EQ(workers[i]->wait(10s), 0);
    }
    auto done = count_by_id(lines_with(dir.file("log"), "done"));
    int missing = 0;
    for (int i = 0; i < n; ++i) {
        auto r = client.result((*ids)[std::size_t(i)]);
        ASSERT_TRUE(r);
        if (r->state != TaskState::success || r->result != i) ++missing;
    }
    EXPECT_EQ(missing, 0);
    EXPECT_EQ(done.size(), std::size_t(n));
    EXPECT_EQ(stats_of(*broker, "q").dead, 0);
}

TEST(SqliteProcesses, TaskLongerThanTheLeaseIsNotStartedTwice) {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    auto broker = *Broker::open(url);
    Client client(broker);
    auto w1 = start_worker(dir, url, 1, 500, 5000);
    auto w2 = start_worker(dir, url, 1, 500, 5000);
    ASSERT_TRUE(eventually([&] { return lines_with(dir.file("log"), "ready").size() == 2; }, 10s));
    auto id =
        client.enqueue("test.sleep", {2500}, Json::object(), {.queue = "q"});  // 5 leases long
    ASSERT_TRUE(id);
    auto r = client.wait(*id, 20s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(lines_with(dir.file("log"), "start").size(), 1u);
}

TEST(SqliteProcesses, GracefulShutdownFinishesRunningTasksAndHandsBackTheRest) {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    auto broker = *Broker::open(url);
    Client client(broker);
    std::vector<TaskMessage> tasks;
    for (int i = 0; i < 6; ++i) tasks.push_back(TaskMessage{.name = "test.sleep", .args = {400}});
    auto ids = client.enqueue_many(std::move(tasks), {.queue = "q"});
    auto w = start_worker(dir, url, 1, 30000, 10000, 6);  // holds all six, runs one at a time
    ASSERT_TRUE(eventually([&] { return lines_with(dir.file("log"), "start").size() >= 1; }, 10s));
    w->signal(SIGTERM);
    ASSERT_EQ(w->wait(10s), 0);
    auto finished = lines_with(dir.file("log"), "done").size();
    EXPECT_EQ(finished, lines_with(dir.file("log"), "start").size());  // nothing cut short
    auto s = stats_of(*broker, "q");
    EXPECT_EQ(s.in_flight, 0);
    EXPECT_EQ(std::size_t(s.ready), 6 - finished);  // handed back at once, not after a lease

    auto w2 = start_worker(dir, url, 2, 30000, 10000);
    for (auto& id : *ids) {
        auto r = client.wait(id, 20s);
        ASSERT_TRUE(r);
        EXPECT_EQ(r->state, TaskState::success);
    }
    for (auto& [id, count] : count_by_id(lines_with(dir.file("log"), "start")))
        EXPECT_EQ(count, 1) << id;
}

TEST(SqliteProcesses, TaskStillRunningAfterTheGracePeriodIsHandedBack) {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    auto broker = *Broker::open(url);
    Client client(broker);
    auto id = client.enqueue("test.sleep", {30000}, Json::object(), {.queue = "q"});
    auto w = start_worker(dir, url, 1, 30000, 300);
    ASSERT_TRUE(eventually([&] { return lines_with(dir.file("log"), "start").size() == 1; }, 10s));
    auto t0 = std::chrono::steady_clock::now();
    w->signal(SIGTERM);
    ASSERT_EQ(w->wait(10s), 0);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    auto s = stats_of(*broker, "q");
    EXPECT_EQ(s.ready, 1);
    EXPECT_EQ(s.in_flight, 0);
    EXPECT_EQ(client.result(*id)->state, TaskState::pending);
}

TEST(SqliteProcesses, MalformedMessageIsDeadLetteredAndTheWorkerCarriesOn) {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    auto broker = *Broker::open(url);
    Client client(broker);
    auto w = start_worker(dir, url, 2, 30000, 5000);
    std::vector<OutgoingMessage> bad(3, OutgoingMessage{.queue = "q"});
    bad[0].envelope.headers = {{"task", "test.noop"}, {"id", "no-content-type"}};
    bad[0].envelope.body = "[[1],{},{}]";
    bad[1].envelope.content_type = "application/json";
    bad[1].envelope.headers = {{"task", "test.noop"}, {"id", "kwargs-list"}};
    bad[1].envelope.body = "[[1],[],{}]";
    bad[2].envelope.content_type = "application/json";
    bad[2].envelope.headers = {{"task", "test.noop"}, {"id", "bad-utf8"}};
    bad[2].envelope.body = "[[\"\xc3\x28\"],{},{}]";
    ASSERT_TRUE(broker->publish(bad));
    auto good = client.enqueue("test.noop", {"after"}, Json::object(), {.queue = "q"});
    auto r = client.wait(*good, 10s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->result, "after");
    ASSERT_TRUE(eventually([&] { return stats_of(*broker, "q").dead == 3; }, 10s));
    std::map<std::string, std::string> reasons;
    auto dead = broker->dead_letters("q", 10);
    for (auto& d : *dead) reasons[d.message_id] = d.reason;
    EXPECT_NE(reasons["no-content-type"].find("no content_type"), std::string::npos);
    EXPECT_NE(reasons["kwargs-list"].find("kwargs"), std::string::npos);
    EXPECT_NE(reasons["bad-utf8"].find("UTF-8"), std::string::npos);
    EXPECT_FALSE(w->wait(0ms));  // still running
}
