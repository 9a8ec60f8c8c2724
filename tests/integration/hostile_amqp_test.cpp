// An adversary with a plain AMQP client (rabbitmq-c, no Conveyor codec) on the worker's vhost:
// every malformed message is dead-lettered with its reason, every malformed remote-control
// broadcast is ignored, and the `conveyor worker` process carries on, its memory back near its
// baseline after the big ones.

#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>

#include "broker/amqp/amqp_connection.hpp"
#include "conveyor/broker.hpp"
#include "conveyor/config.hpp"
#include "conveyor/engine.hpp"
#include "core/url.hpp"
#include "support/process.hpp"
#include "support/rabbitmq.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::eventually;
using testsupport::Process;
using testsupport::TempDir;

namespace {

/// A bare rabbitmq-c connection that publishes whatever it is given.
class RawPublisher {
  public:
    RawPublisher() {
        auto url = detail::parse_broker_url(testsupport::shared_rabbitmq_url());
        auto o = amqp::parse_connection_options(*url);
        auto c = amqp::Connection::open(*o, "hostile-publisher");
        EXPECT_TRUE(c) << c.error().message;
        conn_ = std::move(*c);
    }
    void publish(const std::string& exchange, const std::string& key, const Envelope& env) {
        amqp::Wire w{exchange, key, &env, false};
        auto ok = conn_->publish(std::span(&w, 1), std::chrono::steady_clock::now() + 60s);
        ASSERT_TRUE(ok) << ok.error().message;
    }

  private:
    std::unique_ptr<amqp::Connection> conn_;
};

std::string nested(std::size_t depth) {
    return std::string(depth, '[') + "1" + std::string(depth, ']');
}

std::string zlib_of(const std::string& in) {
    uLongf n = compressBound(uLong(in.size()));
    std::string out(n, '\0');
    compress2(reinterpret_cast<Bytef*>(out.data()), &n, reinterpret_cast<const Bytef*>(in.data()),
              uLong(in.size()), 9);
    out.resize(n);
    return out;
}

Envelope task(const std::string& id, const std::string& name, std::string body = "[[], {}, {}]",
              Json extra_headers = Json::object()) {
    Envelope e;
    e.content_type = "application/json";
    e.content_encoding = "utf-8";
    e.headers = {{"task", name}, {"id", id}, {"lang", "py"}};
    for (auto& [k, v] : extra_headers.items()) e.headers[k] = v;
    e.body = std::move(body);
    return e;
}

long rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}

struct Case {
    std::string id;
    Envelope env;
    std::string reason;  ///< what its dead letter's reason says
};

}  // namespace

TEST(HostileInput, MalformedMessagesAndBroadcastsNeverStopAWorker) {
    TempDir dir;
    const std::string queue = testsupport::unique_name("hostile");
    const std::string node = queue + "@test";
    const std::string ran = dir.file("ran");
    testsupport::write_file(
        dir.file("conveyor.toml"),
        "broker = \"" + testsupport::shared_rabbitmq_url() + "\"\n" + "[[queue]]\nname = \"" +
            queue + "\"\n" + "[[task]]\nname = \"ok\"\nqueue = \"" + queue +
            "\"\nmax_retries = 0\nexec = [\"/bin/sh\", \"-c\", \"cat > /dev/null; echo "
            "\\\"$CONVEYOR_TASK_ID\\\" >> " +
            ran + "\"]\n" + "[[task]]\nname = \"fails\"\nqueue = \"" + queue +
            "\"\nmax_retries = 0\nexec = [\"/bin/sh\", \"-c\", \"exit 3\"]\n");
    Process worker({CONVEYOR_CLI, "--config", dir.file("conveyor.toml"), "worker", "--name", node,
                    "--concurrency", "2"},
                   dir.file("worker.out"), {}, dir.path().string());
    auto broker = Broker::open(testsupport::shared_rabbitmq_url());
    ASSERT_TRUE(broker);
    auto cfg = load_config(dir.file("conveyor.toml"));
    ASSERT_TRUE(cfg);
    ASSERT_TRUE((*broker)->set_topology(cfg->topology()));
    ASSERT_TRUE((*broker)->declare_topology());  // before anything is published to it
    RawPublisher raw;

    // A good task first: the worker is up, and its memory has a baseline.
    raw.publish("", queue, task("warm-up", "ok"));
    ASSERT_TRUE(eventually(
        [&] { return testsupport::read_file(ran).find("warm-up") != std::string::npos; }, 30s))
        << testsupport::read_file(dir.file("worker.out"));
    long baseline = rss_kib(worker.pid());

    std::vector<Case> cases;
    cases.push_back({"not-json", task("not-json", "ok", "{{{"), "not valid JSON"});
    cases.push_back({"args-string", task("args-string", "ok", R"(["x", {}, {}])"),
                     "args (body[0]) is not a JSON array"});
    cases.push_back({"bad-utf8", task("bad-utf8", "ok", "[[\"\xff\xfe\"], {}, {}]"),
                     "not valid JSON (or not valid UTF-8)"});
    {
        Envelope e = task("pickle", "ok");
        e.content_type = "application/x-python-serialize";
        cases.push_back({"pickle", e, "unsupported content_type"});
    }
    {
        Envelope e = task("no-content-type", "ok");
        e.content_type.clear();
        cases.push_back({"no-content-type", e, "no content_type"});
    }
    cases.push_back(
        {"zlib-bomb",
         task("zlib-bomb", "ok", zlib_of("[[\"" + std::string(40u << 20, 'a') + "\"], {}, {}]"),
              {{"compression", "application/x-gzip"}}),
         "compressed body exceeds the limit"});
    cases.push_back({"huge-body", task("huge-body", "ok", std::string(100u << 20, ' ')),
                     "body of 104857600 bytes exceeds the limit"});
    cases.push_back({"shell", task("shell", "$(touch PWNED1)`touch PWNED2`;touch PWNED3|x"),
                     "no handler registered for task '$(touch PWNED1)"});
    cases.push_back({"deep-args", task("deep-args", "ok", "[" + nested(100000) + ", {}, {}]"),
                     "body nests deeper than 128 levels"});
    {
        Json deep = Json::object();
        for (int i = 0; i < 5000; ++i) deep = Json{{"x", deep}};
        cases.push_back({"deep-headers",
                         task("deep-headers", "ok", "[[], {}, {}]", {{"x-deep", deep}}),
                         "headers nest deeper than 128 levels"});
    }
    cases.push_back({"bad-callback",
                     task("bad-callback", "ok",
                          R"([[], {}, {"callbacks": [{"subtask_type": "group", )"
                          R"("kwargs": {"tasks": [1]}}]}])"),
                     "workflow: a workflow member is not a signature"});
    cases.push_back({"bad-errback",
                     task("bad-errback", "fails", R"([[], {}, {"errbacks": ["x"]}])"),
                     "failed after 0 retries: ProcessError"});
    cases.push_back(
        {"huge-timelimit",
         task("huge-timelimit", "ok", "[[], {}, {}]", {{"timelimit", {1e300, nullptr}}}),
         "timelimit hard is 1e+300"});
    // (A NaN double in a header cannot get this far: RabbitMQ closes the publisher's channel
    // with INTERNAL_ERROR. The codec refuses one all the same; see the unit tests.)
    cases.push_back(
        {"huge-max-retries",
         task("huge-max-retries", "ok", "[[], {}, {}]", {{"max_retries", 99999999999999LL}}),
         "header 'max_retries' is 99999999999999, outside 0..1000000"});
    cases.push_back({"retries-string",
                     task("retries-string", "ok", "[[], {}, {}]", {{"retries", "x"}}),
                     "header 'retries' is not an integer"});
    cases.push_back({"bad-utf8-header",
                     task("bad-utf8-header", "ok", "nope", {{"x-bad", "\xff\xfe"}}),
                     "not valid JSON"});
    cases.push_back({"compression-bad-utf8",
                     task("compression-bad-utf8", "ok", "[[], {}, {}]", {{"compression", "\xff"}}),
                     "unsupported compression"});
    // A task that fails goes to the dead letters as it came: masked argument reprs, a shadow
    // name, a number beyond 64 bits, and its body byte for byte.
    const std::string masked_body = R"([[123456789012345678901234567890, "secret"], {}, {}])";
    cases.push_back({"masked",
                     task("masked", "fails", masked_body,
                          {{"argsrepr", "('***', '***')"}, {"shadow", "alias"}}),
                     "failed after 0 retries"});
    for (auto& c : cases) raw.publish("", queue, c.env);
    // Header names rabbitmq-c's own table copy refuses (empty ones), at the top and nested: the
    // tasks run.
    const std::vector<std::pair<std::string, Json>> empty_names = {
        {"empty-name", Json{{"", 1}}}, {"empty-name-nested", Json{{"x-e", {{"", "v"}}}}}};
    for (auto& [id, h] : empty_names) raw.publish("", queue, task(id, "ok", "[[], {}, {}]", h));

    // Far-future times: an ETA in year 9999 waits in the broker; an expiry then never passes.
    raw.publish("", queue,
                task("eta-9999", "ok", "[[], {}, {}]", {{"eta", "9999-12-31T23:59:59+00:00"}}));
    raw.publish(
        "", queue,
        task("expires-9999", "ok", "[[], {}, {}]", {{"expires", "9999-01-01T00:00:00+00:00"}}));

    // The time a publisher stamps for the wait-time metric, as anyone might forge it: the task
    // runs all the same (the time only counts between 1970 and 9999).
    const std::vector<std::pair<std::string, Json>> sent_at = {
        {"sent-at-huge", std::numeric_limits<std::int64_t>::max()},
        {"sent-at-negative", -5},
        {"sent-at-string", "soon"},
        {"sent-at-float", 1.5e300}};
    for (auto& [id, v] : sent_at)
        raw.publish("", queue, task(id, "ok", "[[], {}, {}]", {{"x-conveyor-sent-at", v}}));
    // A unique key's header, forged by any publisher: not a string, or longer than any key a
    // publisher may take. The task runs; the header is not taken for a key.
    const std::vector<std::pair<std::string, Json>> unique_header = {
        {"unique-number", 7},
        {"unique-object", Json{{"k", Json::array({1})}}},
        {"unique-long", std::string(4096, 'u')}};
    for (auto& [id, v] : unique_header)
        raw.publish("", queue, task(id, "ok", "[[], {}, {}]", {{"x-conveyor-unique", v}}));

    // Remote-control broadcasts to every worker of the vhost, each once fatal or worse.
    for (
        const std::string& body : std::vector<std::string>{
            R"({"method": "revoke", "arguments": {"task_id": [1]}})",
            R"({"method": "revoke", "arguments": {"task_id": "x", "terminate": "yes"}})",
            R"({"method": "hello", "arguments": {"from_node": 5, "revoked": [1]}})",
            R"({"method": "ping", "reply_to": {"exchange": 5, "routing_key": []}})",
            R"({"method": "query_task", "arguments": {"ids": {"a": 1}}})", R"({"method": 5})",
            R"({"method": "rate_limit", "arguments": {"task_name": [1], "rate_limit": "1/s"}})",
            R"({"method": "rate_limit", "arguments": {"task_name": "ok", "rate_limit": {}}})",
            R"({"method": "rate_limit", "arguments": {"task_name": "ok", "rate_limit": "1e400/s"}})",
            R"({"method": "rate_limit", "arguments": {"task_name": "ok", "rate_limit": "-5/m"}})",
            R"({"method": "rate_limit", "arguments": "x"})", "not json at all",
            std::string(R"({"method": "ping", "x": )") + nested(50000) + "}",
            std::string(2u << 20, '{')}) {
        Envelope e;
        e.content_type = "application/json";
        e.body = body;
        raw.publish("celery.pidbox", "", e);
    }

    // Every malformed message is dead-lettered with its reason.
    std::vector<DeadLetter> dead;
    eventually(
        [&] {
            auto d = (*broker)->dead_letters(queue, 100);
            if (d) dead = *d;
            return dead.size() >= cases.size();
        },
        60s);
    std::map<std::string, std::string> reason_of;
    for (auto& d : dead) reason_of[d.message_id] = d.reason;
    for (auto& c : cases) {
        ASSERT_TRUE(reason_of.contains(c.id)) << c.id << " was not dead-lettered; worker says:\n"
                                              << testsupport::read_file(dir.file("worker.out"));
        EXPECT_NE(reason_of[c.id].find(c.reason), std::string::npos)
            << c.id << ": " << reason_of[c.id];
    }
    EXPECT_EQ(dead.size(), cases.size());
    for (auto& d : dead)
        if (d.message_id == "masked") {
            EXPECT_EQ(d.envelope.body, masked_body);
            EXPECT_EQ(d.envelope.headers.value("argsrepr", ""), "('***', '***')");
            EXPECT_EQ(d.envelope.headers.value("shadow", ""), "alias");
        }
    for (auto f : {"PWNED1", "PWNED2", "PWNED3"})
        EXPECT_FALSE(std::filesystem::exists(dir.file(f))) << f;

    // The worker lives, still runs tasks, and answers a ping.
    EXPECT_FALSE(worker.wait(0ms)) << testsupport::read_file(dir.file("worker.out"));
    raw.publish("", queue, task("after", "ok"));
    // Each of them ran (the worker runs several at once: "after" may end before the others).
    std::vector<std::string> to_run = {"after", "expires-9999"};
    for (auto& [id, _] : sent_at) to_run.push_back(id);
    for (auto& [id, _] : unique_header) to_run.push_back(id);
    for (auto& [id, _] : empty_names) to_run.push_back(id);
    ASSERT_TRUE(eventually(
        [&] {
            std::string ran_ids = testsupport::read_file(ran);
            return std::all_of(to_run.begin(), to_run.end(), [&](const std::string& id) {
                return ran_ids.find(id) != std::string::npos;
            });
        },
        30s))
        << testsupport::read_file(ran);
    std::string ran_ids = testsupport::read_file(ran);
    EXPECT_NE(ran_ids.find("expires-9999"), std::string::npos) << ran_ids;
    EXPECT_EQ(ran_ids.find("eta-9999"), std::string::npos) << ran_ids;
    for (auto& [id, _] : sent_at) EXPECT_NE(ran_ids.find(id), std::string::npos) << id;
    for (auto& [id, _] : unique_header) EXPECT_NE(ran_ids.find(id), std::string::npos) << id;
    EXPECT_EQ(reason_of.count("eta-9999"), 0u);
    {
        std::string replies = testsupport::unique_name("hostile-replies");
        Topology t;
        t.exchanges.push_back(
            ExchangeSpec{.name = "reply.celery.pidbox", .type = "direct", .durable = false});
        t.queues.push_back(QueueSpec{.name = replies});
        t.bindings.push_back(BindingSpec{
            .exchange = "reply.celery.pidbox", .queue = replies, .routing_key = replies});
        auto rb = Broker::open(testsupport::shared_rabbitmq_url());
        ASSERT_TRUE(rb && (*rb)->set_topology(t) && (*rb)->declare_topology());
        auto consumer = (*rb)->consume(ConsumerOptions{.queues = {replies}});
        ASSERT_TRUE(consumer);
        Envelope ping;
        ping.content_type = "application/json";
        ping.body = Json{
            {"method", "ping"},
            {"destination", {node}},
            {"reply_to", {{"exchange", "reply.celery.pidbox"}, {"routing_key", replies}}},
            {"ticket",
             "t-1"}}.dump();
        raw.publish("celery.pidbox", "", ping);
        std::string answer;
        eventually(
            [&] {
                auto got = (*consumer)->fetch(1, 200ms);
                if (got && !got->empty()) answer = got->front().envelope.body;
                return !answer.empty();
            },
            20s);
        EXPECT_EQ(Json::parse(answer, nullptr, false), Json({{node, {{"ok", "pong"}}}})) << answer;
    }
    std::string log = testsupport::read_file(dir.file("worker.out"));
    EXPECT_NE(log.find("ignored a remote-control message"), std::string::npos) << log;
    // Its start line names the broker without the password.
    EXPECT_NE(log.find("conveyor worker: broker amqp://guest:***@"), std::string::npos) << log;
    EXPECT_EQ(log.find("guest:guest"), std::string::npos) << log;

    // The big ones (a 100 MB body, a 40 MB zlib bomb) leave no lasting memory behind.
    long after = -1;
    eventually(
        [&] {
            after = rss_kib(worker.pid());
            return after < baseline + 64 * 1024;
        },
        20s);
    EXPECT_LT(after, baseline + 64 * 1024) << "baseline " << baseline << " KiB";
    // Listing dead letters whose headers hold invalid UTF-8 prints valid JSON.
    auto [rc, out] =
        testsupport::run({CONVEYOR_CLI, "--config", dir.file("conveyor.toml"), "--json", "dlq",
                          "list", "--queue", queue, "--limit", "100"});
    EXPECT_EQ(rc, 0) << out;
    Json listed = Json::parse(out, nullptr, false);
    ASSERT_TRUE(listed.is_array()) << out.substr(0, 500);
    EXPECT_EQ(listed.size(), cases.size());
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(30s), 0) << testsupport::read_file(dir.file("worker.out"));
}

class DeliveryLimitOnRabbitMQ : public ::testing::TestWithParam<std::string> {};

TEST_P(DeliveryLimitOnRabbitMQ, ATaskThatKeepsKillingItsWorkerIsDeadLettered) {
    // Each worker that takes the task is killed while it runs it (as a crash in the task's
    // decoding or handling would do). Classic queues only flag a redelivery, so Conveyor counts
    // them in a header; quorum queues count them themselves (x-delivery-count).
    TempDir dir;
    const std::string queue = testsupport::unique_name("killer-" + GetParam());
    testsupport::write_file(dir.file("conveyor.toml"),
                            "broker = \"" + testsupport::shared_rabbitmq_url() + "\"\n" +
                                "[[queue]]\nname = \"" + queue + "\"\ntype = \"" + GetParam() +
                                "\"\n[[task]]\nname = \"killer\"\nqueue = \"" + queue +
                                "\"\nexec = [\"/bin/sh\", \"-c\", \"echo x >> " +
                                dir.file("started") + "; sleep 30\"]\n");
    auto started = [&] {
        std::string s = testsupport::read_file(dir.file("started"));
        return int(std::count(s.begin(), s.end(), '\n'));
    };
    auto run_worker = [&](const std::string& out) {
        return std::make_unique<Process>(
            std::vector<std::string>{CONVEYOR_CLI, "--config", dir.file("conveyor.toml"), "worker",
                                     "--concurrency", "1", "--prefetch", "1"},
            dir.file(out), std::vector<std::string>{}, dir.path().string());
    };
    auto [rc, id] = testsupport::run({CONVEYOR_CLI, "--config", dir.file("conveyor.toml"),
                                      "enqueue", "killer", "--id", "killer-1"});
    ASSERT_EQ(rc, 0) << id;
    for (int i = 1; i <= 5; ++i) {
        auto w = run_worker("w.out");
        ASSERT_TRUE(eventually([&] { return started() == i; }, 30s))
            << testsupport::read_file(dir.file("w.out"));
        w->signal(SIGKILL);
        w->wait(5s);
    }
    auto last = run_worker("last.out");
    auto broker = Broker::open(testsupport::shared_rabbitmq_url());
    ASSERT_TRUE(broker);
    auto cfg = load_config(dir.file("conveyor.toml"));
    ASSERT_TRUE(cfg && (*broker)->set_topology(cfg->topology()));
    std::vector<DeadLetter> dead;
    ASSERT_TRUE(eventually(
        [&] {
            auto d = (*broker)->dead_letters(queue, 10);
            if (d) dead = *d;
            return !dead.empty();
        },
        30s))
        << testsupport::read_file(dir.file("last.out"));
    EXPECT_EQ(dead[0].message_id, "killer-1");
    EXPECT_EQ(dead[0].reason, "delivered 6 times without being settled (delivery limit 5)");
    EXPECT_EQ(started(), 5);
    // Replayed, it starts counting afresh (and is delivered again).
    auto replayed = (*broker)->replay_dead(queue, {});
    ASSERT_TRUE(replayed) << replayed.error().message;
    EXPECT_EQ(*replayed, 1u);
    EXPECT_TRUE(eventually([&] { return started() == 6; }, 30s));
    last->signal(SIGKILL);
}

INSTANTIATE_TEST_SUITE_P(QueueTypes, DeliveryLimitOnRabbitMQ,
                         ::testing::Values("classic", "quorum"));
