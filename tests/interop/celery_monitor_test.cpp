// Celery's monitoring and remote control (Debian python3-celery 5.2.6) pointed at Conveyor
// workers: `celery inspect`, revoke (with and without terminate), shutdown, and the event
// stream that `celery events` and Flower read.

#include <gtest/gtest.h>

#include <atomic>

#include "conveyor/client.hpp"
#include "interop/support.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using namespace itest;
using testsupport::eventually;
using testsupport::unique_name;

namespace {

/// Runs celery_monitor.py SCENARIO NODE to completion.
Json monitor(const std::string& scenario, const std::string& node, const std::string& queue) {
    auto [rc, out] = testsupport::run(
        {"/usr/bin/python3", interop::kPeers + "/celery_monitor.py", scenario, node},
        interop::celery_env(queue, "rpc://"), interop::kPeers, 120s);
    EXPECT_EQ(rc, 0) << out;
    return interop::last_json(out);
}

WorkerOptions monitored(const std::string& q, const std::string& node, bool events) {
    auto o = options_for({q}, 2);
    o.node_name = node;
    o.task_events = events;
    return o;
}

}  // namespace

TEST(CeleryMonitor, InspectRevokeAndTerminateWorkOnAConveyorWorker) {
    auto q = unique_name("inspect");
    auto node = q + "@localhost";
    std::atomic<int> adds{0};
    BackgroundWorker w(open_with(queues({q})), monitored(q, node, false));
    w.worker.handle("interop.add", [&](TaskContext& c) -> Json {
        adds++;
        return c.args()[0].get<int>() + c.args()[1].get<int>();
    });
    w.worker.handle("interop.sleep", [](TaskContext& c) -> Json {
        auto until =
            std::chrono::steady_clock::now() + std::chrono::seconds(c.args()[0].get<int>());
        while (!c.stop_requested() && std::chrono::steady_clock::now() < until)
            std::this_thread::sleep_for(20ms);
        return nullptr;
    });
    w.start();

    // The stock CLI first (a loaded machine may take its 1 s reply window: ask again).
    int rc = -1;
    std::string ping;
    for (int attempt = 0; attempt < 3 && rc != 0; ++attempt)
        std::tie(rc, ping) =
            testsupport::run({"/usr/bin/python3", "-m", "celery", "-A", "interop_app", "inspect",
                              "ping", "-d", node},
                             interop::celery_env(q, "rpc://"), interop::kPeers, 60s);
    EXPECT_EQ(rc, 0) << ping;
    EXPECT_NE(ping.find(node + ": OK"), std::string::npos) << ping;
    EXPECT_NE(ping.find("pong"), std::string::npos) << ping;

    auto out = monitor("inspect", node, q);
    EXPECT_EQ(out["ping"], Json({{node, {{"ok", "pong"}}}})) << out.dump();
    auto reg = out["registered"][node];
    EXPECT_NE(std::find(reg.begin(), reg.end(), Json("interop.add")), reg.end()) << out.dump();
    EXPECT_NE(std::find(reg.begin(), reg.end(), Json("interop.sleep")), reg.end());
    EXPECT_EQ(out["stats"][node]["pid"], getpid());
    EXPECT_EQ(out["stats"][node]["pool"]["max-concurrency"], 2);
    EXPECT_EQ(out["scheduled"][node], Json::array());

    auto running = out["running_id"].get<std::string>();
    ASSERT_EQ(out["active"].size(), 1u) << out.dump();
    EXPECT_EQ(out["active"][0]["id"], running);
    EXPECT_EQ(out["active"][0]["name"], "interop.sleep");
    EXPECT_EQ(out["active"][0]["args"], Json::array({30}));
    EXPECT_EQ(out["active"][0]["hostname"], node);
    EXPECT_TRUE(out["active"][0]["time_start"].is_number());
    EXPECT_EQ(out["query_task"][node][running][0], "active");

    EXPECT_EQ(out["terminated"]["exc_type"], "TaskRevokedError") << out.dump();
    EXPECT_EQ(out["terminated_state"], "REVOKED");
    EXPECT_EQ(out["revoked"]["exc_type"], "TaskRevokedError") << out.dump();
    EXPECT_EQ(out["revoked_state"], "REVOKED");
    EXPECT_EQ(adds.load(), 0);  // the revoked task never ran
    auto revoked = out["revoked_list"][node];
    EXPECT_EQ(revoked.size(), 2u) << out.dump();
    EXPECT_NE(std::find(revoked.begin(), revoked.end(), Json(running)), revoked.end());
    EXPECT_NE(out["unknown"].dump().find("KeyError('no_such_cmd')"), std::string::npos)
        << out.dump();
}

TEST(CeleryMonitor, CeleryEventReceiverFollowsAConveyorWorkerAndItsTasks) {
    auto q = unique_name("events");
    auto node = q + "@localhost";
    testsupport::TempDir dir;
    auto log = dir.file("monitor.log");
    testsupport::Process script(
        {"/usr/bin/python3", interop::kPeers + "/celery_monitor.py", "events", node}, log,
        interop::celery_env(q, "rpc://"), interop::kPeers);
    ASSERT_TRUE(eventually(
        [&] { return testsupport::read_file(log).find("LISTENING") != std::string::npos; }, 60s))
        << testsupport::read_file(log);

    BackgroundWorker w(open_with(queues({q})), monitored(q, node, true));
    w.worker.handle("interop.add", [](TaskContext& c) -> Json {
        return c.args()[0].get<int>() + c.args()[1].get<int>();
    });
    w.worker.handle("interop.fail", [](TaskContext& c) -> Json {
        throw TaskError("ValueError", c.args()[0].get<std::string>(), false);
    });
    w.worker.handle("interop.flaky", [](TaskContext& c) -> Json {
        if (c.attempt() == 1) {
            TaskError e("RuntimeError", "try 0");
            e.retry_after = 500ms;
            throw e;
        }
        return "ok";
    });
    w.start();
    auto rc = script.wait(120s);
    ASSERT_TRUE(rc) << testsupport::read_file(log);
    EXPECT_EQ(*rc, 0) << testsupport::read_file(log);
    auto out = interop::last_json(testsupport::read_file(log));

    EXPECT_EQ(out["results"]["ok"], Json({{"value", 5}})) << out.dump();
    EXPECT_EQ(out["results"]["bad"]["exc_type"], "ValueError");
    EXPECT_EQ(out["results"]["flaky"], Json({{"value", "ok"}}));
    EXPECT_TRUE(out["worker_alive"].get<bool>()) << out.dump();
    EXPECT_EQ(out["worker_types"],
              Json::array({"worker-heartbeat", "worker-offline", "worker-online"}))
        << out.dump();
    EXPECT_GE(out["heartbeats"].get<int>(), 2);
    EXPECT_EQ(out["sw_ident"], "conveyor");

    auto has = [](const Json& types, const char* t) {
        return std::find(types.begin(), types.end(), Json(t)) != types.end();
    };
    auto ok = out["tasks"]["ok"];
    EXPECT_EQ(ok["state"], "SUCCESS") << out.dump();
    EXPECT_TRUE(has(ok["types"], "task-received") && has(ok["types"], "task-started") &&
                has(ok["types"], "task-succeeded"))
        << ok.dump();
    EXPECT_EQ(ok["result"], "5");
    auto bad = out["tasks"]["bad"];
    EXPECT_EQ(bad["state"], "FAILURE") << out.dump();
    EXPECT_TRUE(has(bad["types"], "task-failed")) << bad.dump();
    auto flaky = out["tasks"]["flaky"];
    EXPECT_EQ(flaky["state"], "SUCCESS") << out.dump();
    EXPECT_TRUE(has(flaky["types"], "task-retried")) << flaky.dump();

    // `celery control shutdown` stopped the worker.
    ASSERT_TRUE(eventually([&] { return w.worker.stats().running == 0; }, 10s));
    w.thread.join();
    EXPECT_TRUE(w.outcome);
}

TEST(CeleryMonitor, TheConveyorWorkerCommandIsACeleryNodeUnderItsName) {
    auto q = unique_name("cli-node");
    testsupport::TempDir dir;
    testsupport::write_file(dir.file("conveyor.toml"),
                            "broker = \"" + testsupport::shared_rabbitmq_url() +
                                "\"\n[[task]]\nname = \"interop.echo\"\nqueue = \"" + q +
                                "\"\nexec = [\"cat\"]\n");
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    auto node = q + "@" + host;
    testsupport::Process worker({CONVEYOR_CLI, "--config", dir.file("conveyor.toml"), "worker",
                                 "--name", q, "--events", "-Q", q},
                                dir.file("worker.log"));
    auto inspect = [&](const std::string& what) {
        return testsupport::run({"/usr/bin/python3", "-m", "celery", "-A", "interop_app", "inspect",
                                 what, "-d", node, "--json"},
                                interop::celery_env(q, "rpc://"), interop::kPeers, 60s);
    };
    std::string out;
    ASSERT_TRUE(eventually(
        [&] {
            auto [rc, o] = inspect("ping");
            out = o;
            return rc == 0 && o.find("pong") != std::string::npos;
        },
        30s))
        << out << testsupport::read_file(dir.file("worker.log"));
    auto [rc, reg] = inspect("registered");
    EXPECT_EQ(rc, 0) << reg;
    EXPECT_NE(reg.find("interop.echo"), std::string::npos) << reg;
    worker.signal(SIGTERM);
    auto st = worker.wait(20s);
    ASSERT_TRUE(st);
    EXPECT_EQ(*st, 0) << testsupport::read_file(dir.file("worker.log"));
}

TEST(CeleryMonitor, AddAndCancelConsumerConfAndUnsupportedCommands) {
    auto q = unique_name("consumers");
    auto node = q + "@localhost";
    auto extra = q + "-extra";
    BackgroundWorker w(open_with(queues({q, extra})), monitored(q, node, false));
    w.worker.handle("interop.add", [&](TaskContext& c) -> Json {
        return c.args()[0].get<int>() + c.args()[1].get<int>();
    });
    w.start();
    auto out = monitor("consumers", node, q);
    EXPECT_EQ(out["add"], Json::array({{{node, {{"ok", "add consumer " + extra}}}}})) << out.dump();
    EXPECT_EQ(out["active_queues"], Json::array({q, extra})) << out.dump();
    EXPECT_EQ(out["on_extra"]["value"], 42) << out.dump();
    EXPECT_EQ(out["cancel"],
              Json::array({{{node, {{"ok", "no longer consuming from '" + extra + "'"}}}}}))
        << out.dump();
    EXPECT_EQ(out["active_queues_after"], Json::array({q})) << out.dump();
    EXPECT_EQ(out["conf"][node]["worker_concurrency"], 2) << out.dump();
    EXPECT_EQ(out["conf"][node]["broker_url"].get<std::string>().find(":guest@"), std::string::npos)
        << out.dump();
    EXPECT_EQ(
        out["rate_limit"],
        Json::array({{{node, {{"error", "'rate_limit' is not supported by Conveyor workers"}}}}}))
        << out.dump();
    EXPECT_EQ(out["pool_grow"][0][node]["error"],
              "'pool_grow' is not supported by Conveyor workers")
        << out.dump();
}
