// Schedules kept by RabbitMQ (the suite's shared node): CLI-added schedules, pausing, and
// catch-up after downtime, through the broker's schedule store.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "conveyor/scheduler.hpp"
#include "integration/helpers.hpp"
#include "support/queue_stats.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using namespace itest;
using testsupport::unique_name;

namespace {

/// One scheduler leads a broker at a time, and the suite's node is shared by tests run side
/// by side: each test here holds this lock (a file next to the node) while it leads, so that
/// the other waits instead of finding the leadership taken.
class LeadershipLock {
  public:
    LeadershipLock() {
        const char* d = std::getenv("CONVEYOR_TEST_SERVERS_DIR");
        std::string path = std::string(d && *d ? d : "/tmp") + "/amqp-schedules.lock";
        fd_ = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
        if (fd_ >= 0) ::flock(fd_, LOCK_EX);
    }
    ~LeadershipLock() {
        if (fd_ >= 0) ::close(fd_);
    }
    LeadershipLock(const LeadershipLock&) = delete;
    LeadershipLock& operator=(const LeadershipLock&) = delete;

  private:
    int fd_ = -1;
};

void run_scheduler_for(std::vector<ScheduleSpec> specs, std::chrono::milliseconds d) {
    SchedulerOptions o;
    o.schedules = std::move(specs);
    o.tick = 50ms;
    Scheduler s(open_with(queues({})), o);
    std::thread t([&] { EXPECT_TRUE(s.run()); });
    std::this_thread::sleep_for(d);
    s.stop();
    t.join();
}

/// Ready messages of a queue (passive declare).
std::int64_t ready(Broker& b, const std::string& q) { return testsupport::stats_of(b, q).ready; }

}  // namespace

TEST(AmqpSchedules, CliAddedAndPausedSchedulesAreKeptByTheBroker) {
    LeadershipLock lock;
    auto q = unique_name("sched");
    auto broker = open_with(queues({q}));
    auto store = broker->schedule_store();
    ASSERT_TRUE(store) << store.error().message;
    ScheduleSpec s{.name = q, .task = "t.tick", .every = 1, .queue = q};
    ASSERT_TRUE((*store)->add(s.to_json()));
    run_scheduler_for({}, 2500ms);
    auto fired = ready(*broker, q);
    EXPECT_GE(fired, 2);
    EXPECT_LE(fired, 3);

    ASSERT_TRUE((*store)->set_paused(q, true));
    auto st = Scheduler::status(**store, {});
    ASSERT_TRUE(st);
    auto it = std::find_if(st->begin(), st->end(), [&](auto& x) { return x.spec.name == q; });
    ASSERT_NE(it, st->end());
    EXPECT_TRUE(it->spec.paused);
    EXPECT_EQ(it->source, "cli");
    ASSERT_TRUE(it->last_run);
    run_scheduler_for({}, 2000ms);
    EXPECT_EQ(ready(*broker, q), fired);  // paused: nothing more

    ASSERT_TRUE(*(*store)->remove(q));
    st = Scheduler::status(**store, {});
    ASSERT_TRUE(st);
    EXPECT_EQ(std::count_if(st->begin(), st->end(), [&](auto& x) { return x.spec.name == q; }), 0);
}

TEST(AmqpSchedules, AfterDowntimeCatchUpOnceFiresTheLatestMissedFireOnly) {
    LeadershipLock lock;
    auto q = unique_name("catchup");
    auto broker = open_with(queues({q}));
    ScheduleSpec s{.name = q, .task = "t.report", .every = 3600, .queue = q, .catch_up_window = 0};
    {
        // The last fire was recorded ten minutes ago (as if every scheduler had been down).
        auto store = *broker->schedule_store();
        ASSERT_TRUE(*store->lead("test", 10s));
        std::vector<ScheduleFire> f = {{q, SystemClock::now() - 10h, std::nullopt}};
        ASSERT_TRUE(*store->fire("test", f));
        ASSERT_TRUE(store->resign("test"));
    }
    run_scheduler_for({s}, 800ms);
    EXPECT_EQ(ready(*broker, q), 1);
}
