// exec and http handlers against real subprocesses and a real HTTP server.

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <thread>

#include "conveyor/client.hpp"
#include "conveyor/worker.hpp"
#include "support/process.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::read_file;
using testsupport::TempDir;

namespace {

struct Running {
    std::shared_ptr<Broker> broker;
    Client client;
    Worker worker;
    std::jthread thread;
    explicit Running(const std::string& url)
        : broker(*Broker::open(url)),
          client(broker),
          worker(broker, WorkerOptions{.queues = {"q"}, .concurrency = 2}) {}
    void start() {
        thread = std::jthread([this] { (void)worker.run(); });
    }
    ~Running() { worker.stop(); }
    Result<TaskResult> run(const std::string& task, Json args = Json::array()) {
        auto id = client.enqueue(task, std::move(args), Json::object(), {.queue = "q"});
        if (!id) return std::unexpected(id.error());
        return client.wait(*id, 20s);
    }
};

TaskOptions fast_retry(int max_retries, std::optional<std::chrono::milliseconds> timeout = {}) {
    return TaskOptions{
        RetryPolicy{.max_retries = max_retries, .backoff_base = 0.01, .backoff_max = 0.02},
        timeout};
}

}  // namespace

TEST(ExecHandler, TaskJsonOnStdinAndEnvironmentResultFromStdout) {
    TempDir dir;
    Running w("sqlite://" + dir.file("c.db"));
    // Echo back what the handler got: stdin and the environment.
    w.worker.handle_exec(
        "echo",
        {"/bin/sh", "-c",
         "read line; printf '{\"in\": %s, \"id\": \"%s\", \"name\": \"%s\", \"attempt\": %s}' "
         "\"$line\" \"$CONVEYOR_TASK_ID\" \"$CONVEYOR_TASK_NAME\" \"$CONVEYOR_ATTEMPT\""},
        fast_retry(0));
    w.worker.handle_exec("text", {"/bin/echo", "plain words"}, fast_retry(0));
    w.start();
    auto r = w.run("echo", {7, "x"});
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->state, TaskState::success) << r->result.dump();
    EXPECT_EQ(r->result["in"]["args"], Json::array({7, "x"}));
    EXPECT_EQ(r->result["in"]["task"], "echo");
    EXPECT_EQ(r->result["id"], r->id);
    EXPECT_EQ(r->result["in"]["id"], r->id);
    EXPECT_EQ(r->result["name"], "echo");
    EXPECT_EQ(r->result["attempt"], 1);
    auto t = w.run("text");
    ASSERT_TRUE(t);
    EXPECT_EQ(t->result, "plain words");
}

TEST(ExecHandler, NonZeroExitIsRetriedThenDeadLetteredWithStderr) {
    TempDir dir;
    Running w("sqlite://" + dir.file("c.db"));
    std::string marker = dir.file("attempts");
    // Fails on attempts 1 and 2, succeeds on 3.
    w.worker.handle_exec("flaky",
                         {"/bin/sh", "-c",
                          "echo x >> " + marker +
                              "; [ \"$CONVEYOR_ATTEMPT\" -ge 3 ] && echo ok && exit 0; "
                              "echo 'gateway down' >&2; exit 3"},
                         fast_retry(5));
    w.worker.handle_exec("broken", {"/bin/sh", "-c", "echo 'no such order' >&2; exit 1"},
                         fast_retry(2));
    w.start();
    auto r = w.run("flaky");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(r->result, "ok");
    EXPECT_EQ(r->retries, 2);
    auto b = w.run("broken");
    ASSERT_TRUE(b);
    EXPECT_EQ(b->state, TaskState::failure);
    auto dl = w.broker->dead_letters("q", 10);
    ASSERT_EQ(dl->size(), 1u);
    EXPECT_NE((*dl)[0].reason.find("exit status 1: no such order"), std::string::npos)
        << (*dl)[0].reason;
    EXPECT_NE((*dl)[0].reason.find("failed after 2 retries"), std::string::npos) << (*dl)[0].reason;
}

TEST(ExecHandler, ProcessIsKilledAtTheTimeLimit) {
    TempDir dir;
    Running w("sqlite://" + dir.file("c.db"));
    std::string pidfile = dir.file("pid");
    w.worker.handle_exec("hang",
                         {"/bin/sh", "-c", "echo $$ > " + pidfile + "; sleep 30; echo never"},
                         fast_retry(0, 300ms));
    w.start();
    auto t0 = std::chrono::steady_clock::now();
    auto r = w.run("hang");
    ASSERT_TRUE(r);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    EXPECT_EQ(r->state, TaskState::failure);
    EXPECT_EQ(r->result["exc_type"], "TimeLimitExceeded");
    pid_t pid = std::stoi(testsupport::read_file(pidfile));
    EXPECT_TRUE(testsupport::eventually([&] { return kill(pid, 0) != 0; }, 2s))
        << "the shell survived";
}

TEST(HttpHandler, TwoHundredSucceedsServerErrorsRetryClientErrorsReject) {
    httplib::Server server;
    std::atomic<int> flaky_calls{0}, reject_calls{0};
    server.Post("/ok", [](const httplib::Request& req, httplib::Response& res) {
        auto task = Json::parse(req.body);
        res.set_content(
            Json{{"got", task["args"]}, {"hdr", req.get_header_value("X-Conveyor-Task-Name")}}
                .dump(),
            "application/json");
    });
    server.Post("/flaky", [&](const httplib::Request&, httplib::Response& res) {
        if (++flaky_calls < 3) {
            res.status = flaky_calls == 1 ? 503 : 429;
            return;
        }
        res.set_content("done", "text/plain");
    });
    server.Post("/missing", [&](const httplib::Request&, httplib::Response& res) {
        ++reject_calls;
        res.status = 404;
        res.set_content("no such order", "text/plain");
    });
    int port = server.bind_to_any_port("127.0.0.1");
    std::jthread srv([&] { server.listen_after_bind(); });
    while (!server.is_running()) std::this_thread::sleep_for(1ms);
    std::string base = "http://127.0.0.1:" + std::to_string(port);

    TempDir dir;
    Running w("sqlite://" + dir.file("c.db"));
    w.worker.handle_http("ok", base + "/ok", fast_retry(3));
    w.worker.handle_http("flaky", base + "/flaky", fast_retry(5));
    w.worker.handle_http("missing", base + "/missing", fast_retry(5));
    w.worker.handle_http("down", "http://127.0.0.1:1/nothing", fast_retry(1));
    w.start();
    auto ok = w.run("ok", {1, 2});
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->result, Json({{"got", {1, 2}}, {"hdr", "ok"}}));
    auto flaky = w.run("flaky");
    ASSERT_TRUE(flaky);
    EXPECT_EQ(flaky->state, TaskState::success);
    EXPECT_EQ(flaky->result, "done");
    EXPECT_EQ(flaky_calls.load(), 3);
    auto missing = w.run("missing");
    ASSERT_TRUE(missing);
    EXPECT_EQ(missing->state, TaskState::failure);
    EXPECT_EQ(reject_calls.load(), 1);  // a 404 is not retried
    auto down = w.run("down");
    ASSERT_TRUE(down);
    EXPECT_EQ(down->state, TaskState::failure);
    EXPECT_EQ(down->retries, 1);
    server.stop();
}

TEST(ExecHandler, CommandThatDoesNotReadStdinDoesNotKillTheWorker) {
    TempDir dir;
    Running w("sqlite://" + dir.file("c.db"));
    w.worker.handle_exec("ignore-input", {"/bin/true"}, fast_retry(0));
    w.start();
    auto r = w.run("ignore-input", {std::string(1 << 20, 'x')});  // more than a pipe buffer
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::success);
    auto again = w.run("ignore-input", {std::string(1 << 20, 'y')});
    ASSERT_TRUE(again);
    EXPECT_EQ(again->state, TaskState::success);
}

TEST(ExecHandler, ACommandFailsWithItsOwnExceptionTypeAndSaysWhetherToRetry) {
    TempDir dir;
    Running w("sqlite://" + dir.file("c.db"));
    std::string attempts = dir.file("attempts");
    // A typed failure (a Python client raises ValueError) that must not be retried.
    w.worker.handle_exec("typed",
                         {"/bin/sh", "-c",
                          "echo x >> " + attempts +
                              "; echo '{\"exc_type\": \"ValueError\", \"exc_message\": \"bad "
                              "order\"}' >&2; exit 65"},
                         fast_retry(3));
    // "Retry in 1 s" on the first attempt, success on the second.
    w.worker.handle_exec(
        "later",
        {"/bin/sh", "-c",
         "if [ \"$CONVEYOR_ATTEMPT\" = 1 ]; then echo '{\"exc_type\": \"Busy\", \"retry_in\": "
         "1}' >&2; exit 75; fi; echo done"},
        fast_retry(3));
    // PHP prints its errors on stdout: they are part of the failure.
    w.worker.handle_exec("php-like",
                         {"/bin/sh", "-c", "echo 'PHP Fatal error: Uncaught Exception'; exit 255"},
                         fast_retry(0));
    w.start();
    auto typed = w.run("typed");
    ASSERT_TRUE(typed) << typed.error().message;
    EXPECT_EQ(typed->state, TaskState::failure);
    EXPECT_EQ(typed->result, Json({{"exc_type", "ValueError"},
                                   {"exc_message", Json::array({"bad order"})},
                                   {"exc_module", "builtins"}}));
    EXPECT_EQ(read_file(attempts), "x\n");  // exit 65: not retried
    auto t0 = std::chrono::steady_clock::now();
    auto later = w.run("later");
    ASSERT_TRUE(later);
    EXPECT_EQ(later->state, TaskState::success);
    EXPECT_EQ(later->result, "done");
    EXPECT_EQ(later->retries, 1);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms);  // retry_in, not the 10 ms backoff
    auto php = w.run("php-like");
    ASSERT_TRUE(php);
    EXPECT_EQ(php->state, TaskState::failure);
    EXPECT_NE(php->result["exc_message"][0].get<std::string>().find("PHP Fatal error"),
              std::string::npos)
        << php->result.dump();
}

TEST(HttpHandler, AnAnswerCanNameItsExceptionAndWhenToRetry) {
    httplib::Server server;
    std::atomic<int> typed_calls{0}, busy_calls{0};
    server.Post("/typed", [&](const httplib::Request&, httplib::Response& res) {
        ++typed_calls;
        res.status = 422;
        res.set_content(R"({"exc_type": "ValueError", "exc_message": "bad order"})",
                        "application/json");
    });
    server.Post("/busy", [&](const httplib::Request&, httplib::Response& res) {
        if (++busy_calls == 1) {
            res.status = 503;
            res.set_content(R"({"exc_type": "Busy", "retry_in": 1})", "application/json");
            return;
        }
        res.set_content("done", "text/plain");
    });
    server.Post("/echo", [](const httplib::Request& req, httplib::Response& res) {
        res.set_content(
            Json{{"body", req.body}, {"type", req.get_header_value("Content-Type")}}.dump(),
            "application/json");
    });
    int port = server.bind_to_any_port("127.0.0.1");
    std::jthread srv([&] { server.listen_after_bind(); });
    while (!server.is_running()) std::this_thread::sleep_for(1ms);
    std::string base = "http://127.0.0.1:" + std::to_string(port);

    TempDir dir;
    Running w("sqlite://" + dir.file("c.db"));
    w.worker.handle_http("typed", base + "/typed", fast_retry(3));
    w.worker.handle_http("busy", base + "/busy", fast_retry(3));
    TaskOptions body = fast_retry(0);
    body.input = HandlerInput::body;
    w.worker.handle_http("echo", base + "/echo", body);
    w.start();
    auto typed = w.run("typed");
    ASSERT_TRUE(typed);
    EXPECT_EQ(typed->state, TaskState::failure);
    EXPECT_EQ(typed->result, Json({{"exc_type", "ValueError"},
                                   {"exc_message", Json::array({"bad order"})},
                                   {"exc_module", "builtins"}}));
    EXPECT_EQ(typed_calls.load(), 1);  // a 4xx is not retried
    auto t0 = std::chrono::steady_clock::now();
    auto busy = w.run("busy");
    ASSERT_TRUE(busy);
    EXPECT_EQ(busy->state, TaskState::success);
    EXPECT_EQ(busy->retries, 1);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms);  // retry_in, not the 10 ms backoff
    // input = "body": the one argument as it is, with its type.
    auto text = w.run("echo", {"Gr\xc3\xbc\xc3\x9f"
                               "e"});
    ASSERT_TRUE(text);
    EXPECT_EQ(text->result, Json({{"body",
                                   "Gr\xc3\xbc\xc3\x9f"
                                   "e"},
                                  {"type", "text/plain; charset=utf-8"}}));
    auto object = w.run("echo", Json::array({{{"order", 7}}}));
    ASSERT_TRUE(object);
    EXPECT_EQ(object->result, Json({{"body", R"({"order":7})"}, {"type", "application/json"}}));
    server.stop();
}

TEST(ExecHandler, ARawQueuesBodyReachesTheCommandByteForByte) {
    TempDir dir;
    auto broker = *Broker::open("sqlite://" + dir.file("c.db"));
    Config cfg;
    cfg.queues.push_back(QueueConfig{.name = "raw", .format = QueueFormat::raw, .task = "save"});
    Client client(broker, cfg);
    WorkerOptions o{.queues = {"raw"}, .concurrency = 1};
    o.queue_formats = cfg.queues;
    Worker worker(broker, o);
    TaskOptions body = fast_retry(0);
    body.input = HandlerInput::body;
    worker.handle_exec("save",
                       {"/bin/sh", "-c",
                        "cat > " + dir.file("got") + "; printf %s \"$CONVEYOR_CONTENT_TYPE\" > " +
                            dir.file("type")},
                       body);
    std::jthread run([&] { (void)worker.run(); });
    std::string bytes;
    for (int i = 0; i < 3 * 256; ++i) bytes.push_back(char(i % 256));
    auto id = client.enqueue("save", Json::array({bytes}), Json::object(), {.queue = "raw"});
    ASSERT_TRUE(id) << id.error().message;
    auto r = client.wait(*id, 20s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::success) << r->result.dump();
    EXPECT_TRUE(read_file(dir.file("got")) == bytes);
    EXPECT_EQ(read_file(dir.file("type")), "application/octet-stream");
    // Given a type, it travels with the bytes.
    id = client.enqueue("save", Json::array({"<order id=\"7\"/>"}), Json::object(),
                        {.queue = "raw", .content_type = "application/xml"});
    ASSERT_TRUE(id);
    r = client.wait(*id, 20s);
    ASSERT_TRUE(r);
    EXPECT_EQ(read_file(dir.file("got")), "<order id=\"7\"/>");
    EXPECT_EQ(read_file(dir.file("type")), "application/xml");
    worker.stop();
}
