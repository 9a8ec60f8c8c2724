// The task history RabbitMQ's dashboard keeps from Celery events: what a sequence of events
// makes of a task and a worker, and hostile events (anyone on the vhost may publish them)
// skipped without harm.

#include <gtest/gtest.h>

#include <chrono>
#include <map>

#include "broker/sqlite/sqlite_events.hpp"
#include "broker/sqlite/sqlite_history.hpp"
#include "core/time.hpp"
#include "support/process.hpp"

using namespace conveyor;

namespace {

/// The events' times: a whole second a minute ago (workers unseen for a day are forgotten, so
/// the times must be recent whenever the test runs).
std::int64_t base_s() {
    static const std::int64_t b =
        std::chrono::duration_cast<std::chrono::seconds>(SystemClock::now().time_since_epoch())
            .count() -
        60;
    return b;
}
double at(double offset) { return double(base_s()) + offset; }

Json ev(Json fields) {
    if (!fields.contains("hostname")) fields["hostname"] = "w1@host";
    if (!fields.contains("timestamp")) fields["timestamp"] = at(0.5);
    return fields;
}

}  // namespace

TEST(EventHistory, EventsMakeATaskWithItsAttemptsAndAWorker) {
    testsupport::TempDir dir;
    sqlite::SqliteOptions so;
    so.path = dir.file("h.db");
    so.history = std::chrono::seconds(10LL * 365 * 86400);  // the fixed timestamps stay
    auto folder = sqlite::open_event_folder(so);
    ASSERT_TRUE(folder) << folder.error().message;
    std::vector<Json> events = {
        ev({{"type", "worker-online"}, {"pid", 42}, {"sw_ident", "py-celery"}}),
        ev({{"type", "task-received"},
            {"uuid", "t-1"},
            {"name", "orders.bill"},
            {"args", "(1, 'acme')"},
            {"kwargs", "{}"},
            {"retries", 0},
            {"queue", "billing"}}),
        ev({{"type", "task-started"}, {"uuid", "t-1"}, {"timestamp", at(1)}}),
        ev({{"type", "task-retried"},
            {"uuid", "t-1"},
            {"exception", "IOError('down')"},
            {"timestamp", at(2)}}),
        ev({{"type", "task-received"},
            {"uuid", "t-1"},
            {"name", "orders.bill"},
            {"args", "(1, 'acme')"},
            {"kwargs", "{}"},
            {"retries", 1}}),
        ev({{"type", "task-started"}, {"uuid", "t-1"}, {"timestamp", at(3)}}),
        ev({{"type", "task-succeeded"},
            {"uuid", "t-1"},
            {"runtime", 0.25},
            {"timestamp", at(3.25)}}),
        // Hostile or odd: skipped, or kept within bounds.
        Json::object(),
        Json{{"type", 7}},
        ev({{"type", "task-started"}}),                // no uuid
        ev({{"type", "task-started"}, {"uuid", 12}}),  // not a string
        ev({{"type", "task-started"}, {"uuid", std::string(100000, 'x')}}),
        ev({{"type", "task-failed"}, {"uuid", "t-2"}, {"timestamp", "soon"}, {"exception", 5}}),
        ev({{"type", "task-succeeded"}, {"uuid", "t-3"}, {"runtime", -1e308}}),
        ev({{"type", "worker-heartbeat"}, {"hostname", 5}}),
        ev({{"type", "worker-heartbeat"},
            {"hostname", "w2@host"},
            {"loadavg", "high"},
            {"active", "many"},
            {"timestamp", 1e300}}),
        ev({{"type", "nonsense"}, {"uuid", "t-4"}}),
    };
    ASSERT_TRUE((*folder)->apply(events));
    auto history = sqlite::open_history(so, true);
    ASSERT_TRUE(history) << history.error().message;
    auto t = (*history)->task("t-1");
    ASSERT_TRUE(t) << t.error().message;
    EXPECT_EQ(t->state, HistoryState::succeeded);
    EXPECT_EQ(t->name, "orders.bill");
    EXPECT_EQ(t->queue, "billing");
    EXPECT_EQ(t->retries, 1);
    ASSERT_EQ(t->attempts.size(), 1u);
    EXPECT_EQ(t->attempts[0].error, "IOError('down')");
    EXPECT_EQ(t->attempts[0].worker, "w1@host#events");
    EXPECT_EQ(detail::to_epoch_ms(t->attempts[0].started), base_s() * 1000 + 1000);
    ASSERT_TRUE(t->finished);
    EXPECT_EQ(detail::to_epoch_ms(*t->finished), base_s() * 1000 + 3250);
    EXPECT_EQ(t->envelope.headers.value("argsrepr", ""), "(1, 'acme')");
    // The failed one with a non-string exception and no time: there, now, without an error.
    auto t2 = (*history)->task("t-2");
    ASSERT_TRUE(t2);
    EXPECT_EQ(t2->state, HistoryState::dead);
    EXPECT_FALSE((*history)->task(std::string(100000, 'x')));
    auto page = (*history)->tasks({});
    ASSERT_TRUE(page);
    EXPECT_EQ(page->tasks.size(), 3u);  // t-1, t-2, t-3
    // Retry and revoke belong to the broker.
    EXPECT_EQ((*history)->retry("t-1").error().code, Errc::invalid_argument);
    EXPECT_EQ((*history)->revoke("t-1").error().code, Errc::invalid_argument);
    EXPECT_TRUE((*history)->remove("t-3"));
    // Workers: the good one with its pid; the odd one without its odd fields.
    auto workers = (*history)->workers();
    ASSERT_TRUE(workers);
    ASSERT_EQ(workers->size(), 2u);
    std::map<std::string, Json> info;
    for (auto& w : *workers) info[w.node] = w.info;
    EXPECT_EQ(info["w1@host"]["pid"], 42);
    EXPECT_EQ(info["w1@host"]["sw_ident"], "py-celery");
    EXPECT_FALSE(info["w2@host"].contains("loadavg"));
    EXPECT_FALSE(info["w2@host"].contains("active"));
    // Per-minute counts: one success, one retry (a failure), one failure (dead); t-3's
    // absurd runtime clamped.
    auto minutes = (*history)->minutes(detail::from_epoch_ms(0));
    ASSERT_TRUE(minutes);
    std::int64_t ok = 0, failed = 0, retried = 0, dead = 0;
    for (auto& m : *minutes) {
        ok += m.succeeded;
        failed += m.failed;
        retried += m.retried;
        dead += m.dead;
        EXPECT_GE(m.run_seconds, 0);
    }
    EXPECT_EQ(ok, 2);
    EXPECT_EQ(failed, 2);
    EXPECT_EQ(retried, 1);
    EXPECT_EQ(dead, 1);
}
