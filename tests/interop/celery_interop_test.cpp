// Conveyor and Python Celery 5.2.6 (Debian, unmodified) on one RabbitMQ: a Celery client's
// tasks run on Conveyor workers, Conveyor's tasks run on Celery workers, and results come back
// through the rpc:// and redis:// backends both ways.

#include <gtest/gtest.h>
#include <httplib.h>

#include "conveyor/client.hpp"
#include "interop/support.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using namespace itest;
using interop::celery_client;
using interop::CeleryWorker;
using testsupport::shared_rabbitmq_url;
using testsupport::shared_redis_url;
using testsupport::unique_name;

namespace {

/// Conveyor's side of the Python -> Conveyor tests.
void register_handlers(Worker& w) {
    w.handle("interop.add", [](TaskContext& c) -> Json {
        if (!c.args().empty()) return c.args()[0].get<int>() + c.args()[1].get<int>();
        return c.kwargs()["x"].get<int>() + c.kwargs()["y"].get<int>();
    });
    w.handle("interop.fail", [](TaskContext& c) -> Json {
        throw TaskError("ValueError", c.args()[0].get<std::string>(), /*retryable=*/false);
    });
    w.handle("interop.flaky", [](TaskContext& c) -> Json {
        if (c.attempt() == 1) {
            TaskError e("RuntimeError", "try 0");
            e.retry_after = 1s;
            throw e;
        }
        return "ok after " + std::to_string(c.retries()) + " retries";
    });
}

void expect_python_saw_conveyor_results(const Json& out) {
    EXPECT_EQ(out["send_task"], Json({{"value", 5}})) << out.dump();
    EXPECT_EQ(out["delay"], Json({{"value", 42}})) << out.dump();
    EXPECT_EQ(out["kwargs"], Json({{"value", 42}})) << out.dump();
    EXPECT_EQ(out["routed"], Json({{"value", 2}})) << out.dump();
    EXPECT_EQ(out["compressed"], Json({{"value", 8}})) << out.dump();
    // The failure is raised in Python as the builtin exception it names.
    EXPECT_EQ(out["failure"]["exc_type"], "ValueError") << out.dump();
    EXPECT_EQ(out["failure"]["exc_module"], "builtins") << out.dump();
    EXPECT_EQ(out["failure"]["exc_message"], "kaboom") << out.dump();
    EXPECT_EQ(out["failure_state"], "FAILURE");
    // The retry is visible as RETRY before the task succeeds.
    auto states = out["flaky_states"];
    EXPECT_NE(std::find(states.begin(), states.end(), Json("RETRY")), states.end()) << out.dump();
    EXPECT_EQ(states.back(), "SUCCESS") << out.dump();
    EXPECT_EQ(out["flaky"], Json({{"value", "ok after 1 retries"}})) << out.dump();
}

}  // namespace

TEST(CeleryInterop, PythonClientTasksRunOnAConveyorWorkerWithRpcResults) {
    auto q = unique_name("py2cv");
    auto routed = q + ".routed";
    BackgroundWorker w(open_with(queues({q, routed})), options_for({q, routed}, 2));
    register_handlers(w.worker);
    w.start();
    auto out = celery_client({"to_conveyor", routed}, q, "rpc://");
    expect_python_saw_conveyor_results(out);
}

TEST(CeleryInterop, PythonClientTasksRunOnAConveyorWorkerWithRedisResults) {
    auto q = unique_name("py2cv-redis");
    auto routed = q + ".routed";
    auto url = shared_rabbitmq_url() + "?results=" + shared_redis_url();
    BackgroundWorker w(open_with(queues({q, routed}), url), options_for({q, routed}, 2));
    register_handlers(w.worker);
    w.start();
    auto out = celery_client({"to_conveyor", routed}, q, shared_redis_url());
    expect_python_saw_conveyor_results(out);
}

namespace {

/// Conveyor -> an unmodified Celery worker, results through the broker's backend.
void conveyor_to_celery(const std::string& q, const std::string& broker_url,
                        const std::string& backend) {
    CeleryWorker py(q, backend);
    ASSERT_TRUE(py.ready()) << py.log();
    auto broker = open_with(queues({q}), broker_url);
    Client client(broker);

    auto id = client.enqueue("interop.py_add", {2, 3}, Json::object(), {.queue = q});
    ASSERT_TRUE(id) << id.error().message;
    auto r = client.wait(*id, 30s);
    ASSERT_TRUE(r) << r.error().message << "\n" << py.log();
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(r->result, 5);

    auto kw = client.enqueue("interop.py_mul", Json::array(), {{"x", 6}, {"y", 7}}, {.queue = q});
    ASSERT_TRUE(kw);
    r = client.wait(*kw, 30s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->result, 42);

    // A delayed task waits in the broker, then runs on the Python worker.
    auto t0 = std::chrono::steady_clock::now();
    auto later = client.enqueue("interop.py_xsum", Json::array({Json::array({1, 2, 3})}),
                                Json::object(), {.queue = q, .countdown = 1s});
    ASSERT_TRUE(later);
    r = client.wait(*later, 30s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->result, 6);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 1s);

    auto bad = client.enqueue("interop.py_fail", {"kaboom"}, Json::object(), {.queue = q});
    ASSERT_TRUE(bad);
    r = client.wait(*bad, 30s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::failure);
    EXPECT_EQ(r->result["exc_type"], "ValueError");
    EXPECT_EQ(r->result["exc_message"], Json::array({"kaboom"}));
    EXPECT_NE(r->traceback.find("ValueError: kaboom"), std::string::npos) << r->traceback;

    // The CLI too: enqueue, then wait for the Python worker's result.
    auto [rc, cli] =
        testsupport::run({CONVEYOR_CLI, "--broker", broker_url, "enqueue", "interop.py_add",
                          "--args", "[40, 2]", "--queue", q, "--wait", "30"},
                         {}, {}, 60s);
    ASSERT_EQ(rc, 0) << cli << py.log();
    auto j = interop::last_json(cli);
    EXPECT_EQ(j["state"], "SUCCESS") << cli;
    EXPECT_EQ(j["result"], 42) << cli;
}

}  // namespace

TEST(CeleryInterop, ConveyorTasksRunOnAnUnmodifiedCeleryWorkerWithRpcResults) {
    conveyor_to_celery(unique_name("cv2py"), shared_rabbitmq_url(), "rpc://");
}

TEST(CeleryInterop, ConveyorTasksRunOnAnUnmodifiedCeleryWorkerWithRedisResults) {
    auto q = unique_name("cv2py-redis");
    conveyor_to_celery(q, shared_rabbitmq_url() + "?results=" + shared_redis_url(),
                       shared_redis_url());
    // Python reads the result of a task Conveyor sent from the same backend.
    auto broker = open_with(queues({q}), shared_rabbitmq_url() + "?results=" + shared_redis_url());
    CeleryWorker py(q, shared_redis_url());
    ASSERT_TRUE(py.ready()) << py.log();
    Client client(broker);
    auto id = client.enqueue("interop.py_add", {7, 8}, Json::object(), {.queue = q});
    ASSERT_TRUE(id);
    auto out = celery_client({"wait_for", *id}, q, shared_redis_url());
    EXPECT_EQ(out["result"], Json({{"value", 15}})) << out.dump();
    EXPECT_EQ(out["state"], "SUCCESS");
}

namespace {

/// Conveyor's side of the workflow tests: adds and a sum (the chord body).
void register_canvas_handlers(Worker& w) {
    register_handlers(w);
    w.handle("interop.xsum", [](TaskContext& c) -> Json {
        int s = 0;
        for (auto& v : c.args()[0]) s += v.get<int>();
        return s;
    });
}

}  // namespace

TEST(CeleryInterop, PythonWorkflowsRunPartlyOrWhollyOnConveyorWorkers) {
    auto q = unique_name("canvas-cv");
    auto qpy = unique_name("canvas-py");
    auto url = shared_rabbitmq_url() + "?results=" + shared_redis_url();
    CeleryWorker py(qpy, shared_redis_url());
    BackgroundWorker w(open_with(queues({q}), url), options_for({q}, 2));
    register_canvas_handlers(w.worker);
    w.start();
    ASSERT_TRUE(py.ready()) << py.log();
    auto out = celery_client({"canvas", q, qpy}, q, shared_redis_url());
    EXPECT_EQ(out["chain_conveyor"], Json({{"value", 16}})) << out.dump();
    EXPECT_EQ(out["chain_mixed"], Json({{"value", 51}})) << out.dump();
    EXPECT_EQ(out["group_mixed"], Json({{"value", {2, 9, 4}}})) << out.dump();
    EXPECT_EQ(out["chord_mixed_conveyor_body"], Json({{"value", 20}})) << out.dump();
    EXPECT_EQ(out["chord_python_body"], Json({{"value", 12}})) << out.dump();
    EXPECT_EQ(out["link"], Json({{"value", {5, 50}}})) << out.dump() << py.log();
    EXPECT_EQ(out["link_children"], Json::array({out["link_child"]})) << out.dump();
    EXPECT_EQ(out["chain_children"], Json::array({out["chain_last"]})) << out.dump();
}

TEST(CeleryInterop, ConveyorWorkflowsRunOnConveyorAndCeleryWorkersTogether) {
    auto q = unique_name("cvflow-cv");
    auto qpy = unique_name("cvflow-py");
    auto url = shared_rabbitmq_url() + "?results=" + shared_redis_url();
    CeleryWorker py(qpy, shared_redis_url());
    BackgroundWorker w(open_with(queues({q}), url), options_for({q}, 2));
    register_canvas_handlers(w.worker);
    w.start();
    ASSERT_TRUE(py.ready()) << py.log();
    Client client(open_with(queues({q, qpy}), url));

    auto last = client.chain({{.task = "interop.add", .args = {2, 3}, .queue = q},
                              {.task = "interop.py_mul", .args = {10}, .queue = qpy},
                              {.task = "interop.add", .args = {1}, .queue = q}});
    ASSERT_TRUE(last) << last.error().message;
    auto r = client.wait(*last, 30s);
    ASSERT_TRUE(r) << r.error().message << py.log();
    EXPECT_EQ(r->result, 51);

    auto body = client.chord({{.task = "interop.add", .args = {1, 1}, .queue = q},
                              {.task = "interop.py_mul", .args = {3, 3}, .queue = qpy},
                              {.task = "interop.add", .args = {2, 2}, .queue = q}},
                             {.task = "interop.py_xsum", .queue = qpy});
    ASSERT_TRUE(body) << body.error().message;
    r = client.wait(*body, 30s);
    ASSERT_TRUE(r) << r.error().message << py.log();
    EXPECT_EQ(r->result, 15);

    auto ids = client.group({{.task = "interop.add", .args = {5, 5}, .queue = q},
                             {.task = "interop.py_mul", .args = {5, 5}, .queue = qpy}});
    ASSERT_TRUE(ids);
    EXPECT_EQ(client.wait((*ids)[0], 30s)->result, 10);
    EXPECT_EQ(client.wait((*ids)[1], 30s)->result, 25);
}

TEST(CeleryInterop, TrackStartedShowsSTARTEDToAPythonClientWithRedisResults) {
    auto q = unique_name("py2cv-started");
    auto url = shared_rabbitmq_url() + "?results=" + shared_redis_url();
    auto o = options_for({q}, 2);
    o.track_started = true;
    BackgroundWorker w(open_with(queues({q}), url), o);
    w.worker.handle("interop.sleep", [](TaskContext& c) -> Json {
        std::this_thread::sleep_for(std::chrono::seconds(c.args()[0].get<int>()));
        return "slept";
    });
    w.start();
    auto out = celery_client({"started"}, q, shared_redis_url());
    auto states = out["states"];
    EXPECT_NE(std::find(states.begin(), states.end(), Json("STARTED")), states.end()) << out.dump();
    EXPECT_EQ(states.back(), "SUCCESS") << out.dump();
    EXPECT_EQ(out["info"], "slept") << out.dump();
}

TEST(CeleryInterop, ExecAndHttpHandlersFailWithTheExceptionTypeAPythonClientRaises) {
    httplib::Server server;
    server.Post("/typed", [](const httplib::Request&, httplib::Response& res) {
        res.status = 422;
        res.set_content(R"({"exc_type": "KeyError", "exc_message": "no such order"})",
                        "application/json");
    });
    int port = server.bind_to_any_port("127.0.0.1");
    std::jthread srv([&] { server.listen_after_bind(); });
    while (!server.is_running()) std::this_thread::sleep_for(1ms);

    auto q = unique_name("py2cv-typed");
    BackgroundWorker w(open_with(queues({q})), options_for({q}, 2));
    TaskOptions once{RetryPolicy{.max_retries = 3, .backoff_base = 0.01, .backoff_max = 0.02}};
    w.worker.handle_exec("interop.exec_typed",
                         {"/bin/sh", "-c",
                          "echo '{\"exc_type\": \"ValueError\", \"exc_message\": \"bad "
                          "order\"}' >&2; exit 65"},
                         once);
    w.worker.handle_http("interop.http_typed",
                         "http://127.0.0.1:" + std::to_string(port) + "/typed", once);
    w.worker.handle_exec("interop.exec_php_like",
                         {"/bin/sh", "-c", "echo 'PHP Fatal error: Uncaught Exception'; exit 255"},
                         TaskOptions{RetryPolicy{.max_retries = 0}});
    w.worker.handle_exec("interop.exec_retry_later",
                         {"/bin/sh", "-c",
                          "if [ \"$CONVEYOR_ATTEMPT\" = 1 ]; then echo '{\"exc_type\": \"Busy\", "
                          "\"retry_in\": 1}' >&2; exit 75; fi; echo '\"done\"'"},
                         once);
    w.start();
    auto out = celery_client({"typed"}, q, "rpc://");
    EXPECT_EQ(out["exec_typed"], Json({{"exc_type", "ValueError"},
                                       {"exc_module", "builtins"},
                                       {"exc_message", "bad order"}}))
        << out.dump();
    EXPECT_EQ(out["http_typed"]["exc_type"], "KeyError") << out.dump();
    EXPECT_EQ(out["http_typed"]["exc_module"], "builtins") << out.dump();
    EXPECT_EQ(out["exec_php_like"]["exc_type"], "ProcessError") << out.dump();
    EXPECT_NE(out["exec_php_like"]["exc_message"].get<std::string>().find("PHP Fatal error"),
              std::string::npos)
        << out.dump();
    EXPECT_EQ(out["exec_retry_later"], Json({{"value", "done"}})) << out.dump();
    server.stop();
}
