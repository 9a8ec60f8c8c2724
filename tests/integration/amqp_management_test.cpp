// Queue counts from RabbitMQ's management plugin: every queue of the vhost shows, those the
// configuration does not name included, with in-flight counts. A node of its own, with the plugin.

#include <gtest/gtest.h>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "support/process.hpp"
#include "support/rabbitmq.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::eventually;

namespace {

std::optional<QueueStats> find_queue(Broker& b, const std::string& name) {
    auto st = b.stats();
    if (!st) return std::nullopt;
    for (auto& s : *st)
        if (s.queue == name) return s;
    return std::nullopt;
}

}  // namespace

TEST(AmqpManagement, QueuesTheConfigurationDoesNotNameShowWithTheirInFlightCounts) {
    testsupport::RabbitNode node(true);
    ASSERT_FALSE(node.url().empty());
    ASSERT_FALSE(node.management_url().empty());
    // Another service's queue: published to by another broker object.
    auto other = Broker::open(node.url());
    ASSERT_TRUE(other) << other.error().message;
    Client client(*other);
    for (int i = 0; i < 3; ++i) {
        auto id = client.enqueue("legacy.job", Json::array({i}), Json::object(),
                                 {.queue = "legacy-orders"});
        ASSERT_TRUE(id) << id.error().message;
    }

    // Without the management API, a fresh broker knows only its configured queues.
    auto plain = Broker::open(node.url());
    ASSERT_TRUE(plain);
    EXPECT_FALSE(find_queue(**plain, "legacy-orders"));

    auto managed = Broker::open(node.url() + "?management=" + node.management_url());
    ASSERT_TRUE(managed) << managed.error().message;
    std::optional<QueueStats> s;
    ASSERT_TRUE(eventually(
        [&] {
            s = find_queue(**managed, "legacy-orders");
            return s && s->ready == 3;
        },
        20s));
    EXPECT_EQ(s->in_flight, 0);
    EXPECT_EQ(s->delayed, -1);  // delayed tasks wait in the shared delay levels

    // One delivery held unsettled: in flight.
    auto consumer =
        (*managed)->consume(ConsumerOptions{.queues = {"legacy-orders"}, .prefetch = 1});
    ASSERT_TRUE(consumer) << consumer.error().message;
    auto got = (*consumer)->fetch(1, 5s);
    ASSERT_TRUE(got && got->size() == 1u);
    ASSERT_TRUE(eventually(
        [&] {
            s = find_queue(**managed, "legacy-orders");
            return s && s->in_flight == 1 && s->ready == 2;
        },
        20s))
        << (s ? s->in_flight : -9);
    // RabbitMQ's and Celery's own queues stay out.
    auto all = (*managed)->stats();
    ASSERT_TRUE(all) << all.error().message;
    for (auto& q : *all) {
        EXPECT_FALSE(q.queue.starts_with("amq.")) << q.queue;
        EXPECT_FALSE(q.queue.ends_with(".pidbox")) << q.queue;
        EXPECT_FALSE(q.queue.ends_with(".dead")) << q.queue;
    }
    // So does `conveyor queues`.
    auto [rc, out] =
        testsupport::run({CONVEYOR_CLI, "--broker",
                          node.url() + "?management=" + node.management_url(), "--json", "queues"});
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("\"legacy-orders\""), std::string::npos) << out;

    // A management URL that is not http:// is a clear error.
    auto bad = Broker::open(node.url() + "?management=ftp://x");
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("management"), std::string::npos);
}
