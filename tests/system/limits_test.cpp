// Rate and concurrency limits across the fleet on the sqlite engine: several real worker
// processes sharing one file, a worker SIGKILLed while it holds slots, limits per key, limits
// changed while tasks wait, and what the counts say.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/config.hpp"
#include "conveyor/engine.hpp"
#include "support/marks.hpp"
#include "support/process.hpp"
#include "support/queue_stats.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::eventually;
using testsupport::lines_with;
using testsupport::Mark;
using testsupport::marks;
using testsupport::most_at_once;
using testsupport::Process;
using testsupport::stats_of;
using testsupport::TempDir;

namespace {

struct Fleet {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    std::string log = dir.file("log");
    std::shared_ptr<Broker> broker = *Broker::open(url);
    Client client{broker};
    std::vector<std::unique_ptr<Process>> workers;

    explicit Fleet(const std::string& task_table) {
        testsupport::write_file(dir.file("conveyor.toml"), task_table);
    }
    Process& start(int concurrency, int lease_ms = 30000) {
        workers.push_back(testsupport::timed_worker(CONVEYOR_TEST_WORKER, dir, url, "q",
                                                    concurrency, lease_ms, log));
        return *workers.back();
    }
    void timed(int n, int sleep_ms, const std::string& key = {}) {
        auto ids = client.enqueue_many(testsupport::timed_tasks(n, sleep_ms, key), {.queue = "q"});
        ASSERT_TRUE(ids) << ids.error().message;
    }
    std::size_t done() const { return marks(log, "done").size(); }
    std::string out() const { return testsupport::read_file(dir.file("worker.out")); }
};

}  // namespace

TEST(Limits, TwoHundredTasksAtTwentyASecondOverThreeWorkerProcessesTakeTenSeconds) {
    Fleet f("[[task]]\nname = \"test.timed\"\nrate_limit = \"20/s\"\n");
    for (int i = 0; i < 3; ++i) f.start(4);
    f.timed(200, 0);
    // A task of another name is not held up behind them.
    ASSERT_TRUE(f.client.enqueue("test.noop", Json::array({1}), Json::object(), {.queue = "q"}));
    ASSERT_TRUE(eventually([&] { return !lines_with(f.log, "done ").empty(); }, 10s));
    ASSERT_TRUE(eventually(
        [&] {
            for (auto& l : lines_with(f.log, "done "))
                if (std::count(l.begin(), l.end(), ' ') == 3) return true;  // test.noop's
            // (test.timed's have 5 fields.)
            return false;
        },
        3s))
        << f.out();
    EXPECT_LT(f.done(), 100u) << "the other task waited behind the limited ones";
    ASSERT_TRUE(eventually([&] { return f.done() >= 200; }, 30s)) << f.out();
    auto starts = marks(f.log, "start");
    ASSERT_EQ(starts.size(), 200u);
    testsupport::expect_two_hundred_at_twenty(starts);
    // Nothing waits any more.
    auto st = stats_of(*f.broker, "q");
    EXPECT_EQ(st.limited, 0);
    EXPECT_EQ(st.ready, 0);
}

TEST(Limits, MaxConcurrencyTwoOverThreeWorkersOfFourNeverRunsThree) {
    Fleet f("[[task]]\nname = \"test.timed\"\nmax_concurrency = 2\n");
    for (int i = 0; i < 3; ++i) f.start(4);
    f.timed(30, 100);
    ASSERT_TRUE(eventually(
        [&] {
            auto l = f.broker->limits();
            return l && l->size() == 1 && (*l)[0].waiting > 0;
        },
        10s));
    auto limits = *f.broker->limits();
    EXPECT_EQ(limits[0].limit.max_concurrency, 2);
    EXPECT_LE(limits[0].running, 2);
    EXPECT_GT(stats_of(*f.broker, "q").limited, 0);
    ASSERT_TRUE(eventually([&] { return f.done() >= 30; }, 30s)) << f.out();
    auto starts = marks(f.log, "start"), dones = marks(f.log, "done");
    EXPECT_EQ(most_at_once(starts, dones), 2);
    std::set<long> pids;
    for (auto& m : starts) pids.insert(m.pid);
    EXPECT_GE(pids.size(), 2u);
    // 30 tasks of 100 ms two at a time: at least 1.5 s.
    auto [lo, hi] = std::minmax_element(starts.begin(), starts.end(),
                                        [](auto& a, auto& b) { return a.us < b.us; });
    EXPECT_GE(hi->us - lo->us, 1400000);
}

TEST(Limits, AWorkerKilledWhileHoldingSlotsLowersCapacityOnlyForItsLease) {
    Fleet f("[[task]]\nname = \"test.timed\"\nmax_concurrency = 2\n");
    auto& first = f.start(4, 1000);
    f.timed(2, 30000);  // both slots, for far longer than the test
    ASSERT_TRUE(eventually([&] { return marks(f.log, "start").size() == 2; }, 10s)) << f.out();
    first.signal(SIGKILL);
    auto killed_at = std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    f.start(4, 1000);
    // The killed worker's two tasks run again on the other worker once their leases end (the
    // four short ones wait behind them: the slots are full again).
    ASSERT_TRUE(eventually([&] { return marks(f.log, "start").size() >= 4; }, 10s)) << f.out();
    auto starts = marks(f.log, "start");
    std::sort(starts.begin(), starts.end(), [](auto& a, auto& b) { return a.us < b.us; });
    // Capacity back to two within the lease (1 s) and a check period.
    EXPECT_LT(starts[2].us - killed_at, 2500000);
    EXPECT_LT(starts[3].us - killed_at, 2500000);
    // ... and never more than two: the killed worker's slots counted until its lease ended.
    auto dones = marks(f.log, "done");
    std::vector<Mark> after;
    for (auto& m : starts)
        if (m.us > killed_at) after.push_back(m);
    EXPECT_LE(most_at_once(after, dones), 2);
}

TEST(Limits, PerKeyEachKeyHasItsOwnLimit) {
    Fleet f("[[task]]\nname = \"test.timed\"\nmax_concurrency = 1\nlimit_key = \"kwargs.key\"\n");
    for (int i = 0; i < 3; ++i) f.start(4);
    for (auto key : {"a", "b", "c"}) f.timed(5, 100, key);
    ASSERT_TRUE(eventually([&] { return f.done() >= 15; }, 30s)) << f.out();
    auto starts = marks(f.log, "start"), dones = marks(f.log, "done");
    for (auto key : {"a", "b", "c"}) EXPECT_EQ(most_at_once(starts, dones, key), 1) << key;
    EXPECT_GE(most_at_once(starts, dones), 2) << "different keys run side by side";
}

TEST(Limits, TasksWaitInTheBrokerAndALimitChangedWhileTheyWaitAppliesToThem) {
    TempDir dir;
    auto broker = *Broker::open("sqlite://" + dir.file("c.db"));
    Client client(broker);
    ASSERT_TRUE(broker->set_limit({.task = "t", .max_concurrency = 1}));
    for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(client.enqueue("t", Json::array({i}), Json::object(), {.queue = "q"}));
    ASSERT_TRUE(client.enqueue("other", Json::array(), Json::object(), {.queue = "q"}));
    auto c = *broker->consume({.queues = {"q"}, .name = "test"});
    auto got = *c->fetch(10, 100ms);
    // One of t (the oldest) and the other task; three of t wait in the broker.
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[0].envelope.headers["argsrepr"], "(0,)");
    EXPECT_EQ(got[1].envelope.headers["task"], "other");
    auto st = stats_of(*broker, "q");
    EXPECT_EQ(st.limited, 3);
    EXPECT_EQ(st.ready, 0);
    auto l = *broker->limits();
    ASSERT_EQ(l.size(), 1u);
    EXPECT_EQ(l[0].waiting, 3);
    EXPECT_EQ(l[0].running, 1);
    EXPECT_TRUE(c->fetch(10, 50ms)->empty());
    // Settled: the next one, in order.
    std::vector<Settlement> acks = {{Settlement::Kind::ack, got[0].tag},
                                    {Settlement::Kind::ack, got[1].tag}};
    ASSERT_TRUE(c->settle(acks));
    auto next = *c->fetch(10, 500ms);
    ASSERT_EQ(next.size(), 1u);
    EXPECT_EQ(next[0].envelope.headers["argsrepr"], "(1,)");
    // The limit removed: the rest go at once.
    ASSERT_TRUE(broker->set_limit({.task = "t"}));
    auto rest = *c->fetch(10, 500ms);
    EXPECT_EQ(rest.size(), 2u);
    st = stats_of(*broker, "q");
    EXPECT_EQ(st.limited, 0);
    EXPECT_EQ(st.in_flight, 3);
    EXPECT_TRUE(broker->limits()->empty());
}

TEST(Limits, ARateLimitSpacesStartsAndWakesTheWaitingOnes) {
    TempDir dir;
    auto broker = *Broker::open("sqlite://" + dir.file("c.db"));
    Client client(broker);
    ASSERT_TRUE(broker->set_limit({.task = "t", .rate = 10}));  // one every 100 ms
    for (int i = 0; i < 5; ++i)
        ASSERT_TRUE(client.enqueue("t", Json::array({i}), Json::object(), {.queue = "q"}));
    auto c = *broker->consume({.queues = {"q"}, .name = "test"});
    std::vector<std::chrono::steady_clock::time_point> at;
    std::vector<std::string> order;
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (order.size() < 5 && std::chrono::steady_clock::now() < deadline) {
        auto got = *c->fetch(10, 200ms);
        for (auto& d : got) {
            at.push_back(std::chrono::steady_clock::now());
            order.push_back(d.envelope.headers["argsrepr"]);
            std::vector<Settlement> ack = {{Settlement::Kind::ack, d.tag}};
            ASSERT_TRUE(c->settle(ack));
        }
    }
    ASSERT_EQ(order, (std::vector<std::string>{"(0,)", "(1,)", "(2,)", "(3,)", "(4,)"}));
    for (std::size_t i = 1; i < at.size(); ++i) EXPECT_GE(at[i] - at[i - 1], 95ms) << i;
    EXPECT_LT(at.back() - at.front(), 1s);
}

TEST(Limits, HostileBodiesNeitherStopAWorkerNorSlipPastTheirLimit) {
    // A limit's and a fair queue's keys come from each message's body: bodies that are not JSON,
    // nest too deep, are not valid UTF-8, or hold keys of other types or of a megabyte. Each is
    // dead-lettered or runs under its key's limit; the worker carries on.
    Fleet f(
        "[[queue]]\nname = \"q\"\nfair_key = \"kwargs.customer\"\n"
        "[[task]]\nname = \"test.timed\"\nmax_concurrency = 1\nlimit_key = "
        "\"kwargs.customer\"\n");
    auto cfg = *load_config(f.dir.file("conveyor.toml"));
    ASSERT_TRUE(f.broker->set_topology(cfg.topology()));
    ASSERT_TRUE(f.broker->set_limit(
        {.task = "test.timed", .max_concurrency = 1, .key = "kwargs.customer"}));
    auto message = [](const std::string& id, std::string body) {
        Envelope e;
        e.content_type = "application/json";
        e.content_encoding = "utf-8";
        e.headers = Json{{"task", "test.timed"}, {"id", id}};
        e.body = std::move(body);
        return OutgoingMessage{.queue = "q", .task_id = id, .envelope = std::move(e)};
    };
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    const std::vector<std::pair<std::string, std::string>> malformed = {
        {"not-json", "{{{"},
        {"deep", R"([[], {"customer": )" + deep + "}, {}]"},
        {"kwargs-array", R"([[], [1, 2], {}])"},
        {"bad-utf8", "[[1], {\"customer\": \"\xff\xfe\"}, {}]"},
        {"null", "null"}};
    const std::vector<std::pair<std::string, std::string>> odd_keys = {
        {"key-object", R"([[1], {"customer": {"a": [1, 2]}}, {}])"},
        {"key-number", R"([[1], {"customer": 12345678901234567890123}, {}])"},
        {"key-megabyte", "[[1], {\"customer\": \"" + std::string(1u << 20, 'm') + "\"}, {}]"},
        {"no-key", R"([[1], {}, {}])"}};
    std::vector<OutgoingMessage> msgs;
    for (auto& [id, body] : malformed) msgs.push_back(message(id, body));
    for (auto& [id, body] : odd_keys) msgs.push_back(message(id, body));
    ASSERT_TRUE(f.broker->publish(msgs));
    // Well-formed tasks of one customer behind them: still one at a time.
    for (int i = 0; i < 3; ++i)
        ASSERT_TRUE(f.client.enqueue("test.timed", Json::array({50}),
                                     Json{{"customer", "c1"}, {"key", "c1"}}, {.queue = "q"}));
    auto& worker = f.start(4);
    ASSERT_TRUE(eventually([&] { return f.done() >= odd_keys.size() + 3; }, 30s)) << f.out();
    auto starts = marks(f.log, "start"), dones = marks(f.log, "done");
    EXPECT_EQ(most_at_once(starts, dones, "c1"), 1);
    std::set<std::string> ran;
    for (auto& m : dones) ran.insert(m.id);
    for (auto& [id, _] : odd_keys) EXPECT_TRUE(ran.contains(id)) << id;
    std::vector<DeadLetter> dead;
    ASSERT_TRUE(eventually(
        [&] {
            dead = *f.broker->dead_letters("q", 100);
            return dead.size() >= malformed.size();
        },
        10s));
    EXPECT_EQ(dead.size(), malformed.size());
    for (auto& d : dead) {
        EXPECT_FALSE(ran.contains(d.message_id)) << d.message_id;
        EXPECT_NE(d.reason.find("malformed message"), std::string::npos) << d.reason;
    }
    ASSERT_TRUE(eventually(
        [&] {
            auto st = stats_of(*f.broker, "q");
            return st.ready == 0 && st.limited == 0 && st.in_flight == 0;
        },
        10s));
    EXPECT_FALSE(worker.wait(0ms)) << "the worker is still running: " << f.out();
}

TEST(Limits, WhatCannotBeLimitedSaysSo) {
    auto memory = *Broker::open("memory://limits");
    auto r = memory->set_limit({.task = "t", .rate = 5});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::invalid_argument);
    EXPECT_NE(r.error().message.find("by RabbitMQ with the Redis result backend, not by memory://"),
              std::string::npos);
    EXPECT_TRUE(memory->set_limit({.task = "t"}));  // no limit: nothing to remove
    TempDir dir;
    auto sqlite = *Broker::open("sqlite://" + dir.file("c.db"));
    EXPECT_FALSE(sqlite->set_limit({.task = "t", .rate = 5, .key = "body.x"}));
    EXPECT_FALSE(sqlite->set_limit({.task = "", .rate = 5}));
    EXPECT_FALSE(sqlite->set_limit({.task = "t", .max_concurrency = -1}));
}

namespace {

Topology fair_topology() {
    Topology t;
    t.queues.push_back(QueueSpec{.name = "q", .fair_key = "kwargs.tenant"});
    return t;
}

/// Enqueues `n` tasks of `tenant` to the fair queue.
void tenant_tasks(Client& client, const std::string& tenant, int n) {
    std::vector<TaskMessage> tasks;
    for (int i = 0; i < n; ++i)
        tasks.push_back(
            TaskMessage{.name = "t", .args = {i}, .kwargs = {{"tenant", tenant}, {"key", tenant}}});
    auto ids = client.enqueue_many(std::move(tasks), {.queue = "q"});
    ASSERT_TRUE(ids) << ids.error().message;
}

/// Takes tasks one at a time, acking each, and says whose they were.
std::string take_tenants(Consumer& c, std::size_t n) {
    std::string order;
    while (order.size() < n) {
        auto got = c.fetch(1, 500ms);
        if (!got || got->empty()) break;
        order += (*got)[0].envelope.body.find("\"tenant\":\"a\"") != std::string::npos   ? "a"
                 : (*got)[0].envelope.body.find("\"tenant\":\"b\"") != std::string::npos ? "b"
                                                                                         : "c";
        std::vector<Settlement> ack = {{Settlement::Kind::ack, (*got)[0].tag}};
        EXPECT_TRUE(c.settle(ack));
    }
    return order;
}

}  // namespace

TEST(FairQueues, KeysTakeTurnsAndAKeyThatWasIdleJoinsAtTheCurrentTurn) {
    TempDir dir;
    auto broker = *Broker::open("sqlite://" + dir.file("c.db"));
    ASSERT_TRUE(broker->set_topology(fair_topology()));
    Client client(broker);
    tenant_tasks(client, "a", 5);
    tenant_tasks(client, "b", 5);
    tenant_tasks(client, "c", 1);
    auto c = *broker->consume({.queues = {"q"}, .name = "test"});
    EXPECT_EQ(take_tenants(*c, 6), "abcaba");
    // c comes back after an idle spell: its task takes the next turn, not the turns it missed.
    tenant_tasks(client, "c", 3);
    EXPECT_EQ(take_tenants(*c, 8), "babcabcc");
}

TEST(FairQueues, APublisherLearnsThatAQueueBecameFair) {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    auto early = *Broker::open(url);
    Client client(early);
    tenant_tasks(client, "a", 1);  // the queue is not fair yet: this publisher knows it so
    auto c = *early->consume({.queues = {"q"}, .name = "test"});
    EXPECT_EQ(take_tenants(*c, 1), "a");
    auto other = *Broker::open(url);
    ASSERT_TRUE(other->set_topology(fair_topology()));
    tenant_tasks(client, "a", 3);
    tenant_tasks(client, "b", 1);
    EXPECT_EQ(take_tenants(*c, 4), "abaa");
    // And that it is not fair any more.
    ASSERT_TRUE(other->set_topology(Topology{.queues = {QueueSpec{.name = "q"}}}));
    tenant_tasks(client, "a", 2);
    tenant_tasks(client, "b", 1);
    EXPECT_EQ(take_tenants(*c, 3), "aab");
}

TEST(FairQueues, ATenantsBurstOfTenThousandDoesNotHoldUpAnotherTenantsTask) {
    Fleet f("[[queue]]\nname = \"q\"\nfair_key = \"kwargs.key\"\n");
    auto cfg = *load_config(f.dir.file("conveyor.toml"));
    ASSERT_TRUE(f.broker->set_topology(cfg.topology()));
    f.timed(10000, 0, "burst");
    f.timed(1, 0, "single");
    f.start(4);  // takes up to 16 (its prefetch) at a time
    ASSERT_TRUE(eventually([&] { return f.done() >= 10001; }, 60s)) << f.out();
    auto starts = marks(f.log, "start");
    std::sort(starts.begin(), starts.end(), [](auto& a, auto& b) { return a.us < b.us; });
    std::size_t at = 0;
    while (at < starts.size() && starts[at].key != "single") ++at;
    ASSERT_LT(at, starts.size());
    EXPECT_LT(at, 32u) << "within the first two batches";
}

TEST(FairQueues, WhatCannotBeFairSaysSo) {
    auto memory = *Broker::open("memory://fair");
    auto r = memory->set_topology(fair_topology());
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("fair queue 'q' (fair_key) needs the sqlite engine"),
              std::string::npos)
        << r.error().message;
}
