#include "conveyor/worker.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "conveyor/client.hpp"
#include "conveyor/log.hpp"
#include "core/codec.hpp"

using namespace conveyor;
using namespace std::chrono_literals;

namespace {

struct Harness {
    std::shared_ptr<Broker> broker;
    Client client;
    Worker worker;
    std::jthread thread;

    Harness(const std::string& name, WorkerOptions o)
        : broker(*Broker::open("memory://" + name)), client(broker), worker(broker, o) {}
    void start() {
        thread = std::jthread([this] { ASSERT_TRUE(worker.run()); });
    }
    ~Harness() {
        worker.stop();
        if (thread.joinable()) thread.join();
    }
};

WorkerOptions opts(int concurrency = 2) {
    WorkerOptions o;
    o.queues = {"q"};
    o.concurrency = concurrency;
    o.seed = 7;
    return o;
}

EnqueueOptions to_q() {
    EnqueueOptions e;
    e.queue = "q";
    return e;
}

}  // namespace

TEST(Worker, RunsHandlerAndStoresResult) {
    Harness h("w-result", opts());
    h.worker.handle("add", [](TaskContext& c) -> Json {
        return c.args()[0].get<int>() + c.args()[1].get<int>();
    });
    h.start();
    auto id = h.client.enqueue("add", {2, 3}, Json::object(), to_q());
    ASSERT_TRUE(id);
    auto r = h.client.wait(*id, 5s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(r->result, 5);
}

TEST(Worker, RetriesTransientFailuresThenSucceeds) {
    Harness h("w-retry", opts());
    std::atomic<int> calls{0};
    TaskOptions to;
    to.retry = RetryPolicy{.max_retries = 3, .backoff_base = 0.01, .backoff_max = 0.05};
    h.worker.handle("flaky", to, [&](TaskContext& c) -> Json {
        calls++;
        if (c.attempt() < 3) throw std::runtime_error("transient");
        return c.retries();
    });
    h.start();
    auto id = h.client.enqueue("flaky", Json::array(), Json::object(), to_q());
    auto r = h.client.wait(*id, 5s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(r->result, 2);
    EXPECT_EQ(calls.load(), 3);
    EXPECT_EQ(h.worker.stats().retried, 2u);
}

TEST(Worker, ExhaustedRetriesDeadLetterWithTheReason) {
    Harness h("w-exhaust", opts());
    TaskOptions to;
    to.retry = RetryPolicy{.max_retries = 2, .backoff_base = 0.01, .backoff_max = 0.02};
    h.worker.handle("doomed", to,
                    [](TaskContext&) -> Json { throw TaskError("ValueError", "card declined"); });
    h.start();
    auto id = h.client.enqueue("doomed", Json::array(), Json::object(), to_q());
    auto r = h.client.wait(*id, 5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::failure);
    EXPECT_EQ(r->result["exc_type"], "ValueError");
    EXPECT_EQ(r->result["exc_module"], "builtins");
    auto dl = h.broker->dead_letters("q", 10);
    ASSERT_EQ(dl->size(), 1u);
    EXPECT_NE((*dl)[0].reason.find("failed after 2 retries: ValueError: card declined"),
              std::string::npos)
        << (*dl)[0].reason;
}

TEST(Worker, RejectDeadLettersAtOnce) {
    Harness h("w-reject", opts());
    std::atomic<int> calls{0};
    h.worker.handle("bad", [&](TaskContext&) -> Json {
        calls++;
        throw Reject("order does not exist");
    });
    h.start();
    auto id = h.client.enqueue("bad", Json::array(), Json::object(), to_q());
    auto r = h.client.wait(*id, 5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::failure);
    EXPECT_EQ(calls.load(), 1);
}

TEST(Worker, UnknownTaskAndMalformedMessagesGoToTheDeadLetterQueue) {
    Harness h("w-malformed", opts());
    h.worker.handle("ok", [](TaskContext&) -> Json { return "fine"; });
    h.start();
    OutgoingMessage bad{.queue = "q"};
    bad.envelope.content_type = "application/json";
    bad.envelope.headers = {{"task", "ok"}, {"id", "bad-1"}};
    bad.envelope.body = "[[2,3],{}]";
    ASSERT_TRUE(h.broker->publish(std::span(&bad, 1)));
    auto unknown = h.client.enqueue("nobody.handles.this", Json::array(), Json::object(), to_q());
    auto good = h.client.enqueue("ok", Json::array(), Json::object(), to_q());
    auto r = h.client.wait(*good, 5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::success);
    auto ru = h.client.wait(*unknown, 5s);
    ASSERT_TRUE(ru);
    EXPECT_EQ(ru->result["exc_type"], "NotRegistered");
    auto rb = h.client.wait("bad-1", 5s);
    ASSERT_TRUE(rb);
    EXPECT_EQ(rb->state, TaskState::failure);
    auto dl = h.broker->dead_letters("q", 10);
    ASSERT_EQ(dl->size(), 2u);
    std::string reasons = (*dl)[0].reason + "|" + (*dl)[1].reason;
    EXPECT_NE(reasons.find("malformed message: body has 2 elements"), std::string::npos) << reasons;
    EXPECT_NE(reasons.find("no handler registered for task 'nobody.handles.this'"),
              std::string::npos)
        << reasons;
}

TEST(Worker, InProcessHandlerIsToldToStopAtItsTimeLimit) {
    Harness h("w-timelimit", opts());
    TaskOptions to;
    to.timeout = 100ms;
    to.retry.max_retries = 0;
    std::atomic<bool> saw_stop{false};
    h.worker.handle("slow", to, [&](TaskContext& c) -> Json {
        auto until = std::chrono::steady_clock::now() + 5s;
        while (!c.stop_requested() && std::chrono::steady_clock::now() < until)
            std::this_thread::sleep_for(5ms);
        saw_stop = c.stop_requested();
        return "late";
    });
    h.start();
    auto id = h.client.enqueue("slow", Json::array(), Json::object(), to_q());
    auto r = h.client.wait(*id, 5s);
    ASSERT_TRUE(r);
    EXPECT_TRUE(saw_stop.load());
    EXPECT_EQ(r->state, TaskState::failure);
    EXPECT_EQ(r->result["exc_type"], "TimeLimitExceeded");
}

TEST(Worker, RawQueueTakesTheTaskNameFromConfig) {
    WorkerOptions o = opts();
    o.queue_formats = {QueueConfig{"imports", QueueFormat::raw, "orders.import"}};
    o.queues = {"imports"};
    Harness h("w-raw", o);
    h.worker.handle("orders.import", [](TaskContext& c) -> Json { return c.args()[0]; });
    h.start();
    OutgoingMessage m{.queue = "imports"};
    m.envelope.body = R"({"sku": "A-1"})";
    m.envelope.correlation_id = "raw-1";
    ASSERT_TRUE(h.broker->publish(std::span(&m, 1)));
    auto r = h.client.wait("raw-1", 5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::success);
    EXPECT_EQ(r->result, Json({{"sku", "A-1"}}));
}

TEST(Worker, EtaSetByAForeignPublisherWaitsInTheBroker) {
    Harness h("w-eta", opts());
    std::atomic<int> calls{0};
    h.worker.handle("later", [&](TaskContext&) -> Json { return ++calls; });
    h.start();
    TaskMessage t{.id = "eta-1", .name = "later"};
    t.eta = SystemClock::now() + 300ms;
    OutgoingMessage m{.queue = "q",
                      .envelope = codec::encode(t)};  // broker not told: no not_before
    auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(h.broker->publish(std::span(&m, 1)));
    auto r = h.client.wait("eta-1", 5s);
    ASSERT_TRUE(r);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 250ms);
    EXPECT_EQ(calls.load(), 1);
}

TEST(Worker, StopHandsBackTasksThatHaveNotStarted) {
    WorkerOptions o = opts(1);
    o.prefetch = 10;
    o.shutdown_grace = 5s;
    Harness h("w-stop", o);
    std::atomic<int> started{0};
    h.worker.handle("slow", [&](TaskContext&) -> Json {
        started++;
        std::this_thread::sleep_for(200ms);
        return nullptr;
    });
    h.start();
    for (int i = 0; i < 5; ++i)
        ASSERT_TRUE(h.client.enqueue("slow", Json::array(), Json::object(), to_q()));
    while (started.load() == 0) std::this_thread::sleep_for(1ms);
    h.worker.stop();
    h.thread.join();
    EXPECT_EQ(started.load(), 1);
    EXPECT_EQ(h.worker.stats().succeeded, 1u);
    auto st = h.broker->stats();
    EXPECT_EQ((*st)[0].ready, 4);
    EXPECT_EQ((*st)[0].in_flight, 0);
}

namespace {

/// Records what reaches the sink; the sink is taken away again at the end.
struct Recorded {
    std::mutex mu;
    std::vector<LogRecord> records;
    explicit Recorded(LogLevel level) {
        set_log_sink(
            [this](const LogRecord& r) {
                std::lock_guard lk(mu);
                records.push_back(r);
            },
            level);
    }
    ~Recorded() { set_log_sink({}); }
    std::vector<LogRecord> of(const std::string& event) {
        std::lock_guard lk(mu);
        std::vector<LogRecord> out;
        for (auto& r : records)
            if (r.event == event) out.push_back(r);
        return out;
    }
};

}  // namespace

TEST(Worker, LogsEachNotableEventWithTheTasksFields) {
    Recorded log(LogLevel::debug);
    auto o = opts();
    Harness h("w-logs", o);
    std::atomic<int> calls{0};
    TaskOptions once;
    once.retry.max_retries = 1;
    once.retry.backoff_base = 0.01;
    h.worker.handle("flaky", once, [&](TaskContext&) -> Json {
        throw std::runtime_error("bad " + std::to_string(++calls));
    });
    h.worker.handle("fine", [](TaskContext&) -> Json { return 1; });
    h.start();
    auto flaky = h.client.enqueue("flaky", Json::array(), Json::object(), to_q());
    auto fine = h.client.enqueue("fine", Json::array(), Json::object(), to_q());
    auto stray = h.client.enqueue("nobody.handles.this", Json::array(), Json::object(), to_q());
    ASSERT_TRUE(flaky && fine && stray);
    ASSERT_TRUE(h.client.wait(*flaky, 5s));
    ASSERT_TRUE(h.client.wait(*fine, 5s));
    ASSERT_TRUE(h.client.wait(*stray, 5s));

    auto ok = log.of("task.succeeded");
    ASSERT_EQ(ok.size(), 1u);
    EXPECT_EQ(ok[0].level, LogLevel::debug);
    EXPECT_EQ(ok[0].fields["id"], *fine);
    EXPECT_EQ(ok[0].fields["task"], "fine");
    EXPECT_EQ(ok[0].fields["queue"], "q");
    EXPECT_EQ(ok[0].fields["attempt"], 1);
    EXPECT_TRUE(ok[0].fields["duration"].is_number());

    auto retried = log.of("task.retried");
    ASSERT_EQ(retried.size(), 1u);
    EXPECT_EQ(retried[0].level, LogLevel::warning);
    EXPECT_EQ(retried[0].fields["id"], *flaky);
    EXPECT_EQ(retried[0].fields["attempt"], 1);
    EXPECT_TRUE(retried[0].fields["delay"].is_number());
    EXPECT_NE(retried[0].message.find("bad 1"), std::string::npos) << retried[0].message;

    auto dead = log.of("task.dead_lettered");
    ASSERT_EQ(dead.size(), 2u);
    for (auto& d : dead) {
        EXPECT_EQ(d.level, LogLevel::error);
        EXPECT_TRUE(d.fields["reason"].is_string());
    }
    bool flaky_dead = false, stray_dead = false;
    for (auto& d : dead) {
        if (d.fields["id"] == *flaky) {
            flaky_dead = true;
            EXPECT_EQ(d.fields["attempt"], 2);
            EXPECT_NE(d.fields["reason"].get<std::string>().find("failed after 1 retries"),
                      std::string::npos);
        }
        if (d.fields["id"] == *stray) {
            stray_dead = true;
            EXPECT_NE(d.fields["reason"].get<std::string>().find("no handler registered"),
                      std::string::npos);
        }
    }
    EXPECT_TRUE(flaky_dead && stray_dead);
}

TEST(Worker, WithoutASinkTheLibraryWritesNothingToStderr) {
    set_log_sink({});
    testing::internal::CaptureStderr();
    {
        Harness h("w-quiet", opts());
        TaskOptions never;
        never.retry.max_retries = 0;
        h.worker.handle("fails", never,
                        [](TaskContext&) -> Json { throw std::runtime_error("no"); });
        h.start();
        auto id = h.client.enqueue("fails", Json::array(), Json::object(), to_q());
        auto stray = h.client.enqueue("nobody", Json::array(), Json::object(), to_q());
        ASSERT_TRUE(id && stray);
        ASSERT_TRUE(h.client.wait(*id, 5s));
        ASSERT_TRUE(h.client.wait(*stray, 5s));
    }
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

TEST(Log, TextAndJsonLinesAreOneLineWithTheirFields) {
    LogRecord r{LogLevel::warning, "task.retried", "task 1 failed:\nbad",
                Json{{"id", "1"}, {"task", "a b"}, {"attempt", 2}}};
    auto text = format_log_text(r);
    EXPECT_EQ(text.find('\n'), std::string::npos);
    EXPECT_NE(text.find(" WARNING task 1 failed: bad attempt=2 id=1 task=\"a b\""),
              std::string::npos)
        << text;
    auto j = Json::parse(format_log_json(r));
    EXPECT_EQ(j["level"], "warning");
    EXPECT_EQ(j["event"], "task.retried");
    EXPECT_EQ(j["message"], "task 1 failed:\nbad");
    EXPECT_EQ(j["task"], "a b");
    EXPECT_EQ(j["attempt"], 2);
    EXPECT_TRUE(j["time"].is_string());
}
