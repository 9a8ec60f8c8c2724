// Celery's monitoring and remote control (Debian python3-celery 5.2.6) pointed at Conveyor
// workers: `celery inspect`, revoke (with and without terminate), shutdown, and the event
// stream that `celery events` and Flower read.

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "conveyor/client.hpp"
#include "interop/support.hpp"
#include "support/http.hpp"

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
    // Celery's rate_limit sets the limit across the fleet where the broker keeps limits
    // (sqlite; RabbitMQ with the Redis result backend, which this worker has not), and the
    // reply says so.
    EXPECT_TRUE(out["rate_limit"][0][node]["error"].get<std::string>().starts_with(
        "task 'interop.add': rate and concurrency limits on RabbitMQ are kept in the Redis "
        "result backend"))
        << out.dump();
    EXPECT_EQ(out["pool_grow"][0][node]["error"],
              "'pool_grow' is not supported by Conveyor workers")
        << out.dump();
}

TEST(CeleryMonitor, TheDashboardKeepsAHistoryFromTheEventsOfConveyorAndPythonWorkers) {
    auto q = unique_name("history");
    auto pyq = q + "-py";
    auto node = q + "@localhost";
    testsupport::TempDir dir;
    // The dashboard first: its event queue exists before the tasks run.
    testsupport::Process dashboard(
        {CONVEYOR_CLI, "dashboard", "--listen", "127.0.0.1:0", "--history", dir.file("h.db")},
        dir.file("dashboard.out"), {"CONVEYOR_BROKER=" + testsupport::shared_rabbitmq_url()},
        dir.path().string());
    auto url = testsupport::served_url(dir.file("dashboard.out"), 30s);
    ASSERT_FALSE(url.empty()) << testsupport::read_file(dir.file("dashboard.out"));
    auto get = [&](const std::string& path) {
        return Json::parse(testsupport::http_call(url, "GET", path).body, nullptr, false);
    };

    BackgroundWorker w(open_with(queues({q})), monitored(q, node, true));
    w.worker.handle("interop.add", [](TaskContext& c) -> Json {
        return c.args()[0].get<int>() + c.args()[1].get<int>();
    });
    w.worker.handle("interop.flaky", [](TaskContext& c) -> Json {
        if (c.attempt() == 1) {
            TaskError e("RuntimeError", "try 0");
            e.retry_after = 200ms;
            throw e;
        }
        return "ok";
    });
    w.start();
    interop::CeleryWorker py(pyq, "rpc://", {"-E"});
    ASSERT_TRUE(py.ready()) << py.log();

    auto broker = open_with(queues({q, pyq}));
    Client client(broker);
    EnqueueOptions to_conveyor{.queue = q}, to_python{.queue = pyq};
    to_conveyor.id = "h-add-" + q;
    ASSERT_TRUE(client.enqueue("interop.add", {2, 3}, Json::object(), to_conveyor));
    to_conveyor.id = "h-flaky-" + q;
    ASSERT_TRUE(client.enqueue("interop.flaky", Json::array(), Json::object(), to_conveyor));
    to_python.id = "h-py-" + q;
    ASSERT_TRUE(client.enqueue("interop.py_add", {4, 5}, Json::object(), to_python));
    to_python.id = "h-pyfail-" + q;
    ASSERT_TRUE(client.enqueue("interop.py_fail", {"no"}, Json::object(), to_python));

    // Every task in the history with its outcome, from either kind of worker.
    std::map<std::string, std::string> want = {{"h-add-" + q, "succeeded"},
                                               {"h-flaky-" + q, "succeeded"},
                                               {"h-py-" + q, "succeeded"},
                                               {"h-pyfail-" + q, "dead"}};
    auto states = [&] {
        std::map<std::string, std::string> got;
        auto page = get("/api/v1/tasks?limit=1000");
        if (page.is_object() && page.contains("tasks"))
            for (auto& t : page["tasks"])
                if (want.contains(t["id"])) got[t["id"]] = t["state"];
        return got;
    };
    EXPECT_TRUE(eventually([&] { return states() == want; }, 60s))
        << get("/api/v1/tasks?limit=1000").dump() << "\n"
        << testsupport::read_file(dir.file("dashboard.out"));
    auto flaky = get("/api/v1/tasks/h-flaky-" + q)["history"];
    ASSERT_TRUE(flaky.is_object());
    EXPECT_EQ(flaky["name"], "interop.flaky");
    EXPECT_EQ(flaky["queue"], q);
    ASSERT_EQ(flaky["attempts"].size(), 1u) << flaky.dump();
    EXPECT_NE(flaky["attempts"][0]["error"].get<std::string>().find("try 0"), std::string::npos);
    auto py_add = get("/api/v1/tasks/h-py-" + q)["history"];
    EXPECT_EQ(py_add["name"], "interop.py_add") << py_add.dump();
    EXPECT_EQ(py_add["args"], "(4, 5)") << py_add.dump();
    EXPECT_EQ(py_add["worker"].get<std::string>().find(py.node()), 0u) << py_add.dump();
    auto py_fail = get("/api/v1/tasks/h-pyfail-" + q)["history"];
    EXPECT_NE(py_fail["error"].get<std::string>().find("ValueError"), std::string::npos)
        << py_fail.dump();

    // Retry and revoke belong to the broker here: refused with what to use instead.
    auto page = testsupport::http_call(url, "GET", "/");
    std::string set = page.header("Set-Cookie");
    std::string csrf = set.substr(14, set.find(';') - 14);  // conveyor_csrf=...
    httplib::Headers with_csrf = {{"Cookie", "conveyor_csrf=" + csrf}, {"X-Conveyor-CSRF", csrf}};
    auto refused =
        testsupport::http_call(url, "POST", "/api/v1/tasks/h-py-" + q + "/retry", with_csrf, "");
    EXPECT_EQ(refused.status, 400) << refused.body;
    EXPECT_NE(refused.body.find("conveyor dlq replay"), std::string::npos) << refused.body;
    EXPECT_EQ(get("/api/v1/overview")["history"], "events");

    // Both workers online, from their heartbeats.
    EXPECT_TRUE(eventually(
        [&] {
            int online = 0;
            for (auto& wk : get("/api/v1/workers"))
                if ((wk["node"] == node || wk["node"] == py.node()) && wk["online"] == true)
                    online++;
            return online == 2;
        },
        30s))
        << get("/api/v1/workers").dump();
    // Per-minute counts: three successes and two failures (flaky's first run, py_fail).
    std::int64_t ok = 0, failed = 0;
    for (auto& m : get("/api/v1/minutes?minutes=60")) {
        ok += m["succeeded"].get<std::int64_t>();
        failed += m["failed"].get<std::int64_t>();
    }
    EXPECT_GE(ok, 3);
    EXPECT_GE(failed, 2);

    w.worker.stop();
    w.thread.join();
    dashboard.signal(SIGTERM);
    EXPECT_EQ(dashboard.wait(20s), 0);
}

TEST(CeleryMonitor, ControlRateLimitSetsTheFleetsRateOnRabbitMqWithRedis) {
    // A Redis database of its own: a task's limit is the whole fleet's.
    auto redis = testsupport::shared_redis_url();  // redis://127.0.0.1:PORT/0
    auto port = redis.substr(redis.rfind(':') + 1, redis.rfind('/') - redis.rfind(':') - 1);
    auto [frc, fout] =
        testsupport::run({"redis-cli", "-p", port, "-n", "7", "FLUSHDB"}, {}, {}, 10s);
    ASSERT_EQ(frc, 0) << fout;
    auto url =
        testsupport::shared_rabbitmq_url() + "?results=" + redis.substr(0, redis.rfind('/')) + "/7";
    auto q = unique_name("rate");
    auto node = q + "@localhost";
    auto broker = open_with(queues({q}), url);
    BackgroundWorker w(open_with(queues({q}), url), monitored(q, node, false));
    std::mutex mu;
    std::vector<TimePoint> taken;
    w.worker.handle("interop.add", [&](TaskContext& c) -> Json {
        std::lock_guard lk(mu);
        taken.push_back(c.taken().value_or(TimePoint{}));
        return c.args()[0].get<int>() + c.args()[1].get<int>();
    });
    w.start();
    auto out = monitor("rate_limit", node, q);
    EXPECT_EQ(out["set"], Json::array({{{node, {{"ok", "new rate limit set successfully"}}}}}))
        << out.dump();
    auto limits = broker->limits();
    ASSERT_TRUE(limits) << limits.error().message;
    ASSERT_EQ(limits->size(), 1u);
    EXPECT_EQ((*limits)[0].limit.task, "interop.add");
    EXPECT_EQ((*limits)[0].limit.rate, 5);
    // Six tasks at 5/s: their starts 200 ms apart (the worker reads limits every second).
    std::this_thread::sleep_for(1100ms);
    Client client(broker);
    for (int i = 0; i < 6; ++i)
        ASSERT_TRUE(client.enqueue("interop.add", {i, 1}, Json::object(), {.queue = q}));
    ASSERT_TRUE(eventually(
        [&] {
            std::lock_guard lk(mu);
            return taken.size() == 6;
        },
        15s));
    std::sort(taken.begin(), taken.end());
    for (std::size_t i = 1; i < taken.size(); ++i) EXPECT_GE(taken[i] - taken[i - 1], 199ms) << i;
    ASSERT_TRUE(broker->set_limit({.task = "interop.add"}));
}
