// Unique tasks on the sqlite engine: one task per key while it waits or runs, across
// connections, through retries and a lapsed lease, and for a period when asked.

#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/history.hpp"
#include "support/process.hpp"
#include "support/queue_stats.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::stats_of;
using testsupport::TempDir;

namespace {

struct UniqueFixture {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    std::shared_ptr<Broker> broker = *Broker::open(url);
    Client client{broker};

    Result<std::string> unique(const std::string& key,
                               std::optional<std::chrono::milliseconds> hold = {}) {
        return client.enqueue("t", Json::array({1}), Json::object(),
                              {.queue = "q", .unique_key = key, .unique_for = hold});
    }
    std::unique_ptr<Consumer> consumer(std::chrono::milliseconds lease = 30s) {
        auto c = broker->consume({.queues = {"q"}, .lease = lease, .name = "test"});
        EXPECT_TRUE(c);
        return std::move(*c);
    }
};

std::string holder_id(const Result<std::string>& r) {
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : std::string();
}

}  // namespace

TEST(UniqueTasks, AThousandConcurrentEnqueuesWithOneKeyYieldOneTask) {
    UniqueFixture f;
    // 8 threads, each with a connection of its own (as 8 processes would have), 125 each.
    std::vector<std::vector<std::string>> ids(8);
    std::vector<std::jthread> threads;
    for (int t = 0; t < 8; ++t)
        threads.emplace_back([&, t] {
            auto broker = Broker::open(f.url);
            ASSERT_TRUE(broker);
            Client client(*broker);
            for (int i = 0; i < 125; ++i) {
                auto id = client.enqueue("t", Json::array({t, i}), Json::object(),
                                         {.queue = "q", .unique_key = "order-7"});
                ASSERT_TRUE(id) << id.error().message;
                ids[std::size_t(t)].push_back(*id);
            }
        });
    threads.clear();
    std::set<std::string> distinct;
    std::size_t total = 0;
    for (auto& v : ids) {
        distinct.insert(v.begin(), v.end());
        total += v.size();
    }
    EXPECT_EQ(total, 1000u);
    EXPECT_EQ(distinct.size(), 1u);
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 1);
    // Another key is another task.
    EXPECT_NE(holder_id(f.unique("order-8")), *distinct.begin());
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 2);
}

TEST(UniqueTasks, TheKeyStaysThroughRetriesAndALapsedLeaseAndGoesWhenTheTaskEnds) {
    UniqueFixture f;
    auto first = holder_id(f.unique("k"));
    auto c = f.consumer(300ms);
    auto got = c->fetch(1, 0ms);
    ASSERT_EQ(got->size(), 1u);
    EXPECT_EQ(holder_id(f.unique("k")), first) << "running";
    // A retry later: delayed, still held.
    std::vector<Settlement> retry = {{.kind = Settlement::Kind::retry,
                                      .tag = (*got)[0].tag,
                                      .envelope = (*got)[0].envelope,
                                      .not_before = SystemClock::now() + 400ms}};
    ASSERT_TRUE(c->settle(retry));
    EXPECT_EQ(stats_of(*f.broker, "q").delayed, 1);
    EXPECT_EQ(holder_id(f.unique("k")), first) << "delayed for its retry";
    // Taken again by a worker that then stops answering (killed): its lease runs out and the
    // task waits again, still holding the key; nothing leaks.
    auto lost = c->fetch(1, 2s);
    ASSERT_EQ(lost->size(), 1u);
    std::this_thread::sleep_for(400ms);
    EXPECT_EQ(holder_id(f.unique("k")), first) << "its worker's lease ran out";
    auto other = f.consumer();
    auto again = other->fetch(1, 2s);
    ASSERT_EQ(again->size(), 1u);
    EXPECT_EQ((*again)[0].message_id, first);
    std::vector<Settlement> done = {{.kind = Settlement::Kind::ack, .tag = (*again)[0].tag}};
    ASSERT_TRUE(other->settle(done));
    // Succeeded: the key is free.
    auto second = holder_id(f.unique("k"));
    EXPECT_NE(second, first);
    // Dead-lettered: free too.
    auto d = other->fetch(1, 2s);
    ASSERT_EQ(d->size(), 1u);
    std::vector<Settlement> dead = {
        {.kind = Settlement::Kind::dead_letter, .tag = (*d)[0].tag, .reason = "no"}};
    ASSERT_TRUE(other->settle(dead));
    auto third = holder_id(f.unique("k"));
    EXPECT_NE(third, second);
    // Revoked while waiting: free.
    auto history = f.broker->history();
    ASSERT_TRUE(history);
    ASSERT_TRUE((*history)->revoke(third));
    auto fourth = holder_id(f.unique("k"));
    EXPECT_NE(fourth, third);
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 1);
}

TEST(UniqueTasks, UniqueForHoldsTheKeyForThePeriodEvenOnceTheTaskEnded) {
    UniqueFixture f;
    auto first = holder_id(f.unique("k", 1500ms));
    auto c = f.consumer();
    auto got = c->fetch(1, 0ms);
    ASSERT_EQ(got->size(), 1u);
    std::vector<Settlement> done = {{.kind = Settlement::Kind::ack, .tag = (*got)[0].tag}};
    ASSERT_TRUE(c->settle(done));
    EXPECT_EQ(holder_id(f.unique("k", 1500ms)), first) << "within the period";
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 0);
    std::this_thread::sleep_for(1600ms);
    auto second = holder_id(f.unique("k", 1500ms));
    EXPECT_NE(second, first);
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 1);
}

TEST(UniqueTasks, WhatCannotBeUniqueSaysSo) {
    UniqueFixture f;
    auto many = f.client.enqueue_many({TaskMessage{.name = "t"}, TaskMessage{.name = "t"}},
                                      {.queue = "q", .unique_key = "k"});
    ASSERT_FALSE(many);
    EXPECT_EQ(many.error().code, Errc::invalid_argument);
    auto no_key = f.client.enqueue("t", Json::array(), Json::object(),
                                   {.queue = "q", .unique_for = std::chrono::seconds(5)});
    ASSERT_FALSE(no_key);
    EXPECT_NE(no_key.error().message.find("unique_key"), std::string::npos);
    auto memory = Broker::open("memory://unique");
    ASSERT_TRUE(memory);
    Client m(*memory);
    auto r = m.enqueue("t", Json::array(), Json::object(), {.queue = "q", .unique_key = "k"});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::invalid_argument);
    EXPECT_NE(r.error().message.find("sqlite"), std::string::npos) << r.error().message;
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 0);
}
