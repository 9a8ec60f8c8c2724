// Rate and concurrency limits across the fleet on RabbitMQ, kept in the Redis result backend:
// several real worker processes on the shared node, a worker SIGKILLed while it holds slots,
// limits per key, and what the counts say. Each test has a Redis database of its own (the
// limits of a task name are the fleet's, and every test here limits test.timed).

#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <set>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "core/codec.hpp"
#include "integration/helpers.hpp"
#include "support/marks.hpp"
#include "support/process.hpp"
#include "support/queue_stats.hpp"
#include "support/rabbitmq.hpp"
#include "support/redis.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using namespace itest;
using testsupport::eventually;
using testsupport::lines_with;
using testsupport::marks;
using testsupport::most_at_once;
using testsupport::Process;
using testsupport::TempDir;
using testsupport::unique_name;

namespace {

/// Worker processes sharing the shared node and Redis database `db`, on a queue of their own.
struct Fleet {
    TempDir dir;
    std::string queue = unique_name("limits");
    std::string redis_port;
    std::string db;
    std::string url;
    std::string log = dir.file("log");
    std::shared_ptr<Broker> broker;
    std::unique_ptr<Client> client;
    std::vector<std::unique_ptr<Process>> workers;

    Fleet(int database, const std::string& task_table) : db(std::to_string(database)) {
        auto redis = testsupport::shared_redis_url();  // redis://127.0.0.1:PORT/0
        auto at = redis.rfind(':');
        redis_port = redis.substr(at + 1, redis.rfind('/') - at - 1);
        auto [rc, out] =
            testsupport::run({"redis-cli", "-p", redis_port, "-n", db, "FLUSHDB"}, {}, {}, 10s);
        EXPECT_EQ(rc, 0) << out;
        url = testsupport::shared_rabbitmq_url() + "?results=" + redis.substr(0, redis.rfind('/')) +
              "/" + db;
        broker = open_with(queues({queue}), url);
        client = std::make_unique<Client>(broker);
        testsupport::write_file(dir.file("conveyor.toml"), task_table);
    }
    ~Fleet() {
        for (auto& w : workers) w->signal(SIGKILL);  // what they hold goes back to the queue
        for (auto& w : workers) (void)w->wait(20s);
    }
    Process& start(int concurrency, int lease_ms = 30000) {
        workers.push_back(testsupport::timed_worker(CONVEYOR_TEST_WORKER, dir, url, queue,
                                                    concurrency, lease_ms, log));
        return *workers.back();
    }
    void timed(int n, int sleep_ms, const std::string& key = {}) {
        auto ids =
            client->enqueue_many(testsupport::timed_tasks(n, sleep_ms, key), {.queue = queue});
        ASSERT_TRUE(ids) << ids.error().message;
    }
    /// Waits until every worker has set its limits (it logs them as it starts).
    void started() {
        ASSERT_TRUE(eventually(
            [&] {
                auto l = broker->limits();
                return l && !l->empty();
            },
            20s))
            << out();
    }
    std::size_t done() const { return marks(log, "done").size(); }
    std::string out() const { return testsupport::read_file(dir.file("worker.out")); }
};

}  // namespace

TEST(AmqpLimits, TwoHundredTasksAtTwentyASecondOverThreeWorkerProcessesTakeTenSeconds) {
    Fleet f(1, "[[task]]\nname = \"test.timed\"\nrate_limit = \"20/s\"\n");
    for (int i = 0; i < 3; ++i) f.start(4);
    f.started();
    f.timed(200, 0);
    // A task of another name is not held up behind them.
    ASSERT_TRUE(
        f.client->enqueue("test.noop", Json::array({1}), Json::object(), {.queue = f.queue}));
    ASSERT_TRUE(eventually(
        [&] {
            for (auto& l : lines_with(f.log, "done "))
                if (std::count(l.begin(), l.end(), ' ') == 3) return true;  // test.noop's
            return false;                                                   // (5 fields: timed)
        },
        5s))
        << f.out();
    EXPECT_LT(f.done(), 100u) << "the other task waited behind the limited ones";
    // While they wait, the limit counts them: in the broker, not in a worker.
    auto limits = f.broker->limits();
    ASSERT_TRUE(limits && limits->size() == 1);
    EXPECT_EQ((*limits)[0].limit.rate, 20);
    EXPECT_GT((*limits)[0].waiting, 50);
    ASSERT_TRUE(eventually([&] { return f.done() >= 200; }, 40s)) << f.out();
    auto starts = marks(f.log, "start");
    ASSERT_EQ(starts.size(), 200u);
    testsupport::expect_two_hundred_at_twenty(starts);
    // The handlers start when their tasks are handed over (here threads are free): a task
    // whose start was reserved is held until then, not started at once.
    std::vector<std::int64_t> began;
    for (auto& m : starts) began.push_back(m.us);
    std::sort(began.begin(), began.end());
    int most_began = testsupport::most_in_a_second(began);
    std::printf("handlers: at most %d started in any second\n", most_began);
    // None starts before its reserved start (the limit's clock and the worker's are this
    // host's; a few ms for reading them)...
    for (auto& m : starts) EXPECT_GE(m.us, m.taken - 5000) << m.id;
    // ...so a second holds about the rate: a worker delayed a few hundred ms on a loaded host
    // hands its held tasks over together, one second's worth and that delay's (measured: 24
    // once, in a clean-clone run with the sanitizer builds beside it; 30 and more in the first
    // second without the hold).
    EXPECT_LE(most_began, 28);
    EXPECT_GT(double(began.back() - began.front()) / 1e6, 9.95 * 0.9);
    ASSERT_TRUE(eventually(
        [&] {
            auto l = f.broker->limits();
            return l && l->size() == 1 && (*l)[0].waiting == 0;
        },
        5s));
}

TEST(AmqpLimits, MaxConcurrencyTwoOverThreeWorkersOfFourNeverRunsThree) {
    Fleet f(2, "[[task]]\nname = \"test.timed\"\nmax_concurrency = 2\n");
    for (int i = 0; i < 3; ++i) f.start(4);
    f.started();
    f.timed(16, 300);
    ASSERT_TRUE(eventually(
        [&] {
            auto l = f.broker->limits();
            return l && l->size() == 1 && (*l)[0].waiting > 0 && (*l)[0].running > 0;
        },
        10s));
    // Redis forgets its scripts (as after a restart) while they wait: workers ask by digest,
    // and send the script again when Redis does not know it.
    auto [rc, flushed] =
        testsupport::run({"redis-cli", "-p", f.redis_port, "SCRIPT", "FLUSH"}, {}, {}, 10s);
    EXPECT_EQ(rc, 0) << flushed;
    auto limits = *f.broker->limits();
    EXPECT_EQ(limits[0].limit.max_concurrency, 2);
    EXPECT_LE(limits[0].running, 2);
    // They wait in the broker, in their queue's wait queue, which `conveyor queues` counts as
    // LIMITED in the queue.
    EXPECT_TRUE(
        eventually([&] { return testsupport::stats_of(*f.broker, f.queue).limited > 0; }, 5s));
    ASSERT_TRUE(eventually([&] { return f.done() >= 16; }, 40s)) << f.out();
    auto starts = marks(f.log, "start"), dones = marks(f.log, "done");
    EXPECT_EQ(most_at_once(starts, dones), 2);
    std::set<long> pids;
    for (auto& m : starts) pids.insert(m.pid);
    EXPECT_GE(pids.size(), 2u);
    // A freed slot wakes a waiting task at once: the i-th start comes soon after the
    // (i-2)-th task is done, not after a poll (one a second, which would make the median gap
    // about half a second).
    auto by_time = [](auto& a, auto& b) { return a.us < b.us; };
    std::sort(starts.begin(), starts.end(), by_time);
    std::sort(dones.begin(), dones.end(), by_time);
    std::vector<std::int64_t> gaps;
    for (std::size_t i = 2; i < starts.size() && i - 2 < dones.size(); ++i)
        gaps.push_back(starts[i].us - dones[i - 2].us);
    ASSERT_EQ(gaps.size(), 14u);
    std::sort(gaps.begin(), gaps.end());
    std::printf("from a slot freed to the next start: median %.1f ms, most %.1f ms\n",
                double(gaps[gaps.size() / 2]) / 1e3, double(gaps.back()) / 1e3);
    EXPECT_LT(gaps[gaps.size() / 2], 200000);
    // Every slot given back: nothing runs or waits under the limit any more.
    ASSERT_TRUE(eventually(
        [&] {
            auto l = f.broker->limits();
            return l && l->size() == 1 && (*l)[0].running == 0 && (*l)[0].waiting == 0;
        },
        5s));
}

TEST(AmqpLimits, AWorkerKilledWhileHoldingSlotsLowersCapacityOnlyForItsLease) {
    Fleet f(3, "[[task]]\nname = \"test.timed\"\nmax_concurrency = 2\n");
    auto& first = f.start(4, 1000);
    f.started();
    f.timed(2, 30000);  // both slots, for far longer than the test
    ASSERT_TRUE(eventually([&] { return marks(f.log, "start").size() == 2; }, 10s)) << f.out();
    f.start(4, 1000);
    first.signal(SIGKILL);
    auto killed_at = std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    // RabbitMQ hands the killed worker's two tasks to the other worker at once; they run once
    // the dead worker's slots lapse with its lease (1 s) and they ask again (each second).
    ASSERT_TRUE(eventually([&] { return marks(f.log, "start").size() >= 4; }, 10s)) << f.out();
    auto starts = marks(f.log, "start");
    std::sort(starts.begin(), starts.end(), [](auto& a, auto& b) { return a.us < b.us; });
    for (auto& m : starts)
        std::printf("start %s pid %ld at %+.3f s\n", m.id.c_str(), m.pid,
                    double(m.us - killed_at) / 1e6);
    // ... and not before: the dead worker's slots counted until their lease (renewed every
    // third of it) ran out, so never more than two ran.
    EXPECT_GT(starts[2].us - killed_at, 600000);
    EXPECT_LT(starts[2].us - killed_at, 3500000);
    EXPECT_LT(starts[3].us - killed_at, 3500000);
    auto limits = *f.broker->limits();
    EXPECT_EQ(limits[0].running, 2);  // the dead worker's slots are gone, the new runs hold two
}

TEST(AmqpLimits, PerKeyEachKeyHasItsOwnLimit) {
    Fleet f(4,
            "[[task]]\nname = \"test.timed\"\nmax_concurrency = 1\nlimit_key = \"kwargs.key\"\n");
    for (int i = 0; i < 2; ++i) f.start(4);
    f.started();
    for (auto key : {"a", "b", "c"}) f.timed(3, 200, key);
    ASSERT_TRUE(eventually([&] { return f.done() >= 9; }, 30s)) << f.out();
    auto starts = marks(f.log, "start"), dones = marks(f.log, "done");
    for (auto key : {"a", "b", "c"}) EXPECT_EQ(most_at_once(starts, dones, key), 1) << key;
    EXPECT_GE(most_at_once(starts, dones), 2) << "different keys run side by side";
}

TEST(AmqpLimits, ALimitSetWhileTasksWaitAppliesAndWithoutRedisASentenceSaysWhatIsNeeded) {
    Fleet f(5, "[[task]]\nname = \"test.timed\"\nrate_limit = \"10/s\"\n");
    f.start(4);
    f.started();
    f.timed(30, 0);
    ASSERT_TRUE(eventually([&] { return f.done() >= 5; }, 10s)) << f.out();
    // `conveyor limits set` (the same call) slows the rate while the rest wait for the starts
    // reserved for them: they come back, find another rate and take new starts under it.
    ASSERT_TRUE(f.broker->set_limit({.task = "test.timed", .rate = 2}));
    auto changed = std::chrono::duration_cast<std::chrono::microseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
    ASSERT_TRUE(eventually([&] { return f.done() >= 30; }, 30s))
        << f.out() << f.done() << " done; " << limit_json(f.broker->limits()->at(0)).dump();
    std::vector<std::int64_t> later;  // once the held ones (reserved within 1.5 s) have run
    for (auto& m : marks(f.log, "start"))
        if (m.taken > changed + 2500000) later.push_back(m.taken);
    std::sort(later.begin(), later.end());
    ASSERT_GE(later.size(), 5u);
    for (std::size_t i = 1; i < later.size(); ++i)
        EXPECT_GE(later[i] - later[i - 1], 450000) << "start " << i << " after the change";
    // Removed, the limit is gone from the list.
    ASSERT_TRUE(f.broker->set_limit({.task = "test.timed"}));
    EXPECT_TRUE(f.broker->limits()->empty());
    // Without the Redis backend: one sentence, and nothing to remove is no error.
    auto plain = open_with(queues({f.queue}));
    auto r = plain->set_limit({.task = "test.timed", .rate = 5});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::invalid_argument);
    EXPECT_NE(r.error().message.find("kept in the Redis result backend"), std::string::npos)
        << r.error().message;
    EXPECT_EQ(r.error().message.find("guest:guest"), std::string::npos) << "no password shown";
    EXPECT_TRUE(plain->set_limit({.task = "test.timed"}));
    EXPECT_TRUE(plain->limits()->empty());
}

TEST(AmqpLimits, ForgedLimitHeadersNeitherStopAWorkerNorSkipTheWait) {
    Fleet f(6, "[[task]]\nname = \"test.timed\"\nrate_limit = \"2/s\"\nmax_concurrency = 1\n");
    auto& worker = f.start(4);
    f.started();
    // Anyone may write these headers: the rate a start was reserved under (right, of the
    // wrong type, out of range) and the count of waits for a slot.
    std::vector<Json> rates = {2, 2.0, "2", Json::object(), 1e300, -1, Json::array({2})};
    std::vector<Json> waits = {"x", -5, 1e300, std::int64_t(1) << 62, Json::object(), 3, 0};
    std::vector<OutgoingMessage> msgs;
    for (std::size_t i = 0; i < rates.size(); ++i) {
        OutgoingMessage m;
        m.queue = f.queue;
        m.envelope = codec::encode(
            TaskMessage{.id = unique_name("forged"), .name = "test.timed", .args = {700}});
        m.envelope.headers["x-conveyor-limit-rate"] = rates[i];
        m.envelope.headers["x-conveyor-limit-waits"] = waits[i];
        msgs.push_back(std::move(m));
    }
    ASSERT_TRUE(f.broker->publish(msgs));
    ASSERT_TRUE(eventually([&] { return f.done() >= rates.size(); }, 40s)) << f.out();
    // Every one ran, one at a time (the ones that found the slot taken read the count of
    // waits), and still 500 ms apart: a reserved start is looked up in Redis, not believed.
    EXPECT_EQ(most_at_once(marks(f.log, "start"), marks(f.log, "done")), 1);
    std::vector<std::int64_t> t;
    for (auto& m : marks(f.log, "start")) t.push_back(m.taken);
    std::sort(t.begin(), t.end());
    for (std::size_t i = 1; i < t.size(); ++i) EXPECT_GE(t[i] - t[i - 1], 499000) << i;
    EXPECT_FALSE(worker.wait(0ms)) << f.out();
}

TEST(AmqpLimits, AFetchReturnsNoMoreThanItAskedForWhenLimitedTasksArriveTogether) {
    Fleet f(8, "");
    ASSERT_TRUE(f.broker->set_limit({.task = "test.timed", .max_concurrency = 100}));
    f.timed(20, 0);
    // They arrive in one read and are admitted in one round trip to Redis; each fetch still
    // returns at most what it asked for, and the rest come with the next.
    auto consumer = *f.broker->consume({.queues = {f.queue}, .prefetch = 50});
    std::set<std::string> ids;
    std::size_t most = 0;
    EXPECT_TRUE(eventually(
        [&] {
            auto got = consumer->fetch(3, 200ms);
            if (!got) return false;
            most = std::max(most, got->size());
            for (auto& d : *got) ids.insert(d.message_id);
            return ids.size() >= 20;
        },
        15s));
    EXPECT_EQ(ids.size(), 20u);
    EXPECT_LE(most, 3u);
    EXPECT_EQ(f.broker->limits()->at(0).running, 20);  // each holds its slot until settled
}

TEST(AmqpLimits, AFairQueueIsRefusedOnRabbitMqWithASentenceSayingWhatIsPossible) {
    auto b = Broker::open(testsupport::shared_rabbitmq_url());
    ASSERT_TRUE(b) << b.error().message;
    Topology t;
    t.queues.push_back(QueueSpec{.name = unique_name("fair"), .fair_key = "kwargs.tenant"});
    auto ok = (*b)->set_topology(t);
    ASSERT_FALSE(ok);
    EXPECT_EQ(ok.error().code, Errc::invalid_argument);
    EXPECT_NE(ok.error().message.find("needs the sqlite engine"), std::string::npos)
        << ok.error().message;
    EXPECT_NE(ok.error().message.find("ordered queue (partitions)"), std::string::npos)
        << ok.error().message;
}
