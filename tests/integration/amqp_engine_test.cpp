// The amqp engine against a real RabbitMQ node (the suite's shared node; names are unique per
// test).

#include <arpa/inet.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "broker/amqp/amqp_connection.hpp"
#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/worker.hpp"
#include "integration/helpers.hpp"
#include "support/process.hpp"
#include "support/queue_stats.hpp"
#include "support/rabbitmq.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::eventually;
using testsupport::shared_rabbitmq_url;
using testsupport::stats_of;
using testsupport::unique_name;
using namespace itest;

TEST(AmqpEngine, EnqueuedTasksRunOnceAndLeaveTheQueueEmpty) {
    auto q = unique_name("basic");
    auto broker = open_with(queues({q}));
    Client client(broker);
    std::vector<TaskMessage> tasks;
    for (int i = 0; i < 500; ++i) tasks.push_back(TaskMessage{.name = "t.add", .args = {i, 1}});
    auto ids = client.enqueue_many(std::move(tasks), {.queue = q});
    ASSERT_TRUE(ids) << ids.error().message;
    EXPECT_EQ(stats_of(*broker, q).ready, 500);

    std::mutex mu;
    std::map<std::string, int> runs;
    BackgroundWorker w(broker, options_for({q}));
    w.worker.handle("t.add", [&](TaskContext& c) -> Json {
        std::lock_guard lk(mu);
        runs[c.id()]++;
        return c.args()[0].get<int>() + c.args()[1].get<int>();
    });
    w.start();
    ASSERT_TRUE(eventually(
        [&] {
            std::lock_guard lk(mu);
            return runs.size() == 500;
        },
        30s));
    ASSERT_TRUE(eventually([&] { return stats_of(*broker, q).ready == 0; }, 10s));
    w.worker.stop();
    w.thread.join();
    EXPECT_TRUE(w.outcome) << w.outcome.error().message;
    for (auto& id : *ids) EXPECT_EQ(runs[id], 1) << id;
    EXPECT_EQ(stats_of(*broker, q).ready, 0);  // every delivery acked
}

// The remote-control connection opens while the consumer does, yet the worker is online
// before it runs a task: its pidbox queue exists (celery control reaches it) and its
// worker-online event went out before the task's first event.
TEST(AmqpEngine, AWorkerIsOnlineWithItsPidboxBeforeItRunsATask) {
    auto q = unique_name("online");
    auto node = unique_name("online-worker") + "@test";
    auto broker = open_with(queues({q}));
    auto events_name = unique_name("online-events");
    auto events = broker->events(events_name);
    ASSERT_TRUE(events) << events.error().message;
    ASSERT_TRUE((*events)->next(0ms).has_value());  // its queue is bound from here on
    Client client(broker);
    ASSERT_TRUE(client.enqueue("t.probe", Json::array(), Json::object(), {.queue = q}));

    auto opts = amqp::parse_connection_options(*detail::parse_broker_url(shared_rabbitmq_url()));
    ASSERT_TRUE(opts);
    std::atomic<int> pidbox_found{-1};
    auto wo = options_for({q});
    wo.node_name = node;
    wo.task_events = true;
    BackgroundWorker w(broker, wo);
    w.worker.handle("t.probe", [&](TaskContext&) -> Json {
        auto admin = amqp::Connection::open(*opts, "test-pidbox");
        if (!admin) return nullptr;
        // A passive declare: fails (404) when the queue does not exist.
        auto pidbox = (*admin)->declare_queue(node + ".celery.pidbox", Json::object(),
                                              {.passive = true, .durable = false});
        pidbox_found = pidbox ? 1 : 0;
        return nullptr;
    });
    w.start();
    ASSERT_TRUE(eventually([&] { return pidbox_found.load() >= 0; }, 20s));
    EXPECT_EQ(pidbox_found.load(), 1) << "the pidbox did not exist when the task ran";

    std::vector<std::string> types;  // this worker's events, in the order they came
    ASSERT_TRUE(eventually(
        [&] {
            auto got = (*events)->next(200ms);
            if (got)
                for (auto& e : *got)
                    if (auto h = e.find("hostname"); h != e.end() && *h == node)
                        types.push_back(e.value("type", ""));
            return std::find(types.begin(), types.end(), "task-succeeded") != types.end();
        },
        20s));
    w.worker.stop();
    w.thread.join();
    EXPECT_TRUE(w.outcome) << w.outcome.error().message;
    ASSERT_FALSE(types.empty());
    EXPECT_EQ(types.front(), "worker-online") << fmt::format("{}", fmt::join(types, ", "));
    auto started = std::find(types.begin(), types.end(), "task-started");
    EXPECT_NE(started, types.end()) << fmt::format("{}", fmt::join(types, ", "));
    // The events queue would otherwise gather every later test's events for an hour.
    auto admin = amqp::Connection::open(*opts, "test-cleanup");
    ASSERT_TRUE(admin) << admin.error().message;
    EXPECT_TRUE((*admin)->delete_queue("conveyor.events." + events_name));
}

/// Deliveries of `queue` that RabbitMQ counts as unacknowledged (rabbitmqctl list_queues).
int unacked(const std::string& queue) {
    auto [rc, out] = testsupport::run({CONVEYOR_SOURCE_DIR "/scripts/rabbitmq-node.sh", "ctl",
                                       testsupport::shared_rabbitmq_dir(), "list_queues", "-q",
                                       "name", "messages_unacknowledged"});
    EXPECT_EQ(rc, 0) << out;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
        std::istringstream fields(line);
        std::string name;
        int n = -1;
        if (fields >> name >> n && name == queue) return n;
    }
    return -1;
}

TEST(AmqpEngine, TasksFinishedBehindALongRunningOneAreAckedWithoutWaitingForIt) {
    auto q = unique_name("acks");
    auto broker = open_with(queues({q}));
    Client client(broker);
    ASSERT_TRUE(client.enqueue("t.slow", Json::array(), Json::object(), {.queue = q}));
    std::vector<TaskMessage> fast;
    for (int i = 0; i < 30; ++i) fast.push_back(TaskMessage{.name = "t.fast", .args = {i}});
    ASSERT_TRUE(client.enqueue_many(std::move(fast), {.queue = q}));

    std::atomic<int> fast_done{0};
    std::atomic<bool> release{false};
    // A small prefetch window (8): acks that waited would stop deliveries.
    BackgroundWorker w(broker, options_for({q}, 2));
    w.worker.handle("t.slow", [&](TaskContext&) -> Json {
        for (int i = 0; i < 3000 && !release.load(); ++i) std::this_thread::sleep_for(10ms);
        return nullptr;
    });
    w.worker.handle("t.fast", [&](TaskContext&) -> Json {
        fast_done++;
        return nullptr;
    });
    w.start();
    ASSERT_TRUE(eventually([&] { return fast_done.load() == 30; }, 20s));
    // The slow task (the oldest delivery) still runs: the others are acked all the same, within
    // the 100 ms an ack may wait for it.
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(unacked(q), 1);
    release = true;
    EXPECT_TRUE(eventually([&] { return unacked(q) == 0; }, 20s));
    EXPECT_EQ(stats_of(*broker, q).ready, 0);
}

TEST(AmqpEngine, UnroutableTaskIsAnErrorForTheCallerNotASilentLoss) {
    Topology t;
    auto ex = unique_name("nobody-listens");
    t.exchanges.push_back(ExchangeSpec{.name = ex, .type = "direct"});
    auto broker = open_with(t);
    ASSERT_TRUE(broker->declare_topology());
    Client client(broker);
    auto id = client.enqueue("t.x", Json::array(), Json::object(),
                             {.exchange = ex, .routing_key = "order.created"});
    ASSERT_FALSE(id);
    EXPECT_EQ(id.error().code, Errc::not_found);
    EXPECT_NE(id.error().message.find(ex), std::string::npos) << id.error().message;
    EXPECT_NE(id.error().message.find("order.created"), std::string::npos);

    auto missing =
        client.enqueue("t.x", Json::array(), Json::object(),
                       {.exchange = unique_name("no-such-exchange"), .routing_key = "k"});
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, Errc::not_found) << missing.error().message;
    // The connection is still good for the next publish.
    EXPECT_TRUE(client.enqueue("t.x", Json::array(), Json::object(), {.queue = unique_name("ok")}));
}

TEST(AmqpEngine, OneEventFansOutToEveryBoundService) {
    auto ex = unique_name("orders");
    std::vector<std::string> services = {unique_name("inventory"), unique_name("billing"),
                                         unique_name("shipping")};
    Topology t;
    t.exchanges.push_back(ExchangeSpec{.name = ex, .type = "fanout"});
    for (auto& s : services) {
        t.queues.push_back(QueueSpec{.name = s});
        t.bindings.push_back(BindingSpec{.exchange = ex, .queue = s});
    }
    auto broker = open_with(t);
    ASSERT_TRUE(broker->declare_topology());
    Client client(broker);
    auto id = client.enqueue("order.created", {42}, Json::object(), {.exchange = ex});
    ASSERT_TRUE(id) << id.error().message;

    std::mutex mu;
    std::map<std::string, std::string> seen;  // queue -> task id
    std::vector<std::unique_ptr<BackgroundWorker>> workers;
    for (auto& s : services) {
        auto w = std::make_unique<BackgroundWorker>(open_with(t), options_for({s}, 1));
        w->worker.handle("order.created", [&](TaskContext& c) -> Json {
            std::lock_guard lk(mu);
            seen[c.queue()] = c.id();
            return nullptr;
        });
        w->start();
        workers.push_back(std::move(w));
    }
    ASSERT_TRUE(eventually(
        [&] {
            std::lock_guard lk(mu);
            return seen.size() == 3;
        },
        20s));
    for (auto& s : services) EXPECT_EQ(seen[s], *id) << s;
}

TEST(AmqpEngine, DelayedTasksArriveOnTimeAndNeverEarly) {
    auto q = unique_name("delayed");
    auto broker = open_with(queues({q}));
    Client client(broker);
    auto t0 = SystemClock::now();
    ASSERT_TRUE(client.enqueue("t.one", Json::array(), Json::object(),
                               {.queue = q, .countdown = 1000ms, .id = "one-" + q}));
    ASSERT_TRUE(client.enqueue("t.five", Json::array(), Json::object(),
                               {.queue = q, .countdown = 5000ms, .id = "five-" + q}));
    auto st = stats_of(*broker, q);
    EXPECT_EQ(st.ready, 0);  // waiting in the broker's delay levels, not in the queue

    auto consumer = broker->consume({.queues = {q}, .prefetch = 10, .name = "delay-test"});
    ASSERT_TRUE(consumer) << consumer.error().message;
    std::map<std::string, double> arrived;  // id -> seconds after enqueue
    auto deadline = std::chrono::steady_clock::now() + 15s;
    while (arrived.size() < 2 && std::chrono::steady_clock::now() < deadline) {
        auto got = (*consumer)->fetch(10, 200ms);
        ASSERT_TRUE(got);
        std::vector<Settlement> acks;
        for (auto& d : *got) {
            arrived[d.message_id] = std::chrono::duration<double>(SystemClock::now() - t0).count();
            acks.push_back(Settlement{.kind = Settlement::Kind::ack, .tag = d.tag});
        }
        ASSERT_TRUE((*consumer)->settle(acks));
    }
    ASSERT_EQ(arrived.size(), 2u);
    EXPECT_GE(arrived["one-" + q], 1.0);
    EXPECT_LE(arrived["one-" + q], 2.5);
    EXPECT_GE(arrived["five-" + q], 5.0);
    EXPECT_LE(arrived["five-" + q], 6.5);
}

TEST(AmqpEngine, FortySecondDelayCrossesSeveralLevelsAndArrivesOnTime) {
    auto q = unique_name("delayed40");
    auto broker = open_with(queues({q}));
    Client client(broker);
    auto t0 = SystemClock::now();
    ASSERT_TRUE(client.enqueue("t.forty", Json::array(), Json::object(),
                               {.queue = q, .countdown = 40000ms}));
    auto consumer = broker->consume({.queues = {q}, .prefetch = 1, .name = "delay40"});
    ASSERT_TRUE(consumer);
    std::optional<double> at;
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!at && std::chrono::steady_clock::now() < deadline) {
        auto got = (*consumer)->fetch(1, 500ms);
        ASSERT_TRUE(got);
        if (!got->empty()) {
            at = std::chrono::duration<double>(SystemClock::now() - t0).count();
            std::vector<Settlement> acks{{.kind = Settlement::Kind::ack, .tag = got->front().tag}};
            ASSERT_TRUE((*consumer)->settle(acks));
        }
    }
    ASSERT_TRUE(at);
    EXPECT_GE(*at, 40.0);  // never early
    // Late by what the broker takes to expire and dead-letter it at two levels, each a quorum
    // queue writing to its log: 0.1-0.6 s here, 1.9 s once while the rest of the suite loaded
    // the same broker and disk.
    EXPECT_LE(*at, 43.0);
}

TEST(AmqpEngine, FailingTaskRetriesWithBackoffThenDeadLettersWithItsReason) {
    auto q = unique_name("retry");
    auto broker = open_with(queues({q}));
    Client client(broker);
    std::atomic<int> attempts{0};
    std::atomic<bool> healthy{false};
    auto opts = options_for({q}, 2);
    opts.default_retry =
        RetryPolicy{.max_retries = 2, .backoff_base = 1, .backoff_max = 1, .jitter = false};
    BackgroundWorker w(broker, opts);
    w.worker.handle("t.flaky", [&](TaskContext&) -> Json {
        attempts++;
        if (!healthy) throw std::runtime_error("inventory service down");
        return "ok";
    });
    w.start();
    auto id = client.enqueue("t.flaky", Json::array(), Json::object(), {.queue = q});
    ASSERT_TRUE(id);
    auto dead = dead_letters_once(*broker, q, 1, 20s);
    ASSERT_EQ(dead.size(), 1u);
    EXPECT_EQ(attempts.load(), 3);  // first run and two retries, each after a 1 s backoff
    EXPECT_EQ(dead[0].message_id, *id);
    EXPECT_NE(dead[0].reason.find("failed after 2 retries"), std::string::npos) << dead[0].reason;
    EXPECT_NE(dead[0].reason.find("inventory service down"), std::string::npos);
    // Listing does not consume: it is still there.
    EXPECT_EQ(stats_of(*broker, q).dead, 1);

    healthy = true;
    auto n = broker->replay_dead(q, {});
    ASSERT_TRUE(n) << n.error().message;
    EXPECT_EQ(*n, 1u);
    ASSERT_TRUE(eventually([&] { return attempts.load() == 4; }, 10s));
    EXPECT_EQ(stats_of(*broker, q).dead, 0);
}

TEST(AmqpEngine, MalformedMessageIsDeadLetteredWithTheReasonAndTheWorkerCarriesOn) {
    auto q = unique_name("malformed");
    auto broker = open_with(queues({q}));
    OutgoingMessage bad{.queue = q};
    bad.envelope.headers = {{"id", "bad-" + q}, {"task", "t.ok"}};
    bad.envelope.body = "\xff\xfe not json";
    bad.envelope.content_type = "application/json";
    ASSERT_TRUE(broker->publish(std::span(&bad, 1)));
    std::atomic<int> ran{0};
    BackgroundWorker w(broker, options_for({q}, 1));
    w.worker.handle("t.ok", [&](TaskContext&) -> Json { return ++ran; });
    w.start();
    Client client(broker);
    ASSERT_TRUE(client.enqueue("t.ok", Json::array(), Json::object(), {.queue = q}));
    ASSERT_TRUE(eventually([&] { return ran.load() == 1; }, 10s));
    auto dead = dead_letters_once(*broker, q, 1, 10s);
    ASSERT_EQ(dead.size(), 1u);
    EXPECT_EQ(dead[0].message_id, "bad-" + q);
    EXPECT_NE(dead[0].reason.find("malformed"), std::string::npos) << dead[0].reason;
    EXPECT_EQ(dead[0].envelope.body, "\xff\xfe not json");  // kept byte for byte
    auto purged = broker->purge_dead(q);
    ASSERT_TRUE(purged);
    EXPECT_EQ(*purged, 1u);
}

TEST(AmqpEngine, HigherPriorityTasksAreDeliveredFirst) {
    auto q = unique_name("prio");
    Topology t;
    t.queues.push_back(QueueSpec{.name = q, .max_priority = 10});
    auto broker = open_with(t);
    Client client(broker);
    for (int i = 0; i < 20; ++i)
        ASSERT_TRUE(
            client.enqueue("t.low", Json::array(), Json::object(), {.queue = q, .priority = 1}));
    auto urgent =
        client.enqueue("t.urgent", Json::array(), Json::object(), {.queue = q, .priority = 9});
    ASSERT_TRUE(urgent);
    auto consumer = broker->consume({.queues = {q}, .prefetch = 1, .name = "prio"});
    ASSERT_TRUE(consumer);
    auto got = next_delivery(**consumer, 5s);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->message_id, *urgent);
}

TEST(AmqpEngine, ConflictingDeclarationNamesTheQueueAndTheArgument) {
    auto q = unique_name("conflict");
    Topology a;
    a.queues.push_back(QueueSpec{.name = q, .max_priority = 5});
    auto broker = open_with(a);
    ASSERT_TRUE(broker->declare_topology());
    ASSERT_TRUE(broker->declare_topology());  // idempotent
    Topology b;
    b.queues.push_back(QueueSpec{.name = q, .max_priority = 10});
    auto other = open_with(b);
    auto r = other->declare_topology();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::conflict);
    EXPECT_NE(r.error().message.find(q), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("x-max-priority"), std::string::npos) << r.error().message;
    EXPECT_EQ(std::count(r.error().message.begin(), r.error().message.end(), '\n'), 0);
}

TEST(AmqpEngine, OrderedQueueRunsEachKeyInOrderAndKeysInParallel) {
    auto q = unique_name("ledger");
    Topology t;
    t.queues.push_back(QueueSpec{.name = q, .partitions = 4});
    auto broker = open_with(t);
    Client client(broker);
    const int keys = 8, per_key = 25;
    std::vector<TaskMessage> batch;
    for (int s = 0; s < per_key; ++s)
        for (int k = 0; k < keys; ++k) {
            ASSERT_TRUE(
                client.enqueue("t.post", {k, s}, Json::object(),
                               {.queue = q, .ordering_key = "customer-" + std::to_string(k)}));
        }
    std::mutex mu;
    std::map<int, std::vector<int>> order;
    std::map<int, int> running;
    int overlap = 0, max_parallel = 0, now_running = 0;
    std::vector<std::unique_ptr<BackgroundWorker>> workers;
    for (int i = 0; i < 2; ++i) {
        auto w = std::make_unique<BackgroundWorker>(open_with(t), options_for({q}, 4));
        w->worker.handle("t.post", [&](TaskContext& c) -> Json {
            int k = c.args()[0].get<int>();
            {
                std::lock_guard lk(mu);
                if (running[k]++ > 0) overlap++;
                max_parallel = std::max(max_parallel, ++now_running);
                order[k].push_back(c.args()[1].get<int>());
            }
            std::this_thread::sleep_for(2ms);
            std::lock_guard lk(mu);
            running[k]--;
            now_running--;
            return nullptr;
        });
        w->start();
        workers.push_back(std::move(w));
    }
    ASSERT_TRUE(eventually(
        [&] {
            std::lock_guard lk(mu);
            std::size_t n = 0;
            for (auto& [k, v] : order) n += v.size();
            return n == std::size_t(keys * per_key);
        },
        60s));
    std::lock_guard lk(mu);
    EXPECT_EQ(overlap, 0);
    EXPECT_GT(max_parallel, 1);
    for (auto& [k, v] : order) {
        ASSERT_EQ(v.size(), std::size_t(per_key)) << "key " << k;
        for (int s = 0; s < per_key; ++s) EXPECT_EQ(v[std::size_t(s)], s) << "key " << k;
    }
}

TEST(AmqpEngine, FailingKeyedTaskRetriesInPlaceSoLaterTasksOfItsKeyWait) {
    auto q = unique_name("ordered-retry");
    Topology t;
    t.queues.push_back(QueueSpec{.name = q, .partitions = 2});
    auto broker = open_with(t);
    Client client(broker);
    for (int s = 0; s < 5; ++s)
        ASSERT_TRUE(client.enqueue("t.step", {s}, Json::object(),
                                   {.queue = q, .ordering_key = "account-1"}));
    std::mutex mu;
    std::vector<int> order;
    int failures_left = 2;
    auto opts = options_for({q}, 4);
    opts.default_retry =
        RetryPolicy{.max_retries = 5, .backoff_base = 0.2, .backoff_max = 0.2, .jitter = false};
    BackgroundWorker w(broker, opts);
    w.worker.handle("t.step", [&](TaskContext& c) -> Json {
        std::lock_guard lk(mu);
        int s = c.args()[0].get<int>();
        if (s == 1 && failures_left-- > 0) throw std::runtime_error("not yet");
        order.push_back(s);
        return nullptr;
    });
    w.start();
    ASSERT_TRUE(eventually(
        [&] {
            std::lock_guard lk(mu);
            return order.size() == 5;
        },
        20s));
    std::lock_guard lk(mu);
    EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(AmqpEngine, DeletedDestinationDoesNotBlockTheDelayLevels) {
    auto gone = unique_name("gone");
    auto stays = unique_name("stays");
    auto broker = open_with(queues({gone, stays}));
    auto before = stats_of(*broker, "(delayed, all queues)").dead;
    auto tstart = std::chrono::steady_clock::now();
    Client client(broker);
    ASSERT_TRUE(
        client.enqueue("t.a", Json::array(), Json::object(), {.queue = gone, .countdown = 2000ms}));
    ASSERT_TRUE(client.enqueue("t.b", Json::array(), Json::object(),
                               {.queue = stays, .countdown = 3000ms}));
    // Delete the first destination while its task waits in the delay levels.
    auto opts = amqp::parse_connection_options(*detail::parse_broker_url(shared_rabbitmq_url()));
    ASSERT_TRUE(opts);
    auto admin = amqp::Connection::open(*opts, "test-admin");
    ASSERT_TRUE(admin) << admin.error().message;
    ASSERT_TRUE((*admin)->delete_queue(gone));
    auto consumer = broker->consume({.queues = {stays}, .prefetch = 1, .name = "stays"});
    ASSERT_TRUE(consumer);
    auto got = next_delivery(**consumer, 10s);
    ASSERT_TRUE(got);
    EXPECT_GE(std::chrono::steady_clock::now() - tstart, 3s);  // its own delay, unaffected
    // The orphan is kept in the unroutable store rather than dropped or stuck.
    EXPECT_TRUE(eventually(
        [&] { return stats_of(*broker, "(delayed, all queues)").dead == before + 1; }, 5s));
}

TEST(AmqpEngine, WrongPasswordIsOneClearSentence) {
    auto url = shared_rabbitmq_url();
    auto at = url.find('@');
    auto bad = "amqp://guest:wrong" + url.substr(at);
    auto b = Broker::open(bad);
    ASSERT_FALSE(b);
    EXPECT_EQ(b.error().code, Errc::invalid_argument);
    EXPECT_NE(b.error().message.find("guest"), std::string::npos) << b.error().message;
}

TEST(AmqpEngine, TlsConnectionVerifiesTheServerAndCarriesTasks) {
    auto url = testsupport::shared_rabbitmq_tls_url();
    ASSERT_EQ(url.rfind("amqps://", 0), 0u) << url;
    auto q = unique_name("tls");
    auto b = Broker::open(url);
    ASSERT_TRUE(b) << b.error().message;
    ASSERT_TRUE((*b)->set_topology(queues({q})));
    Client client(*b);
    auto id = client.enqueue("t.secure", {1}, Json::object(), {.queue = q});
    ASSERT_TRUE(id) << id.error().message;
    auto consumer = (*b)->consume({.queues = {q}, .prefetch = 1, .name = "tls"});
    ASSERT_TRUE(consumer) << consumer.error().message;
    auto got = next_delivery(**consumer, 5s);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->message_id, *id);

    // Without the CA the server's certificate is not trusted.
    auto untrusted = Broker::open(url.substr(0, url.find('?')));
    ASSERT_FALSE(untrusted);
    EXPECT_EQ(untrusted.error().code, Errc::unavailable) << untrusted.error().message;
}

TEST(AmqpEngine, TlsToAnIpAddressVerifiesTheCertificatesIpName) {
    // The node's certificate names IP:127.0.0.1 (and DNS:localhost) among its alternative names.
    auto url = testsupport::shared_rabbitmq_tls_url();
    auto host = url.find("@localhost:");
    ASSERT_NE(host, std::string::npos) << url;
    auto by_ip = url.replace(host, std::string("@localhost:").size(), "@127.0.0.1:");
    auto b = Broker::open(by_ip);
    ASSERT_TRUE(b) << b.error().message;
    EXPECT_TRUE((*b)->stats());
}

TEST(AmqpEngine, AServerThatNeverSpeaksAmqpIsATimeoutNotARefusal) {
    // A listener that accepts and says nothing.
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(listen(fd, 4), 0);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    int port = ntohs(addr.sin_port);
    auto b = Broker::open("amqp://guest:guest@127.0.0.1:" + std::to_string(port) +
                          "/?connect_timeout=1");
    close(fd);
    ASSERT_FALSE(b);
    EXPECT_EQ(b.error().code, Errc::timeout) << b.error().message;
    EXPECT_NE(b.error().message.find("did not complete the AMQP handshake within the connect "
                                     "timeout of 1 s"),
              std::string::npos)
        << b.error().message;
    EXPECT_EQ(b.error().message.find("refused"), std::string::npos) << b.error().message;
}

TEST(AmqpEngine, UnreachableBrokerIsUnavailable) {
    auto b = Broker::open("amqp://guest:guest@127.0.0.1:1/?connect_timeout=2");
    ASSERT_FALSE(b);
    EXPECT_EQ(b.error().code, Errc::unavailable);
    EXPECT_NE(b.error().message.find("127.0.0.1:1"), std::string::npos) << b.error().message;
}

TEST(AmqpCli, TopologyApplyDeclaresTheConfigAndReportsAConflictInOneSentence) {
    testsupport::TempDir dir;
    auto ex = unique_name("cli-orders");
    auto q = unique_name("cli-billing");
    testsupport::write_file(dir.file("a.toml"), fmt::format(R"(
[[exchange]]
name = "{0}"
type = "fanout"
[[queue]]
name = "{1}"
max_priority = 5
[[binding]]
exchange = "{0}"
queue = "{1}"
)",
                                                            ex, q));
    auto url = shared_rabbitmq_url();
    auto [rc, out] = testsupport::run(
        {CONVEYOR_CLI, "--broker", url, "--config", dir.file("a.toml"), "topology", "apply"});
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("declared 1 exchange(s), 1 queue(s), 1 binding(s)"), std::string::npos)
        << out;
    auto [rc2, out2] =
        testsupport::run({CONVEYOR_CLI, "--broker", url, "--config", dir.file("a.toml"), "enqueue",
                          "order.created", "--exchange", ex});
    EXPECT_EQ(rc2, 0) << out2;
    auto [rc3, out3] = testsupport::run(
        {CONVEYOR_CLI, "--broker", url, "--config", dir.file("a.toml"), "--json", "queues"});
    EXPECT_EQ(rc3, 0) << out3;
    auto j = Json::parse(out3, nullptr, false);
    ASSERT_TRUE(j.is_array()) << out3;
    bool found = false;
    for (auto& row : j)
        if (row["queue"] == q) {
            found = true;
            EXPECT_EQ(row["ready"], 1);
        }
    EXPECT_TRUE(found) << out3;

    testsupport::write_file(dir.file("b.toml"),
                            fmt::format("[[queue]]\nname = \"{}\"\nmax_priority = 9\n", q));
    auto [rc4, out4] = testsupport::run(
        {CONVEYOR_CLI, "--broker", url, "--config", dir.file("b.toml"), "topology", "apply"});
    EXPECT_EQ(rc4, 2) << out4;
    EXPECT_NE(out4.find(q), std::string::npos) << out4;
    EXPECT_NE(out4.find("x-max-priority"), std::string::npos) << out4;
    EXPECT_EQ(std::count(out4.begin(), out4.end(), '\n'), 1) << out4;
}

TEST(AmqpEngine, FailingTaskWithoutAKeyOnAnOrderedQueueRetriesWithBackoffThenDeadLetters) {
    auto q = unique_name("ordered-nokey");
    Topology t;
    t.queues.push_back(QueueSpec{.name = q, .partitions = 2});
    auto broker = open_with(t);
    std::atomic<int> attempts{0};
    auto opts = options_for({q}, 2);
    opts.default_retry =
        RetryPolicy{.max_retries = 2, .backoff_base = 0.2, .backoff_max = 0.2, .jitter = false};
    BackgroundWorker w(broker, opts);
    w.worker.handle("t.broken", [&](TaskContext&) -> Json {
        attempts++;
        throw std::runtime_error("always fails");
    });
    w.start();
    Client client(broker);
    auto id = client.enqueue("t.broken", Json::array(), Json::object(), {.queue = q});
    ASSERT_TRUE(id);
    auto dead = dead_letters_once(*broker, q, 1, 10s);
    ASSERT_EQ(dead.size(), 1u);
    EXPECT_EQ(dead[0].message_id, *id);
    EXPECT_NE(dead[0].reason.find("failed after 2 retries"), std::string::npos) << dead[0].reason;
    EXPECT_EQ(attempts.load(), 3);
}
