// Worker processes on a private RabbitMQ node: SIGKILLed workers, broker restarts, failover.

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <sstream>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "support/http.hpp"
#include "support/process.hpp"
#include "support/queue_stats.hpp"
#include "support/rabbitmq.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::eventually;
using testsupport::lines_with;
using testsupport::Process;
using testsupport::RabbitNode;
using testsupport::read_file;
using testsupport::stats_of;
using testsupport::TempDir;

namespace {

std::unique_ptr<Process> start_worker(const TempDir& dir, const std::string& url,
                                      const std::string& queues, int concurrency,
                                      const std::string& config = {},
                                      const std::string& out = "worker.out",
                                      const std::string& http = {}) {
    std::vector<std::string> argv = {
        CONVEYOR_TEST_WORKER, url, queues, std::to_string(concurrency), "30000", "5000",
        dir.file("log")};
    std::vector<std::string> env;
    if (!config.empty()) env.push_back("CONVEYOR_CONFIG=" + config);
    if (!http.empty()) env.push_back("CONVEYOR_TEST_HTTP=" + http);
    return std::make_unique<Process>(argv, dir.file(out), env);
}

std::vector<std::string> fields(const std::string& line) {
    std::istringstream in(line);
    std::vector<std::string> out;
    for (std::string f; in >> f;) out.push_back(f);
    return out;
}

/// Writes `toml` to DIR/conveyor.toml and opens the node's broker with its topology.
std::shared_ptr<Broker> broker_with_config(const RabbitNode& node, const TempDir& dir,
                                           const std::string& toml) {
    testsupport::write_file(dir.file("conveyor.toml"), toml);
    auto cfg = load_config(dir.file("conveyor.toml"));
    EXPECT_TRUE(cfg) << cfg.error().message;
    auto broker = Broker::open(node.url());
    EXPECT_TRUE(broker) << broker.error().message;
    auto ok = (*broker)->set_topology(cfg->topology());
    EXPECT_TRUE(ok) << ok.error().message;
    return *broker;
}

}  // namespace

TEST(AmqpProcesses, TenThousandTasksFannedOutToThreeQueuesSurviveAWorkerKillAndABrokerRestart) {
    RabbitNode node;
    ASSERT_FALSE(node.url().empty());
    TempDir dir;
    auto broker = broker_with_config(node, dir, R"(
[[exchange]]
name = "orders"
type = "fanout"
[[binding]]
exchange = "orders"
queue = "inventory"
[[binding]]
exchange = "orders"
queue = "billing"
[[binding]]
exchange = "orders"
queue = "shipping"
)");
    ASSERT_TRUE(broker->declare_topology());
    Client client(broker);
    const int n = 10000;
    auto publish = [&](int from, int to) {
        std::vector<TaskMessage> tasks;
        for (int i = from; i < to; ++i)
            tasks.push_back(
                TaskMessage{.id = "order-" + std::to_string(i), .name = "test.noop", .args = {i}});
        auto ids = client.enqueue_many(std::move(tasks), {.exchange = "orders"});
        ASSERT_TRUE(ids) << ids.error().message;
    };
    publish(0, n / 2);

    // One worker per service, and a second billing worker that gets killed.
    std::string cfg_path = dir.file("conveyor.toml");
    std::vector<std::unique_ptr<Process>> workers;
    workers.push_back(start_worker(dir, node.url(), "billing", 2, cfg_path));
    workers.push_back(start_worker(dir, node.url(), "inventory", 2, cfg_path));
    workers.push_back(start_worker(dir, node.url(), "billing", 2, cfg_path));
    // The shipping worker serves its health check: it follows the broker's restart.
    workers.push_back(
        start_worker(dir, node.url(), "shipping", 2, cfg_path, "shipping.out", "127.0.0.1:0"));
    std::string health_url = testsupport::served_url(dir.file("shipping.out"), 20s);
    ASSERT_FALSE(health_url.empty()) << read_file(dir.file("shipping.out"));
    EXPECT_EQ(testsupport::http_request(health_url, "/healthz").status, 200);
    ASSERT_TRUE(
        eventually([&] { return lines_with(dir.file("log"), "done").size() >= 3000; }, 60s));
    workers[0]->signal(SIGKILL);
    ASSERT_EQ(workers[0]->wait(5s), 128 + SIGKILL);

    // Restart the broker mid-run: confirmed tasks survive, workers and the client reconnect.
    node.stop();
    auto down = testsupport::await_status(health_url, "/healthz", 503, 20s);
    EXPECT_EQ(down.status, 503) << down.body << read_file(dir.file("shipping.out"));
    // Why: the connection is lost, or a call to the broker has not returned for seconds.
    EXPECT_TRUE(down.body.find("RabbitMQ") != std::string::npos ||
                down.body.find("has not returned") != std::string::npos)
        << down.body;
    ASSERT_TRUE(node.start());
    publish(n / 2, n);
    EXPECT_TRUE(eventually(
        [&] { return testsupport::http_request(health_url, "/healthz").status == 200; }, 60s));

    std::map<std::string, std::set<std::string>> done;  // queue -> task ids
    ASSERT_TRUE(eventually(
        [&] {
            done.clear();
            for (auto& l : lines_with(dir.file("log"), "done")) {
                auto f = fields(l);
                if (f.size() >= 4) done[f[3]].insert(f[1]);
            }
            return done["inventory"].size() == n && done["billing"].size() == n &&
                   done["shipping"].size() == n;
        },
        180s))
        << "inventory " << done["inventory"].size() << ", billing " << done["billing"].size()
        << ", shipping " << done["shipping"].size();
    for (std::size_t i = 1; i < workers.size(); ++i) {
        workers[i]->signal(SIGTERM);
        EXPECT_EQ(workers[i]->wait(15s), 0);
    }
    // Each worker that lived through the restart said so: connection lost, then restored.
    std::string said = read_file(dir.file("worker.out")) + read_file(dir.file("shipping.out"));
    auto count = [&](std::string_view what) {
        int n = 0;
        for (auto at = said.find(what); at != std::string::npos; at = said.find(what, at + 1)) ++n;
        return n;
    };
    EXPECT_GE(count("WARNING RabbitMQ connection lost"), 3) << said;
    EXPECT_GE(count("INFO RabbitMQ connection restored"), 3) << said;
    for (auto q : {"inventory", "billing", "shipping"}) {
        auto s = stats_of(*broker, q);
        EXPECT_EQ(s.ready, 0) << q;
        EXPECT_EQ(s.dead, 0) << q;
    }
}

TEST(AmqpProcesses, OrderedQueueFailsOverToAnotherWorkerAndKeepsEachKeyInOrder) {
    RabbitNode node;
    ASSERT_FALSE(node.url().empty());
    TempDir dir;
    auto broker = broker_with_config(node, dir, R"(
[[queue]]
name = "ledger"
partitions = 4
)");
    Client client(broker);
    const int keys = 6, per_key = 40;
    for (int s = 0; s < per_key; ++s)
        for (int k = 0; k < keys; ++k) {
            std::string key = "customer-" + std::to_string(k);
            ASSERT_TRUE(client.enqueue("test.ordered", {key, s, 5}, Json::object(),
                                       {.queue = "ledger", .ordering_key = key}));
        }
    auto first = start_worker(dir, node.url(), "ledger", 4, dir.file("conveyor.toml"));
    // The standby registers once the first is active on every partition.
    ASSERT_TRUE(eventually([&] { return !lines_with(dir.file("log"), "done").empty(); }, 30s));
    auto standby = start_worker(dir, node.url(), "ledger", 4, dir.file("conveyor.toml"));
    ASSERT_TRUE(eventually([&] { return lines_with(dir.file("log"), "done").size() >= 60; }, 30s));
    first->signal(SIGKILL);
    ASSERT_EQ(first->wait(5s), 128 + SIGKILL);

    std::map<std::string, std::vector<int>> seqs;
    std::set<std::string> pids;
    ASSERT_TRUE(eventually(
        [&] {
            seqs.clear();
            std::set<std::string> ids;
            for (auto& l : lines_with(dir.file("log"), "done")) {
                auto f = fields(l);
                if (f.size() < 6) continue;  // not an ordered task's line
                seqs[f[4]].push_back(std::stoi(f[5]));
                ids.insert(f[1]);
                pids.insert(f[2]);
            }
            return ids.size() == std::size_t(keys * per_key);
        },
        60s));
    EXPECT_EQ(pids.size(), 2u);  // the standby took over
    for (auto& [key, v] : seqs) {
        // A task the killed worker finished without acking runs again: never out of order.
        for (std::size_t i = 1; i < v.size(); ++i) EXPECT_LE(v[i - 1], v[i]) << key;
        EXPECT_EQ(std::set<int>(v.begin(), v.end()).size(), std::size_t(per_key)) << key;
    }
    standby->signal(SIGTERM);
    EXPECT_EQ(standby->wait(15s), 0);
}

TEST(AmqpProcesses, AWorkerAndASchedulerStartedWhileRabbitMqIsDownWaitAndThenServe) {
    RabbitNode node;
    std::string url = node.url();
    node.stop();
    TempDir dir;
    testsupport::write_file(dir.file("conveyor.toml"),
                            "broker = \"" + url +
                                "\"\n"
                                "[[queue]]\nname = \"jobs\"\n"
                                "[[task]]\nname = \"t.job\"\nqueue = \"jobs\"\n"
                                "exec = \"echo $CONVEYOR_TASK_ID >> " +
                                dir.file("ran") +
                                "\"\n"
                                "[[schedule]]\nname = \"tick\"\ntask = \"t.job\"\nevery = 1\n"
                                "queue = \"jobs\"\n");
    auto cli = [&](std::vector<std::string> args, const std::string& out) {
        args.insert(args.begin(), {CONVEYOR_CLI, "--config", dir.file("conveyor.toml")});
        return std::make_unique<Process>(args, dir.file(out), std::vector<std::string>{},
                                         dir.path().string());
    };
    auto worker = cli({"worker"}, "worker.out");
    auto scheduler = cli({"scheduler"}, "scheduler.out");
    // Each waits, one line per attempt, and neither gives up.
    auto attempts = [&](const std::string& out) {
        auto text = read_file(dir.file(out));
        std::size_t n = 0;
        for (std::size_t at = 0; (at = text.find("retrying in", at)) != std::string::npos; ++at)
            ++n;
        return n;
    };
    ASSERT_TRUE(eventually([&] { return attempts("worker.out") >= 3; }, 60s))
        << read_file(dir.file("worker.out"));
    ASSERT_TRUE(eventually([&] { return attempts("scheduler.out") >= 3; }, 60s))
        << read_file(dir.file("scheduler.out"));
    EXPECT_FALSE(worker->wait(0ms));
    EXPECT_FALSE(scheduler->wait(0ms));
    for (auto* out : {"worker.out", "scheduler.out"}) {
        auto text = read_file(dir.file(out));
        EXPECT_EQ(text.find(":guest@"), std::string::npos) << text;  // the password stays hidden
        EXPECT_NE(text.find("refused"), std::string::npos) << text;  // and it says why
    }

    // The broker comes up: the schedule fires and the worker runs what it sends.
    ASSERT_TRUE(node.start());
    ASSERT_TRUE(eventually([&] { return !read_file(dir.file("ran")).empty(); }, 90s))
        << read_file(dir.file("worker.out")) << read_file(dir.file("scheduler.out"));
    worker->signal(SIGTERM);
    scheduler->signal(SIGTERM);
    EXPECT_EQ(worker->wait(60s), 0) << read_file(dir.file("worker.out"));
    EXPECT_EQ(scheduler->wait(60s), 0) << read_file(dir.file("scheduler.out"));
}
