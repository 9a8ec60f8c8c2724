// Results on RabbitMQ: Celery's rpc:// backend (replies to the sender's queue) and redis://
// backend (celery-task-meta-<id> keys), against the suite's RabbitMQ node and redis-server.

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>

#include "conveyor/client.hpp"
#include "integration/helpers.hpp"
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
