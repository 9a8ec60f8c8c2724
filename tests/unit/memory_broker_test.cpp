#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/worker.hpp"
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

TEST(MemoryBroker, AConsumerHandsBackWhatItHoldsAndNothingItSettledAfterManyTasks) {
    // What a consumer holds is kept as a list of what it was handed, compacted as tasks are
    // settled. After thousands settled, some handed back, taken again and then kept, a tag
    // settled twice and one of another consumer's settled too, it hands back exactly the
    // tasks it still holds, and the other consumer's stay its own.
    auto b = fresh("handback-many");
    Client c(b);
    EnqueueOptions o;
    o.queue = "q";
    std::vector<TaskMessage> tasks(5000);
    for (auto& t : tasks) t.name = "t";
    ASSERT_TRUE(c.enqueue_many(std::move(tasks), o));
    auto other = *b->consume({.queues = {"q"}, .prefetch = 5});
    auto theirs = other->fetch(5, 0ms);
    ASSERT_TRUE(theirs);
    ASSERT_EQ(theirs->size(), 5u);
    std::set<std::uint64_t> held;
    std::map<std::uint64_t, int> seen;  // deliveries of each tag to this consumer
    std::size_t acked = 0;
    {
        auto cons = *b->consume({.queues = {"q"}, .prefetch = 5000});
        for (int round = 0; round < 20; ++round) {
            auto got = cons->fetch(300, 0ms);
            ASSERT_TRUE(got);
            std::vector<Settlement> settle;
            for (auto& d : *got) {
                int n = ++seen[d.tag];
                // Every tenth is handed back once (it comes first in the next fetch) and then
                // kept, every seventh kept, the rest acknowledged.
                if (d.tag % 7 == 0 || (d.tag % 10 == 0 && n == 2)) {
                    held.insert(d.tag);
                    continue;
                }
                bool release = d.tag % 10 == 0 && n == 1;
                settle.push_back(
                    Settlement{release ? Settlement::Kind::release : Settlement::Kind::ack, d.tag});
                if (!release) ++acked;
            }
            if (!settle.empty()) settle.push_back(settle.front());                  // settled twice
            settle.push_back(Settlement{Settlement::Kind::ack, (*theirs)[0].tag});  // not ours
            ASSERT_TRUE(cons->settle(settle));
        }
        ASSERT_TRUE(std::ranges::any_of(seen, [](auto& s) { return s.second == 2; }));
        EXPECT_EQ((*b->stats())[0].in_flight, std::int64_t(held.size() + 5));
    }
    // Handed back once each: only the other consumer's are in flight.
    EXPECT_EQ((*b->stats())[0].in_flight, 5);
    std::vector<Settlement> done;
    for (auto& d : *theirs) done.push_back(Settlement{Settlement::Kind::ack, d.tag});
    ASSERT_TRUE(other->settle(done));
    EXPECT_EQ((*b->stats())[0].in_flight, 0);
    auto cons = *b->consume({.queues = {"q"}, .prefetch = 5000});
    std::set<std::uint64_t> back;
    std::size_t left = 0;
    for (;;) {
        auto got = cons->fetch(1000, 0ms);
        ASSERT_TRUE(got);
        if (got->empty()) break;
        left += got->size();
        for (auto& d : *got) {
            if (d.deliveries > 1) back.insert(d.tag);
        }
    }
    // Those it held at the end come back delivered once more (a hand-back is not a
    // delivery); none acknowledged comes back, and none is lost.
    EXPECT_EQ(back, held);
    EXPECT_EQ(left, 5000 - acked - 5);
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

TEST(MemoryBroker, TasksPublishedHereArePassedAsTheyAreAndEncodedOnlyWhenAsked) {
    auto b = fresh("objects");
    Client c(b);
    EnqueueOptions o;
    o.queue = "q";
    o.priority = 3;
    o.max_retries = 4;
    auto id = c.enqueue("orders.bill", Json::array({42, "x"}), Json{{"k", 1}}, o);
    ASSERT_TRUE(id);
    auto cons = b->consume({.queues = {"q"}});
    auto got = (*cons)->fetch(1, 0ms);
    ASSERT_EQ(got->size(), 1u);
    const Delivery& d = (*got)[0];
    ASSERT_TRUE(d.task);
    EXPECT_TRUE(d.envelope.body.empty());  // not encoded
    EXPECT_EQ(d.message_id, *id);
    EXPECT_EQ(d.task->id, *id);
    EXPECT_EQ(d.task->name, "orders.bill");
    EXPECT_EQ(d.task->args, Json::array({42, "x"}));
    EXPECT_EQ(d.task->kwargs, (Json{{"k", 1}}));
    EXPECT_EQ(d.task->priority, 3);
    EXPECT_EQ(d.task->max_retries, 4);
    // What a worker would have decoded from the message.
    auto round = codec::decode(codec::encode(*d.task));
    ASSERT_TRUE(round);
    EXPECT_EQ(round->root_id, d.task->root_id);
    EXPECT_EQ(round->correlation_id, d.task->correlation_id);
    EXPECT_EQ(d.task->root_id, *id);
    EXPECT_EQ(round->origin, d.task->origin);

    // A dead letter's listing shows the message, encoded when asked; replayed, the task goes
    // out as it is again.
    Settlement s{.kind = Settlement::Kind::dead_letter, .tag = d.tag, .reason = "bad card"};
    ASSERT_TRUE((*cons)->settle(std::span(&s, 1)));
    auto dl = b->dead_letters("q", 10);
    ASSERT_EQ(dl->size(), 1u);
    auto listed = codec::decode((*dl)[0].envelope);
    ASSERT_TRUE(listed);
    EXPECT_EQ(listed->name, "orders.bill");
    EXPECT_EQ(listed->args, Json::array({42, "x"}));
    EXPECT_EQ(*b->replay_dead("q", {}), 1u);
    auto again = (*cons)->fetch(1, 0ms);
    ASSERT_EQ(again->size(), 1u);
    ASSERT_TRUE((*again)[0].task);
    EXPECT_EQ((*again)[0].task->retries, 0);

    // A retry comes back as the worker's message (retries counted), and a dead letter of it
    // replays with its count reset.
    auto retried = *(*again)[0].task;
    retried.retries = 2;
    Settlement r{.kind = Settlement::Kind::retry,
                 .tag = (*again)[0].tag,
                 .envelope = codec::encode(retried)};
    ASSERT_TRUE((*cons)->settle(std::span(&r, 1)));
    auto third = (*cons)->fetch(1, 0ms);
    ASSERT_EQ(third->size(), 1u);
    EXPECT_FALSE((*third)[0].task);
    EXPECT_EQ(codec::decode((*third)[0].envelope)->retries, 2);
    Settlement dead{
        .kind = Settlement::Kind::dead_letter, .tag = (*third)[0].tag, .reason = "still bad"};
    ASSERT_TRUE((*cons)->settle(std::span(&dead, 1)));
    EXPECT_EQ(*b->replay_dead("q", {}), 1u);
    auto fourth = (*cons)->fetch(1, 0ms);
    ASSERT_EQ(fourth->size(), 1u);
    EXPECT_EQ(codec::decode((*fourth)[0].envelope)->retries, 0);
}

TEST(MemoryBroker, AcknowledgedTasksAreFreedAndTheirIdsTakenAgain) {
    auto b = fresh("freed");
    Client c(b);
    EnqueueOptions o{.queue = "q"};
    std::vector<std::string> ids;
    for (int i = 0; i < 300; ++i) {
        auto id = c.enqueue("t", Json::array({i}), Json::object(), o);
        ASSERT_TRUE(id);
        ids.push_back(*id);
    }
    auto cons = b->consume({.queues = {"q"}});
    auto got = (*cons)->fetch(300, 0ms);
    ASSERT_EQ(got->size(), 300u);
    std::vector<std::weak_ptr<const TaskMessage>> tasks;
    std::vector<Settlement> acks;
    for (auto& d : *got) {
        ASSERT_TRUE(d.task);
        tasks.push_back(d.task);
        acks.push_back(Settlement{.kind = Settlement::Kind::ack, .tag = d.tag});
    }
    got->clear();  // the engine's are the last references
    ASSERT_TRUE((*cons)->settle(acks));
    // Freed off this thread, soon.
    auto live = [&] { return std::ranges::count_if(tasks, [](auto& w) { return !w.expired(); }); };
    for (int i = 0; i < 2000 && live() > 0; ++i) std::this_thread::sleep_for(1ms);
    EXPECT_EQ(live(), 0);
    EXPECT_EQ((*b->stats())[0].ready, 0);
    // Acknowledged without a result kept: the same id may be published again, once.
    auto again = c.enqueue("t", Json::array({1}), Json::object(),
                           EnqueueOptions{.queue = "q", .id = ids[7]});
    ASSERT_TRUE(again);
    EXPECT_EQ(*again, ids[7]);
    auto twice = c.enqueue("t", Json::array({1}), Json::object(),
                           EnqueueOptions{.queue = "q", .id = ids[7]});
    ASSERT_TRUE(twice);
    auto next = (*cons)->fetch(10, 0ms);
    ASSERT_EQ(next->size(), 1u);
    EXPECT_EQ((*next)[0].message_id, ids[7]);
}

TEST(MemoryBroker, RawMessagesAndTasksAWorkerWouldRefuseAreEncoded) {
    auto b = fresh("encoded");
    Client c(b);
    EnqueueOptions raw{.queue = "raw"};
    raw.raw = true;
    ASSERT_TRUE(c.enqueue("plain", Json::array({"hello"}), Json::object(), raw));
    // A time limit outside what workers accept: the message is encoded, and a worker's decode
    // dead-letters it, as on every engine.
    TaskMessage bad{.name = "t"};
    bad.time_limit = -5;
    ASSERT_TRUE(c.enqueue_many({bad}, EnqueueOptions{.queue = "q"}));
    auto cons = b->consume({.queues = {"raw", "q"}});
    auto got = (*cons)->fetch(2, 0ms);
    ASSERT_EQ(got->size(), 2u);
    for (auto& d : *got) {
        EXPECT_FALSE(d.task);
        EXPECT_FALSE(d.envelope.body.empty());
    }
    auto refused = codec::decode((*got)[0].queue == "q" ? (*got)[0].envelope : (*got)[1].envelope);
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().message.find("timelimit"), std::string::npos);
}

TEST(MemoryBroker, AWorkerRunsRetriesAndDeadLettersTasksPassedAsTheyAre) {
    auto b = fresh("worker-objects");
    Client c(b);
    std::atomic<int> calls{0};
    Worker w(b, WorkerOptions{.queues = {"q"}, .concurrency = 2, .remote_control = false});
    w.handle("flaky", TaskOptions{.retry = RetryPolicy{.max_retries = 3}},
             [&](TaskContext& ctx) -> Json {
                 if (++calls == 1) {
                     TaskError e("ValueError", "first time");
                     e.retry_after = 0ms;
                     throw e;
                 }
                 return ctx.args()[0].get<int>() + ctx.kwargs().value("add", 0);
             });
    w.handle("refused", [](TaskContext&) -> Json { throw Reject("no"); });
    auto a = c.enqueue("flaky", Json::array({40}), Json{{"add", 2}}, EnqueueOptions{.queue = "q"});
    auto r = c.enqueue("refused", Json::array(), Json::object(), EnqueueOptions{.queue = "q"});
    ASSERT_TRUE(a && r);
    std::jthread run([&] { (void)w.run(); });
    auto done = c.wait(*a, 10s);
    ASSERT_TRUE(done);
    EXPECT_EQ(done->state, TaskState::success);
    EXPECT_EQ(done->result, 42);
    EXPECT_EQ(done->retries, 1);
    auto failed = c.wait(*r, 10s);
    ASSERT_TRUE(failed);
    EXPECT_EQ(failed->state, TaskState::failure);
    w.stop();
    auto dl = b->dead_letters("q", 10);
    ASSERT_EQ(dl->size(), 1u);
    auto msg = codec::decode((*dl)[0].envelope);
    ASSERT_TRUE(msg);
    EXPECT_EQ(msg->name, "refused");
    EXPECT_EQ(msg->id, *r);
}
