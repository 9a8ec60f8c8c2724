// Cron expressions and schedules: next-fire computation against a table, DST transitions,
// intervals, and the errors a mistyped expression gets.

#include "conveyor/schedule.hpp"

#include <gtest/gtest.h>

#include "core/time.hpp"

using namespace conveyor;

namespace {

TimePoint at(const char* iso) { return *detail::parse_iso8601(iso); }
std::string iso(TimePoint t) { return detail::format_iso8601(t); }

/// The next `n` fires after `from`, as ISO strings (UTC).
std::vector<std::string> fires(const char* expr, const char* from, int n, const char* tz = "UTC") {
    auto c = CronExpr::parse(expr);
    EXPECT_TRUE(c) << expr << ": " << c.error().message;
    std::vector<std::string> out;
    if (!c) return out;
    TimePoint t = at(from);
    for (int i = 0; i < n; ++i) {
        auto next = c->next(t, tz);
        EXPECT_TRUE(next) << next.error().message;
        if (!next) break;
        out.push_back(iso(*next));
        t = *next;
    }
    return out;
}

}  // namespace

TEST(Cron, NextFireFollowsTheExpressionTable) {
    struct Case {
        const char* expr;
        const char* from;
        std::vector<std::string> want;
    };
    std::vector<Case> cases = {
        {"*/15 * * * *",
         "2026-11-27T10:07:00Z",
         {"2026-11-27T10:15:00.000000+00:00", "2026-11-27T10:30:00.000000+00:00"}},
        {"30 2 * * *",
         "2026-11-27T02:30:00Z",  // strictly after
         {"2026-11-28T02:30:00.000000+00:00"}},
        {"0 9 * * MON-FRI",
         "2026-11-27T09:00:00Z",  // a Friday
         {"2026-11-30T09:00:00.000000+00:00", "2026-12-01T09:00:00.000000+00:00"}},
        {"0 0 1,15 * *",
         "2026-11-27T00:00:00Z",
         {"2026-12-01T00:00:00.000000+00:00", "2026-12-15T00:00:00.000000+00:00"}},
        {"0 0 * * 7", "2026-11-27T00:00:00Z", {"2026-11-29T00:00:00.000000+00:00"}},  // Sunday
        {"0 0 * * sun", "2026-11-27T00:00:00Z", {"2026-11-29T00:00:00.000000+00:00"}},
        {"0 12 * JAN,jul *", "2026-11-27T00:00:00Z", {"2027-01-01T12:00:00.000000+00:00"}},
        {"5-10/5 8 * * *",
         "2026-11-27T08:06:00Z",
         {"2026-11-27T08:10:00.000000+00:00", "2026-11-28T08:05:00.000000+00:00"}},
        {"10/20 * * * *",
         "2026-11-27T08:00:00Z",
         {"2026-11-27T08:10:00.000000+00:00", "2026-11-27T08:30:00.000000+00:00",
          "2026-11-27T08:50:00.000000+00:00", "2026-11-27T09:10:00.000000+00:00"}},
        // Both day fields restricted: either matches (the 13th, or any Friday).
        {"0 0 13 * FRI",
         "2026-11-27T00:00:00Z",
         {"2026-12-04T00:00:00.000000+00:00", "2026-12-11T00:00:00.000000+00:00",
          "2026-12-13T00:00:00.000000+00:00"}},
        {"0 0 29 2 *", "2026-11-27T00:00:00Z", {"2028-02-29T00:00:00.000000+00:00"}},
        {"*/10 * * * * *",
         "2026-11-27T10:00:05Z",
         {"2026-11-27T10:00:10.000000+00:00", "2026-11-27T10:00:20.000000+00:00"}},
        {"@hourly", "2026-11-27T10:00:00Z", {"2026-11-27T11:00:00.000000+00:00"}},
        {"@daily", "2026-11-27T10:00:00Z", {"2026-11-28T00:00:00.000000+00:00"}},
        {"@weekly", "2026-11-27T10:00:00Z", {"2026-11-29T00:00:00.000000+00:00"}},
        {"@monthly", "2026-11-27T10:00:00Z", {"2026-12-01T00:00:00.000000+00:00"}},
        {"@yearly", "2026-11-27T10:00:00Z", {"2027-01-01T00:00:00.000000+00:00"}},
    };
    for (auto& c : cases)
        EXPECT_EQ(fires(c.expr, c.from, int(c.want.size())), c.want)
            << c.expr << " from " << c.from;
}

TEST(Cron, TimeZoneShiftsTheWallClock) {
    // 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer.
    EXPECT_EQ(fires("0 9 * * *", "2026-11-27T00:00:00Z", 1, "Europe/Berlin"),
              std::vector<std::string>{"2026-11-27T08:00:00.000000+00:00"});
    EXPECT_EQ(fires("0 9 * * *", "2026-07-01T00:00:00Z", 1, "Europe/Berlin"),
              std::vector<std::string>{"2026-07-01T07:00:00.000000+00:00"});
    EXPECT_EQ(fires("0 9 * * *", "2026-11-27T00:00:00Z", 1, "America/New_York"),
              std::vector<std::string>{"2026-11-27T14:00:00.000000+00:00"});
}

TEST(Cron, SpringForwardDayFiresANonexistentTimeOnce) {
    // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    auto got = fires("30 2 * * *", "2026-03-27T12:00:00Z", 4, "Europe/Berlin");
    EXPECT_EQ(got, (std::vector<std::string>{
                       "2026-03-28T01:30:00.000000+00:00",  // 02:30 CET
                       "2026-03-29T01:00:00.000000+00:00",  // at the jump (03:00 CEST), once
                       "2026-03-30T00:30:00.000000+00:00",  // 02:30 CEST
                       "2026-03-31T00:30:00.000000+00:00",
                   }));
}

TEST(Cron, FallBackDayFiresARepeatedTimeOnce) {
    // Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    auto got = fires("30 2 * * *", "2026-10-23T12:00:00Z", 3, "Europe/Berlin");
    EXPECT_EQ(got, (std::vector<std::string>{
                       "2026-10-24T00:30:00.000000+00:00",  // 02:30 CEST
                       "2026-10-25T00:30:00.000000+00:00",  // first 02:30 only
                       "2026-10-26T01:30:00.000000+00:00",  // 02:30 CET
                   }));
    // New York, 2026-11-01: 01:30 happens twice; fired once.
    got = fires("30 1 * * *", "2026-10-31T12:00:00Z", 2, "America/New_York");
    EXPECT_EQ(got, (std::vector<std::string>{"2026-11-01T05:30:00.000000+00:00",
                                             "2026-11-02T06:30:00.000000+00:00"}));
}

TEST(Cron, MistakesAreOneSentenceNamingTheField) {
    struct Bad {
        const char* expr;
        const char* says;
    };
    for (auto [expr, says] : std::vector<Bad>{{"61 * * * *", "minute 61 is out of range 0-59"},
                                              {"* * *", "has 3 fields"},
                                              {"@sometimes", "unknown cron macro"},
                                              {"5-1 * * * *", "runs backwards"},
                                              {"*/0 * * * *", "not a positive number"},
                                              {"* * * FOO *", "'FOO' is not a valid month"},
                                              {"* 24 * * *", "hour 24 is out of range"},
                                              {"1,,2 * * * *", "empty list item"}}) {
        auto c = CronExpr::parse(expr);
        ASSERT_FALSE(c) << expr;
        EXPECT_NE(c.error().message.find(says), std::string::npos)
            << expr << ": " << c.error().message;
    }
    auto never = CronExpr::parse("0 0 31 2 *");
    ASSERT_TRUE(never);
    EXPECT_FALSE(never->next(at("2026-01-01T00:00:00Z")));
    EXPECT_FALSE(CronExpr::parse("0 * * * *")->next(at("2026-01-01T00:00:00Z"), "Mars/Olympus"));
}

TEST(Schedule, IntervalsAreAnchoredAtTheEpochSoEverySchedulerAgrees) {
    ScheduleSpec s{.name = "sync", .task = "t", .every = 10};
    ASSERT_TRUE(s.validate());
    EXPECT_EQ(iso(*s.next_fire(at("2026-11-27T10:00:03Z"))), "2026-11-27T10:00:10.000000+00:00");
    EXPECT_EQ(iso(*s.next_fire(at("2026-11-27T10:00:10Z"))), "2026-11-27T10:00:20.000000+00:00");
    EXPECT_EQ(schedule_fire_id("sync", at("2026-11-27T10:00:10.4Z")),
              "schedule:sync:2026-11-27T10:00:10.000000+00:00");
}

TEST(Schedule, ValidationNamesTheScheduleAndTheProblem) {
    EXPECT_FALSE((ScheduleSpec{.name = "a", .task = "t"}.validate()));  // neither cron nor every
    auto both = ScheduleSpec{.name = "a", .task = "t", .cron = "* * * * *", .every = 5}.validate();
    ASSERT_FALSE(both);
    EXPECT_NE(both.error().message.find("exactly one of cron and every"), std::string::npos);
    auto tz = ScheduleSpec{.name = "a", .task = "t", .cron = "* * * * *", .timezone = "Nowhere"}
                  .validate();
    ASSERT_FALSE(tz);
    EXPECT_NE(tz.error().message.find("unknown time zone 'Nowhere'"), std::string::npos);
    auto policy =
        ScheduleSpec{.name = "a", .task = "t", .every = 5, .catch_up = "sometimes"}.validate();
    ASSERT_FALSE(policy);
    EXPECT_NE(policy.error().message.find("catch_up must be skip, once or all"), std::string::npos);
    auto round = ScheduleSpec::from_json(
        ScheduleSpec{.name = "r", .task = "t", .cron = "0 * * * *", .args = {1}}.to_json());
    ASSERT_TRUE(round) << round.error().message;
    EXPECT_EQ(round->cron, "0 * * * *");
    EXPECT_EQ(round->args, Json::array({1}));
}
