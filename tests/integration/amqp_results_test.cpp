// Results on RabbitMQ: Celery's rpc:// backend (replies to the sender's queue) and redis://
// backend (celery-task-meta-<id> keys), and unique tasks kept in Redis, against the suite's
// RabbitMQ node and redis-server.

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "conveyor/client.hpp"
#include "integration/helpers.hpp"
#include "results/redis_results.hpp"
#include "support/process.hpp"
#include "support/rabbitmq.hpp"
#include "support/redis.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using namespace itest;
using testsupport::eventually;
using testsupport::shared_rabbitmq_url;
using testsupport::shared_redis_url;
using testsupport::unique_name;

namespace {

/// The shared node's URL with a query appended.
std::string url_with(const std::string& query) { return shared_rabbitmq_url() + "?" + query; }

std::string redis_url() { return url_with("results=" + shared_redis_url()); }

/// Handlers every test here uses: add, a failure that is never retried, a failure that
/// succeeds on the second attempt.
void register_handlers(Worker& w) {
    w.handle("r.add", [](TaskContext& c) -> Json {
        return c.args()[0].get<int>() + c.args()[1].get<int>();
    });
    w.handle("r.fail", [](TaskContext&) -> Json {
        throw TaskError("ValueError", "kaboom", /*retryable=*/false);
    });
    w.handle("r.flaky", [](TaskContext& c) -> Json {
        if (c.attempt() == 1) {
            TaskError e("RuntimeError", "try 0");
            e.retry_after = 1500ms;
            throw e;
        }
        return "ok after " + std::to_string(c.retries()) + " retries";
    });
}

std::string redis_cli(const std::string& command, const std::string& key) {
    auto url = shared_redis_url();  // redis://127.0.0.1:PORT/0
    auto port = url.substr(url.rfind(':') + 1);
    port = port.substr(0, port.find('/'));
    auto [rc, out] = testsupport::run({"redis-cli", "-p", port, command, key}, {}, {}, 10s);
    EXPECT_EQ(rc, 0) << out;
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out;
}

}  // namespace

TEST(AmqpResults, RpcResultsComeBackToTheSenderWithSuccessFailureAndRetryStates) {
    auto q = unique_name("rpc");
    auto broker = open_with(queues({q}));
    BackgroundWorker w(open_with(queues({q})), options_for({q}, 2));
    register_handlers(w.worker);
    w.start();
    Client client(broker);

    auto ok = client.enqueue("r.add", {2, 3}, Json::object(), {.queue = q});
    ASSERT_TRUE(ok) << ok.error().message;
    auto r = client.wait(*ok, 20s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(r->result, 5);

    auto bad = client.enqueue("r.fail", Json::array(), Json::object(), {.queue = q});
    ASSERT_TRUE(bad);
    r = client.wait(*bad, 20s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::failure);
    EXPECT_EQ(r->result["exc_type"], "ValueError");
    EXPECT_EQ(r->result["exc_module"], "builtins");
    EXPECT_EQ(r->result["exc_message"], Json::array({"kaboom"}));

    auto flaky = client.enqueue("r.flaky", Json::array(), Json::object(), {.queue = q});
    ASSERT_TRUE(flaky);
    // The retry is reported while the task waits for its second attempt.
    EXPECT_TRUE(eventually(
        [&] {
            auto now = client.result(*flaky);
            return now && now->state == TaskState::retry &&
                   now->result.value("exc_type", "") == "RuntimeError";
        },
        10s));
    r = client.wait(*flaky, 20s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(r->result, "ok after 1 retries");
}

TEST(AmqpResults, RpcResultOfATaskAnotherProcessSentIsAClearErrorNotPendingForever) {
    auto broker = open_with(queues({}));
    auto r = broker->result("0b0e5ad2-0000-4000-8000-000000000000");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("results=redis://"), std::string::npos) << r.error().message;
}

TEST(AmqpResults, WaitingForATaskNobodyRunsTimesOut) {
    auto q = unique_name("nobody");
    auto broker = open_with(queues({q}));
    Client client(broker);
    auto id = client.enqueue("r.add", {1, 1}, Json::object(), {.queue = q});
    ASSERT_TRUE(id);
    auto t0 = std::chrono::steady_clock::now();
    auto r = client.wait(*id, 500ms);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::timeout);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 500ms);
    auto now = client.result(*id);
    ASSERT_TRUE(now);
    EXPECT_EQ(now->state, TaskState::pending);
}

TEST(AmqpResults, RedisResultsAreReadableFromAnyProcessInCeleryFormat) {
    auto q = unique_name("redis");
    auto broker = open_with(queues({q}), redis_url());
    ASSERT_TRUE(broker);
    BackgroundWorker w(open_with(queues({q}), redis_url()), options_for({q}, 2));
    register_handlers(w.worker);
    w.start();
    Client client(broker);

    auto id = client.enqueue("r.add", {20, 22}, Json::object(), {.queue = q});
    ASSERT_TRUE(id) << id.error().message;
    auto r = client.wait(*id, 20s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(r->result, 42);

    // Another broker (another process, in effect) reads the same result.
    auto other = open_with(queues({}), redis_url());
    auto again = other->result(*id);
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ(again->state, TaskState::success);
    EXPECT_EQ(again->result, 42);
    ASSERT_TRUE(again->done_at);

    // Stored as Celery stores it: JSON meta with a TTL of result_expires (1 day).
    auto meta = Json::parse(redis_cli("GET", "celery-task-meta-" + *id));
    EXPECT_EQ(meta["status"], "SUCCESS");
    EXPECT_EQ(meta["result"], 42);
    EXPECT_EQ(meta["task_id"], *id);
    EXPECT_TRUE(meta["children"].is_array());
    EXPECT_TRUE(meta["date_done"].is_string());
    auto ttl = std::stol(redis_cli("TTL", "celery-task-meta-" + *id));
    EXPECT_GT(ttl, 86000);
    EXPECT_LE(ttl, 86400);

    auto bad = client.enqueue("r.fail", Json::array(), Json::object(), {.queue = q});
    ASSERT_TRUE(bad);
    r = client.wait(*bad, 20s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::failure);
    EXPECT_EQ(r->result["exc_type"], "ValueError");

    auto flaky = client.enqueue("r.flaky", Json::array(), Json::object(), {.queue = q});
    ASSERT_TRUE(flaky);
    EXPECT_TRUE(eventually(
        [&] {
            auto now = other->result(*flaky);
            return now && now->state == TaskState::retry;
        },
        10s));
    r = client.wait(*flaky, 20s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(r->retries, 1);
}

TEST(AmqpResults, IgnoredResultsAreNotStored) {
    auto q = unique_name("ignored");
    auto broker = open_with(queues({q}), redis_url());
    std::atomic<int> ran{0};
    BackgroundWorker w(open_with(queues({q}), redis_url()), options_for({q}, 1));
    w.worker.handle("r.quiet", [&](TaskContext&) -> Json {
        ran++;
        return 1;
    });
    w.start();
    Client client(broker);
    TaskMessage t{.name = "r.quiet", .ignore_result = true};
    auto ids = client.enqueue_many({t}, {.queue = q});
    ASSERT_TRUE(ids);
    ASSERT_TRUE(eventually([&] { return ran.load() == 1; }, 20s));
    std::this_thread::sleep_for(300ms);
    auto r = client.result(ids->front());
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::pending);
    EXPECT_EQ(redis_cli("EXISTS", "celery-task-meta-" + ids->front()), "0");
}

TEST(AmqpResults, AnUnreachableRedisBackendIsOneSentenceWhenTheBrokerOpens) {
    auto r = Broker::open(url_with("results=redis://127.0.0.1:1/0"));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("Redis result backend"), std::string::npos)
        << r.error().message;
    auto bad = Broker::open(url_with("results=memcache://x"));
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("results="), std::string::npos) << bad.error().message;
}

TEST(AmqpResults, CliEnqueueWaitPrintsTheResultOverRpc) {
    auto q = unique_name("cli-rpc");
    BackgroundWorker w(open_with(queues({q})), options_for({q}, 1));
    register_handlers(w.worker);
    w.start();
    auto [rc, out] = testsupport::run({CONVEYOR_CLI, "--broker", shared_rabbitmq_url(), "enqueue",
                                       "r.add", "--args", "[40, 2]", "--queue", q, "--wait", "20"},
                                      {}, {}, 30s);
    ASSERT_EQ(rc, 0) << out;
    auto nl = out.find('\n');
    ASSERT_NE(nl, std::string::npos) << out;
    auto j = Json::parse(out.substr(nl + 1));
    EXPECT_EQ(j["state"], "SUCCESS");
    EXPECT_EQ(j["result"], 42);
    EXPECT_EQ(j["id"], out.substr(0, nl));
}

// Unique tasks on RabbitMQ: the key is kept in the Redis result backend.

TEST(AmqpUnique, AThousandConcurrentEnqueuesWithOneKeyYieldOneTask) {
    auto q = unique_name("unique");
    auto broker = open_with(queues({q}), redis_url());
    const std::string key = unique_name("order-7");
    std::vector<std::string> ids(1000);
    std::atomic<int> failed{0};
    {
        std::vector<std::jthread> threads;
        for (int t = 0; t < 8; ++t)
            threads.emplace_back([&, t] {
                Client c(broker);
                for (int i = t; i < 1000; i += 8) {
                    auto id =
                        c.enqueue("r.add", {1, 2}, Json::object(), {.queue = q, .unique_key = key});
                    if (id)
                        ids[std::size_t(i)] = *id;
                    else
                        failed++;
                }
            });
    }
    ASSERT_EQ(failed.load(), 0);
    std::set<std::string> distinct(ids.begin(), ids.end());
    ASSERT_EQ(distinct.size(), 1u);
    // One message in the queue, and its id is the one every enqueue returned.
    auto consumer = *broker->consume({.queues = {q}, .prefetch = 100});
    std::vector<Delivery> got;
    eventually(
        [&] {
            auto r = consumer->fetch(100, 200ms);
            if (r) std::move(r->begin(), r->end(), std::back_inserter(got));
            return false;  // look for a second until the time is up
        },
        1500ms);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].message_id, *distinct.begin());
    // The key lapses a week after the task was due if it never settled, not before.
    auto ttl = std::stoll(redis_cli("PTTL", "conveyor-unique-" + key));
    EXPECT_GT(ttl, 6LL * 24 * 3600 * 1000);
    // Run: the key goes with the task, and the next enqueue makes a new task.
    Settlement ack{.kind = Settlement::Kind::ack, .tag = got[0].tag};
    ASSERT_TRUE(consumer->settle(std::span(&ack, 1)));
    EXPECT_EQ(redis_cli("EXISTS", "conveyor-unique-" + key), "0");
    Client c(broker);
    auto next = c.enqueue("r.add", {1, 2}, Json::object(), {.queue = q, .unique_key = key});
    ASSERT_TRUE(next) << next.error().message;
    EXPECT_NE(*next, *distinct.begin());
}

TEST(AmqpUnique, AKeyStaysThroughRetriesAndGoesWhenTheTaskSucceedsOrIsDeadLettered) {
    auto q = unique_name("unique-run");
    auto broker = open_with(queues({q}), redis_url());
    BackgroundWorker w(open_with(queues({q}), redis_url()), options_for({q}, 2));
    register_handlers(w.worker);
    w.start();
    Client client(broker);
    const std::string key = unique_name("flaky");
    EnqueueOptions o{.queue = q, .unique_key = key};
    auto first = client.enqueue("r.flaky", Json::array(), Json::object(), o);
    ASSERT_TRUE(first) << first.error().message;
    // While it waits for its second attempt, the key is still its own.
    ASSERT_TRUE(eventually(
        [&] {
            auto now = client.result(*first);
            return now && now->state == TaskState::retry;
        },
        10s));
    auto during = client.enqueue("r.flaky", Json::array(), Json::object(), o);
    ASSERT_TRUE(during);
    EXPECT_EQ(*during, *first);
    auto r = client.wait(*first, 20s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_TRUE(
        eventually([&] { return redis_cli("EXISTS", "conveyor-unique-" + key) == "0"; }, 5s));
    auto after = client.enqueue("r.add", {1, 1}, Json::object(), o);
    ASSERT_TRUE(after);
    EXPECT_NE(*after, *first);
    ASSERT_TRUE(client.wait(*after, 20s));

    // Dead-lettered: the key goes too.
    const std::string bad_key = unique_name("fails");
    auto bad = client.enqueue("r.fail", Json::array(), Json::object(),
                              {.queue = q, .unique_key = bad_key});
    ASSERT_TRUE(bad);
    r = client.wait(*bad, 20s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::failure);
    EXPECT_TRUE(
        eventually([&] { return redis_cli("EXISTS", "conveyor-unique-" + bad_key) == "0"; }, 5s));
}

TEST(AmqpUnique, UniqueForHoldsTheKeyAfterTheTaskEndsAndADeadPublishersKeyLapses) {
    auto q = unique_name("unique-for");
    auto broker = open_with(queues({q}), redis_url());
    BackgroundWorker w(open_with(queues({q}), redis_url()), options_for({q}, 2));
    register_handlers(w.worker);
    w.start();
    Client client(broker);
    const std::string key = unique_name("daily");
    EnqueueOptions o{.queue = q, .unique_key = key, .unique_for = 3s};
    auto first = client.enqueue("r.add", {2, 2}, Json::object(), o);
    ASSERT_TRUE(first) << first.error().message;
    auto r = client.wait(*first, 20s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::success);
    auto held = client.enqueue("r.add", {2, 2}, Json::object(), o);
    ASSERT_TRUE(held);
    EXPECT_EQ(*held, *first) << "held for its period after it ended";
    std::this_thread::sleep_for(3500ms);
    auto later = client.enqueue("r.add", {2, 2}, Json::object(), {.queue = q, .unique_key = key});
    ASSERT_TRUE(later);
    EXPECT_NE(*later, *first);
    ASSERT_TRUE(client.wait(*later, 20s));

    // A publisher that took a key and died before publishing holds it only for its lease.
    const std::string ghost_key = unique_name("ghost");
    results::RedisResults redis(*results::parse_redis_url(testsupport::shared_redis_url()));
    auto taken = redis.take_unique(ghost_key, "ghost-id", std::nullopt, 500ms);
    ASSERT_TRUE(taken);
    EXPECT_EQ(*taken, "ghost-id");
    auto blocked =
        client.enqueue("r.add", {1, 1}, Json::object(), {.queue = q, .unique_key = ghost_key});
    ASSERT_TRUE(blocked);
    EXPECT_EQ(*blocked, "ghost-id");
    std::this_thread::sleep_for(700ms);
    auto free =
        client.enqueue("r.add", {1, 1}, Json::object(), {.queue = q, .unique_key = ghost_key});
    ASSERT_TRUE(free);
    EXPECT_NE(*free, "ghost-id");
}

TEST(AmqpUnique, WithoutTheRedisBackendAUniqueKeyIsRefusedWithASentence) {
    auto broker = open_with(queues({}));
    Client client(broker);
    auto r = client.enqueue("r.add", {1, 1}, Json::object(), {.queue = "x", .unique_key = "k"});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("unique tasks on RabbitMQ are kept in the Redis result "
                                     "backend: add ?results=redis://"),
              std::string::npos)
        << r.error().message;
}

TEST(AmqpUnique, CliEnqueueWithAUniqueKeyPrintsTheHoldersIdAndExitsZero) {
    auto q = unique_name("cli-unique");
    auto broker = open_with(queues({q}), redis_url());  // declares the queue
    const std::string key = unique_name("report");
    auto enqueue = [&] {
        return testsupport::run({CONVEYOR_CLI, "--broker", redis_url(), "enqueue", "r.add",
                                 "--args", "[1, 2]", "--queue", q, "--unique-key", key},
                                {}, {}, 30s);
    };
    auto [rc1, first] = enqueue();
    ASSERT_EQ(rc1, 0) << first;
    auto [rc2, second] = enqueue();
    ASSERT_EQ(rc2, 0) << second;
    EXPECT_EQ(second, first);
    EXPECT_FALSE(first.empty());
    auto counts = broker->stats();
    ASSERT_TRUE(counts) << counts.error().message;
    bool seen = false;
    for (auto& s : *counts)
        if (s.queue == q) {
            seen = true;
            EXPECT_EQ(s.ready, 1) << "one message stored";
        }
    EXPECT_TRUE(seen);
    // Without the Redis backend: one sentence and a non-zero exit.
    auto [rc3, refused] = testsupport::run({CONVEYOR_CLI, "--broker", shared_rabbitmq_url(),
                                            "enqueue", "r.add", "--queue", q, "--unique-key", key},
                                           {}, {}, 30s);
    EXPECT_NE(rc3, 0);
    EXPECT_NE(refused.find("Redis result backend"), std::string::npos) << refused;
}
