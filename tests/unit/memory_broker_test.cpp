#include <gtest/gtest.h>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "core/codec.hpp"

using namespace conveyor;
using namespace std::chrono_literals;

namespace {

std::shared_ptr<Broker> fresh(const std::string& name) {
    auto b = Broker::open("memory://" + name);
    EXPECT_TRUE(b);
    return *b;
}

}  // namespace

TEST(MemoryBroker, DeliversByPriorityThenFifo) {
    auto b = fresh("prio");
    Client c(b);
    EnqueueOptions o;
    o.queue = "q";
    std::vector<std::string> order;
    for (int p : {1, 9, 5, 9}) {
        o.priority = p;
        auto id = c.enqueue("t", Json::array({p}), Json::object(), o);
        ASSERT_TRUE(id);
        order.push_back(*id);
    }
    auto cons = b->consume({.queues = {"q"}});
    ASSERT_TRUE(cons);
    auto got = (*cons)->fetch(10, 0ms);
    ASSERT_TRUE(got);
    ASSERT_EQ(got->size(), 4u);
    EXPECT_EQ((*got)[0].message_id, order[1]);
    EXPECT_EQ((*got)[1].message_id, order[3]);
    EXPECT_EQ((*got)[2].message_id, order[2]);
    EXPECT_EQ((*got)[3].message_id, order[0]);
}

TEST(MemoryBroker, DelayedMessagesWaitInTheBroker) {
    auto b = fresh("delay");
    Client c(b);
    EnqueueOptions o;
    o.queue = "q";
    o.countdown = 200ms;
    ASSERT_TRUE(c.enqueue("t", Json::array(), Json::object(), o));
    auto st = b->stats();
    ASSERT_TRUE(st);
    ASSERT_EQ(st->size(), 1u);
    EXPECT_EQ((*st)[0].delayed, 1);
    auto cons = b->consume({.queues = {"q"}});
    auto early = (*cons)->fetch(1, 0ms);
    EXPECT_TRUE(early->empty());
    auto t0 = std::chrono::steady_clock::now();
    auto later = (*cons)->fetch(1, 2s);
    ASSERT_EQ(later->size(), 1u);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 150ms);
}

TEST(MemoryBroker, DuplicateIdsAreDropped) {
    auto b = fresh("dup");
    Client c(b);
    EnqueueOptions o;
    o.queue = "q";
    o.id = "same";
    ASSERT_TRUE(c.enqueue("t", Json::array(), Json::object(), o));
    ASSERT_TRUE(c.enqueue("t", Json::array(), Json::object(), o));
    auto st = b->stats();
    EXPECT_EQ((*st)[0].ready, 1);
}

TEST(MemoryBroker, ConsumerDestroyedHandsBackItsDeliveries) {
    auto b = fresh("handback");
    Client c(b);
    EnqueueOptions o;
    o.queue = "q";
    ASSERT_TRUE(c.enqueue("t", Json::array(), Json::object(), o));
    {
        auto cons = b->consume({.queues = {"q"}});
        ASSERT_EQ((*cons)->fetch(1, 0ms)->size(), 1u);
        EXPECT_EQ((*b->stats())[0].in_flight, 1);
    }
    auto cons = b->consume({.queues = {"q"}});
    auto again = (*cons)->fetch(1, 0ms);
    ASSERT_EQ(again->size(), 1u);
    EXPECT_EQ((*again)[0].deliveries, 2);
}

TEST(MemoryBroker, DeadLettersKeepTheReasonAndReplay) {
    auto b = fresh("dlq");
    Client c(b);
    EnqueueOptions o;
    o.queue = "q";
    auto id = c.enqueue("t", Json::array(), Json::object(), o);
    auto cons = b->consume({.queues = {"q"}});
    auto got = (*cons)->fetch(1, 0ms);
    ASSERT_EQ(got->size(), 1u);
    Settlement s{.kind = Settlement::Kind::dead_letter, .tag = (*got)[0].tag, .reason = "bad card"};
    ASSERT_TRUE((*cons)->settle(std::span(&s, 1)));
    auto dl = b->dead_letters("q", 10);
    ASSERT_EQ(dl->size(), 1u);
    EXPECT_EQ((*dl)[0].reason, "bad card");
    EXPECT_EQ((*dl)[0].message_id, *id);
    EXPECT_EQ(*b->replay_dead("q", {}), 1u);
    EXPECT_EQ(b->dead_letters("q", 10)->size(), 0u);
    EXPECT_EQ((*cons)->fetch(1, 0ms)->size(), 1u);
}
