// The scheduler in-process on a real sqlite file: catch-up policies after downtime, overlap
// skipping, pausing, and leadership handed over on a clean stop.

#include "conveyor/scheduler.hpp"

#include <gtest/gtest.h>

#include <thread>

#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "support/process.hpp"
#include "support/queue_stats.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::stats_of;
using testsupport::TempDir;

namespace {

struct ScheduleFixture {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("s.db");
    std::shared_ptr<Broker> broker = *Broker::open(url);

    /// Runs a scheduler with `specs` for `d`.
    void run_for(std::vector<ScheduleSpec> specs, std::chrono::milliseconds d) {
        SchedulerOptions o;
        o.schedules = std::move(specs);
        o.lease = 1s;
        o.tick = 50ms;
        Scheduler s(*Broker::open(url), o);
        std::thread t([&] { EXPECT_TRUE(s.run()); });
        std::this_thread::sleep_for(d);
        s.stop();
        t.join();
    }
    /// Pretends the schedule last fired `ago`, as after scheduler downtime.
    void last_fired(const std::string& name, std::chrono::seconds ago) {
        auto store = *broker->schedule_store();
        ASSERT_TRUE(*store->lead("test", 10s));
        std::vector<ScheduleFire> f = {{name, SystemClock::now() - ago, std::nullopt}};
        ASSERT_TRUE(*store->fire("test", f));
        ASSERT_TRUE(store->resign("test"));
    }
    std::int64_t queued(const std::string& q) { return stats_of(*broker, q).ready; }
};

ScheduleSpec hourly(const std::string& name, const std::string& catch_up) {
    return ScheduleSpec{.name = name,
                        .task = "t.report",
                        .every = 3600,
                        .queue = name,
                        .catch_up = catch_up,
                        .catch_up_window = 0};  // every missed fire follows the policy
}

}  // namespace

TEST(Scheduler, CatchUpAllFiresEveryMissedFireUpToTheLimit) {
    ScheduleFixture f;
    f.last_fired("all", 10h);
    auto s = hourly("all", "all");
    s.catch_up_limit = 5;
    f.run_for({s}, 600ms);
    EXPECT_EQ(f.queued("all"), 5);  // 9 or 10 were missed; the newest 5 run
}

TEST(Scheduler, CatchUpOnceFiresOnlyTheLatestMissedFire) {
    ScheduleFixture f;
    f.last_fired("once", 10h);
    f.run_for({hourly("once", "once")}, 600ms);
    EXPECT_EQ(f.queued("once"), 1);
}

TEST(Scheduler, CatchUpSkipFiresNothingMissedAndCarriesOn) {
    ScheduleFixture f;
    f.last_fired("skip", 10h);
    f.run_for({hourly("skip", "skip")}, 600ms);
    EXPECT_EQ(f.queued("skip"), 0);
    auto store = *f.broker->schedule_store();
    auto st = Scheduler::status(*store, {hourly("skip", "skip")});
    ASSERT_TRUE(st);
    ASSERT_TRUE((*st)[0].last_fire);
    EXPECT_GT(*(*st)[0].last_fire, SystemClock::now() - 3601s);  // the missed fires are behind it
}

TEST(Scheduler, OverlapSkipDoesNotPileUpWhileThePreviousRunWaits) {
    ScheduleFixture f;
    ScheduleSpec allow{.name = "allow", .task = "t", .every = 1, .queue = "allow"};
    ScheduleSpec skip{.name = "skip", .task = "t", .every = 1, .queue = "skip", .overlap = "skip"};
    f.run_for({allow, skip}, 3500ms);
    // Nobody runs the tasks: "allow" piles them up, "skip" keeps one waiting.
    EXPECT_GE(f.queued("allow"), 3);
    EXPECT_EQ(f.queued("skip"), 1);
}

TEST(Scheduler, PausedScheduleDoesNotFireAndResumesFromNow) {
    ScheduleFixture f;
    ScheduleSpec s{.name = "p", .task = "t", .every = 1, .queue = "p"};
    auto store = *f.broker->schedule_store();
    ASSERT_TRUE(store->set_paused("p", true));
    f.run_for({s}, 2500ms);
    EXPECT_EQ(f.queued("p"), 0);
    ASSERT_TRUE(store->set_paused("p", false));
    f.run_for({s}, 2500ms);
    auto n = f.queued("p");
    EXPECT_GE(n, 2);
    EXPECT_LE(n, 3);  // no burst of the paused seconds
}

TEST(Scheduler, CliAddedScheduleFiresUntilRemoved) {
    ScheduleFixture f;
    auto store = *f.broker->schedule_store();
    ScheduleSpec added{.name = "added", .task = "t", .every = 1, .queue = "added"};
    ASSERT_TRUE(store->add(added.to_json()));
    f.run_for({}, 2500ms);
    EXPECT_GE(f.queued("added"), 2);
    ASSERT_TRUE(*store->remove("added"));
    auto st = Scheduler::status(*store, {});
    ASSERT_TRUE(st);
    EXPECT_TRUE(st->empty());
}

TEST(Scheduler, SchedulesOnAnEngineWithoutAStoreAreRefusedInOneSentence) {
    auto b = *Broker::open("memory://sched");
    Scheduler s(b, SchedulerOptions{});
    auto r = s.run();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("schedules are kept by the sqlite engine"), std::string::npos);
}
