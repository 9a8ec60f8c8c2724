// The memory engine's index of live ids (memory::IdIndex): open addressing with backward-shift
// erasure, checked against a plain map through inserts, lookups and erasures in long runs of
// colliding and wrapping hashes, and through the engine itself.
#include "broker/memory/id_index.hpp"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"

using namespace conveyor;

TEST(IdIndex, FindsWhatIsFiledAndNothingAfterItIsErasedThroughCollisionsAndWrapping) {
    memory::IdIndex index;
    std::map<std::uint64_t, std::pair<std::uint64_t, std::string>> model;  // seq -> hash, id
    std::mt19937_64 rng(7);
    auto id_of = [&](std::uint64_t seq) -> std::string_view { return model.at(seq).second; };
    std::uint64_t next_seq = 1;
    for (int round = 0; round < 6000; ++round) {
        // Few distinct hashes, most of them at the table's last slots: long runs that wrap.
        std::uint64_t h = (rng() % 2 ? ~std::uint64_t(0) - 2 * (rng() % 6) : 1 + 2 * (rng() % 400));
        if (model.empty() || rng() % 3 != 0) {
            std::uint64_t seq = next_seq++;
            std::string id = "id-" + std::to_string(seq);
            ASSERT_FALSE(index.find(h, id, id_of));
            index.insert(h, seq);
            model.emplace(seq, std::pair{h, id});
        } else {
            auto it = std::next(model.begin(), std::ptrdiff_t(rng() % model.size()));
            index.erase(it->second.first, it->first);
            std::string id = it->second.second;
            std::uint64_t hash = it->second.first;
            model.erase(it);
            ASSERT_FALSE(index.find(hash, id, id_of)) << round;
        }
        ASSERT_EQ(index.size(), model.size());
        if (round % 97 == 0) {
            for (auto& [seq, v] : model) ASSERT_EQ(index.find(v.first, v.second, id_of), seq);
        }
    }
    // Erasing down to nothing shrinks the table on the way and loses none of the rest.
    while (!model.empty()) {
        auto it = model.begin();
        index.erase(it->second.first, it->first);
        model.erase(it);
        if (model.size() % 50 == 0) {
            for (auto& [seq, v] : model) ASSERT_EQ(index.find(v.first, v.second, id_of), seq);
        }
    }
    EXPECT_EQ(index.size(), 0u);
    // What is not filed is neither found nor erased.
    index.insert(5, 1);
    model.emplace(1, std::pair{std::uint64_t(5), std::string("one")});
    index.erase(5, 2);
    index.erase(7, 1);
    EXPECT_EQ(index.size(), 1u);
    EXPECT_EQ(index.find(5, "one", id_of), 1u);
    EXPECT_FALSE(index.find(5, "two", id_of));
}

TEST(IdIndex, TheMemoryEngineDropsALiveDuplicateAndTakesTheIdAgainOnceItsTaskIsGone) {
    auto broker = *Broker::open("memory://id-index");
    auto publish = [&](const std::string& id, const std::string& name) {
        OutgoingMessage m;
        m.queue = "q";
        m.task_id = id;
        m.envelope.headers = Json{{"id", id}, {"task", name}};
        m.envelope.body = "[[], {}, {}]";
        m.envelope.content_type = "application/json";
        ASSERT_TRUE(broker->publish(std::span<const OutgoingMessage>(&m, 1)));
    };
    auto consumer = std::move(*broker->consume({.queues = {"q"}, .prefetch = 5000}));
    for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 500; ++i) publish("t" + std::to_string(i), "first");
        for (int i = 0; i < 500; ++i) publish("t" + std::to_string(i), "again");  // dropped
        auto got = consumer->fetch(5000, std::chrono::milliseconds(100));
        ASSERT_TRUE(got);
        ASSERT_EQ(got->size(), 500u) << round;
        std::vector<Settlement> acks;
        for (auto& d : *got) {
            EXPECT_EQ(d.envelope.headers["task"], "first");
            acks.push_back(Settlement{Settlement::Kind::ack, d.tag});
        }
        ASSERT_TRUE(consumer->settle(acks));
        // Gone (acknowledged without a result): the next round files the same ids again.
    }
    // Twice in one batch: once.
    std::vector<OutgoingMessage> twice(2);
    for (auto& m : twice) {
        m.queue = "q";
        m.task_id = "twice";
        m.envelope.headers = Json{{"id", "twice"}, {"task", "t"}};
        m.envelope.body = "[[], {}, {}]";
        m.envelope.content_type = "application/json";
    }
    ASSERT_TRUE(broker->publish(twice));
    auto one = consumer->fetch(10, std::chrono::milliseconds(100));
    ASSERT_TRUE(one);
    ASSERT_EQ(one->size(), 1u);
    // Running, its result says so (found by its id); dead-lettered, it keeps its id until its
    // dead letters are purged, and then the id is taken again.
    EXPECT_EQ(broker->result("twice")->state, TaskState::started);
    std::vector<Settlement> dead{Settlement{Settlement::Kind::dead_letter, (*one)[0].tag}};
    dead[0].reason = "test";
    ASSERT_TRUE(consumer->settle(dead));
    publish("twice", "again");
    EXPECT_EQ(consumer->fetch(10, std::chrono::milliseconds(20))->size(), 0u);
    ASSERT_EQ(*broker->purge_dead("q"), 1u);
    publish("twice", "after");
    auto after = consumer->fetch(10, std::chrono::milliseconds(100));
    ASSERT_TRUE(after);
    ASSERT_EQ(after->size(), 1u);
    EXPECT_EQ((*after)[0].envelope.headers["task"], "after");
}
