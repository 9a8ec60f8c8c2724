// Worker and Scheduler lifecycles: run on the caller's thread or on their own, stop, wait with a
// deadline, and a destructor that stops and waits wherever the run is. Run under
// AddressSanitizer and ThreadSanitizer too (make sanitize).

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "conveyor/client.hpp"
#include "conveyor/scheduler.hpp"
#include "conveyor/worker.hpp"
#include "support/process.hpp"

using namespace conveyor;
using namespace std::chrono_literals;

namespace {

WorkerOptions small(std::string queue) {
    WorkerOptions o;
    o.queues = {std::move(queue)};
    o.concurrency = 2;
    o.shutdown_grace = 5s;
    o.remote_control = false;
    return o;
}

/// A handler that runs until it is told to stop, and counts how it ended.
struct Slow {
    std::atomic<int> started{0}, finished{0};
    Handler handler() {
        return [this](TaskContext& c) -> Json {
            ++started;
            auto until = std::chrono::steady_clock::now() + 300ms;
            while (!c.stop_requested() && std::chrono::steady_clock::now() < until)
                std::this_thread::sleep_for(1ms);
            ++finished;
            return "done";
        };
    }
};

bool eventually(const std::function<bool()>& f, std::chrono::milliseconds limit = 5s) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
        if (f()) return true;
        std::this_thread::sleep_for(2ms);
    }
    return f();
}

}  // namespace

TEST(WorkerLifecycle, StartStopWaitAndNoSecondRun) {
    auto broker = *Broker::open("memory://life-1");
    Worker w(broker, small("q"));
    Slow slow;
    w.handle("slow", slow.handler());
    EXPECT_FALSE(w.running());
    ASSERT_TRUE(w.start());
    EXPECT_TRUE(w.running());
    auto again = w.start();
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, Errc::invalid_argument);
    auto twice = w.run();  // not beside the started run either
    ASSERT_FALSE(twice);
    EXPECT_EQ(twice.error().code, Errc::invalid_argument);

    Client client(broker);
    auto id = client.enqueue("slow", {}, {}, {.queue = "q"});
    ASSERT_TRUE(id);
    auto r = client.wait(*id, 5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->result, "done");
    auto still = w.wait(10ms);
    ASSERT_FALSE(still);
    EXPECT_EQ(still.error().code, Errc::timeout);
    w.stop();
    EXPECT_TRUE(w.wait(5s));
    EXPECT_FALSE(w.running());
}

TEST(WorkerLifecycle, DestroyingARunningWorkerStopsItAndWaitsForItsTasks) {
    auto broker = *Broker::open("memory://life-2");
    Slow slow;
    {
        Worker w(broker, small("q"));
        w.handle("slow", slow.handler());
        ASSERT_TRUE(w.start());
        Client client(broker);
        for (int i = 0; i < 4; ++i) ASSERT_TRUE(client.enqueue("slow", {}, {}, {.queue = "q"}));
        ASSERT_TRUE(eventually([&] { return slow.started.load() >= 2; }));
    }  // destroyed while two handlers run: they end (graceful), nothing runs after this
    EXPECT_EQ(slow.started.load(), slow.finished.load());
    int started = slow.started.load();
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(slow.started.load(), started);
}

TEST(WorkerLifecycle, TheDestructorWaitsForARunOnAnotherThread) {
    auto broker = *Broker::open("memory://life-3");
    Slow slow;
    std::thread runner;
    std::atomic<bool> returned{false};
    {
        Worker w(broker, small("q"));
        w.handle("slow", slow.handler());
        runner = std::thread([&] {
            (void)w.run();
            returned = true;
        });
        Client client(broker);
        ASSERT_TRUE(client.enqueue("slow", {}, {}, {.queue = "q"}));
        ASSERT_TRUE(eventually([&] { return slow.started.load() == 1; }));
    }
    EXPECT_EQ(slow.finished.load(), 1);
    runner.join();
    EXPECT_TRUE(returned.load());
}

TEST(WorkerLifecycle, MovingAWorkerKeepsItsRun) {
    auto broker = *Broker::open("memory://life-4");
    Worker a(broker, small("q"));
    a.handle("add", [](TaskContext& c) -> Json { return c.args()[0].get<int>() + 1; });
    ASSERT_TRUE(a.start());
    Worker b = std::move(a);
    Client client(broker);
    auto id = client.enqueue("add", {41}, {}, {.queue = "q"});
    ASSERT_TRUE(id);
    auto r = client.wait(*id, 5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->result, 42);
    // Assigning over a running worker ends that run first.
    Worker c(broker, small("other"));
    ASSERT_TRUE(c.start());
    c = std::move(b);
    EXPECT_TRUE(c.running());
    c.stop();
    EXPECT_TRUE(c.wait(5s));
}

TEST(SchedulerLifecycle, StartStopWaitAndADestructorThatWaits) {
    testsupport::TempDir dir;
    auto broker = *Broker::open("sqlite://" + dir.file("s.db"));
    auto every = ScheduleSpec::from_json(
        Json{{"name", "tick"}, {"task", "t"}, {"every", 1}, {"queue", "ticks"}});
    ASSERT_TRUE(every) << every.error().message;
    {
        Scheduler s(broker, SchedulerOptions{.schedules = {*every}, .tick = 20ms});
        ASSERT_TRUE(s.start());
        auto again = s.start();
        ASSERT_FALSE(again);
        EXPECT_EQ(again.error().code, Errc::invalid_argument);
        ASSERT_TRUE(eventually([&] { return s.leading(); }));
        auto still = s.wait(10ms);
        ASSERT_FALSE(still);
        EXPECT_EQ(still.error().code, Errc::timeout);
        s.stop();
        EXPECT_TRUE(s.wait(5s));
        EXPECT_FALSE(s.leading());
    }
    {
        Scheduler s(broker, SchedulerOptions{.schedules = {*every}, .tick = 20ms});
        ASSERT_TRUE(s.start());
    }  // destroyed while it runs
}
