// Conveyor and plain AMQP publishers and consumers (php-cli with Debian's php-amqplib): raw
// queues both ways, and malformed task messages that go to the dead-letter queue.

#include <gtest/gtest.h>

#include <map>
#include <mutex>

#include "conveyor/client.hpp"
#include "interop/support.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using namespace itest;
using testsupport::eventually;
using testsupport::shared_rabbitmq_url;
using testsupport::unique_name;

namespace {

Json php(const std::string& script, std::vector<std::string> args) {
    std::vector<std::string> argv = {"php", interop::kPeers + "/" + script, interop::amqp_port()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto [rc, out] = testsupport::run(argv, {}, {}, 120s);
    EXPECT_EQ(rc, 0) << out;
    return interop::last_json(out);
}

}  // namespace

TEST(PhpInterop, ClassicPhpProducerFeedsAConveyorWorkerThroughARawQueue) {
    auto ex = unique_name("task_exchange");
    auto q = unique_name("task_queue");
    Topology t;
    t.exchanges.push_back(ExchangeSpec{.name = ex, .type = "direct"});
    t.queues.push_back(QueueSpec{.name = q});
    t.bindings.push_back(BindingSpec{.exchange = ex, .queue = q, .routing_key = q});
    auto broker = open_with(t);
    ASSERT_TRUE(broker->declare_topology());

    std::mutex mu;
    std::vector<Json> payloads;
    auto opts = options_for({q}, 2);
    opts.queue_formats = {QueueConfig{.name = q, .format = QueueFormat::raw, .task = "orders.in"}};
    BackgroundWorker w(broker, opts);
    w.worker.handle("orders.in", [&](TaskContext& c) -> Json {
        std::lock_guard lk(mu);
        payloads.push_back(c.args()[0]);
        return nullptr;
    });
    w.start();

    auto out = php("php_raw_producer.php", {ex, q, "20"});
    EXPECT_EQ(out["published"], 20);
    ASSERT_TRUE(eventually(
        [&] {
            std::lock_guard lk(mu);
            return payloads.size() >= 20;
        },
        30s));
    std::this_thread::sleep_for(200ms);
    std::lock_guard lk(mu);
    ASSERT_EQ(payloads.size(), 20u);
    std::set<std::string> texts;
    std::set<int> orders;
    for (auto& p : payloads) {
        if (p.is_string()) texts.insert(p.get<std::string>());
        if (p.is_object()) {
            orders.insert(p["order"].get<int>());
            EXPECT_EQ(p["total"], 9.5);
        }
    }
    EXPECT_EQ(texts.size(), 10u);
    EXPECT_TRUE(texts.contains("order-0") && texts.contains("order-18"));
    EXPECT_EQ(orders.size(), 10u);
    EXPECT_TRUE(orders.contains(1) && orders.contains(19));
}

TEST(PhpInterop, ConveyorPublishesRawToAQueueAPlainPhpConsumerReads) {
    auto q = unique_name("php_inbox");
    Config cfg;
    cfg.queues.push_back(QueueConfig{.name = q, .format = QueueFormat::raw, .task = "php.inbox"});
    auto broker = open_with(cfg.topology());
    Client client(broker, cfg);
    auto a = client.enqueue("php.inbox", {"hello php"}, Json::object(), {.queue = q});
    ASSERT_TRUE(a) << a.error().message;
    auto b =
        client.enqueue("php.inbox", Json::array({{{"order", 2}}}), Json::object(), {.queue = q});
    ASSERT_TRUE(b) << b.error().message;
    // More than one argument cannot be one message body: refused, not half-sent.
    auto bad = client.enqueue("php.inbox", {1, 2}, Json::object(), {.queue = q});
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("raw"), std::string::npos) << bad.error().message;

    auto out = php("php_raw_consumer.php", {q, "2"});
    auto msgs = out["messages"];
    ASSERT_EQ(msgs.size(), 2u) << out.dump();
    EXPECT_EQ(msgs[0]["body"], "hello php");
    EXPECT_EQ(msgs[0]["content_type"], "text/plain");
    EXPECT_EQ(Json::parse(msgs[1]["body"].get<std::string>()), Json({{"order", 2}}));
    EXPECT_EQ(msgs[1]["content_type"], "application/json");
}

TEST(PhpInterop, MalformedTaskMessagesGoToTheDeadLetterQueueWithTheirReason) {
    auto q = unique_name("bad");
    auto broker = open_with(queues({q}));
    std::atomic<int> good{0};
    BackgroundWorker w(broker, options_for({q}, 2));
    w.worker.handle("interop.add", [&](TaskContext& c) -> Json {
        good++;
        return c.args()[0].get<int>() + c.args()[1].get<int>();
    });
    w.start();

    auto out = php("php_bad_producer.php", {q, "interop.add"});
    auto ids = out["ids"];
    ASSERT_EQ(ids.size(), 7u) << out.dump();
    // What each reason must say.
    std::map<std::string, std::string> expect = {
        {"no_content_type", "content_type"},
        {"two_elem_body", "2 elements"},
        {"kwargs_list", "kwargs"},
        {"args_string", "args"},
        {"task_not_string", "header 'task'"},
        {"invalid_utf8", "UTF-8"},
        {"huge_body", "exceeds the limit"},
    };
    auto dead = dead_letters_once(*broker, q, 7, 60s);
    ASSERT_EQ(dead.size(), 7u);
    std::map<std::string, DeadLetter> by_id;
    for (auto& d : dead) by_id[d.message_id] = d;
    for (auto& [name, needle] : expect) {
        auto id = ids[name].get<std::string>();
        ASSERT_TRUE(by_id.contains(id)) << name;
        EXPECT_NE(by_id[id].reason.find(needle), std::string::npos)
            << name << ": " << by_id[id].reason;
    }
    // Kept whole: the 17 MiB body is in the dead-letter queue byte for byte.
    EXPECT_GT(by_id[ids["huge_body"].get<std::string>()].envelope.body.size(), 17u << 20);
    EXPECT_EQ(good.load(), 0);

    // The worker carries on.
    Client client(broker);
    auto id = client.enqueue("interop.add", {2, 3}, Json::object(), {.queue = q});
    ASSERT_TRUE(id);
    auto r = client.wait(*id, 20s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->result, 5);
}
