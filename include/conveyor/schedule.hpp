#pragma once
/// Periodic tasks: cron expressions (in a time zone, DST-correct) and fixed intervals.

#include <bitset>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/error.hpp"
#include "conveyor/task.hpp"

namespace conveyor {

/// A parsed cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6
/// (seconds first); ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`, month and day names
/// (JAN..DEC, SUN..SAT; 7 is Sunday too), `?` for a day field, and the macros @yearly
/// (@annually), @monthly, @weekly, @daily (@midnight) and @hourly. As in Vixie cron, when both
/// day fields are restricted a day matching either runs.
class CronExpr {
  public:
    /// Errc::invalid_argument naming the field and what is wrong.
    static Result<CronExpr> parse(std::string_view text);

    /// The first time strictly after `after` whose wall-clock time in `timezone` (an IANA name,
    /// e.g. "Europe/Berlin"; "UTC" by default) matches. On a spring-forward day a time that
    /// does not exist fires once, at the transition; on a fall-back day a time that occurs
    /// twice fires once, at its first occurrence. Errc::invalid_argument for an unknown zone.
    Result<TimePoint> next(TimePoint after, std::string_view timezone = "UTC") const;

    const std::string& text() const noexcept { return text_; }

  private:
    std::string text_;
    std::bitset<60> seconds_, minutes_;
    std::bitset<24> hours_;
    std::bitset<32> days_;     // 1..31
    std::bitset<13> months_;   // 1..12
    std::bitset<7> weekdays_;  // 0 = Sunday
    bool any_day_ = true, any_weekday_ = true;
};

/// One `[[schedule]]`: a task fired by cron expression or fixed interval.
struct ScheduleSpec {
    std::string name;
    std::string task;
    std::string cron;              ///< either this ...
    std::optional<double> every;   ///< ... or this many seconds (anchored at the epoch)
    std::string timezone = "UTC";  ///< for cron
    Json args = Json::array();
    Json kwargs = Json::object();
    std::string queue;  ///< default: the task's queue
    std::optional<int> priority;
    std::string catch_up = "once";  ///< missed fires: skip, once (the latest) or all
    int catch_up_limit = 1000;      ///< most fires of one catch-up ("all")
    double catch_up_window = 60;    ///< seconds: fires this recent are never missed
    std::string overlap = "allow";  ///< allow, or skip while the previous run runs
    bool paused = false;

    /// Checks the fields (cron parses, zone exists, policies are known): one sentence.
    Result<void> validate() const;
    /// The first fire strictly after `after`.
    Result<TimePoint> next_fire(TimePoint after) const;
    Json to_json() const;
    static Result<ScheduleSpec> from_json(const Json& j);
};

/// The id of a schedule's fire at `at`: the same for every scheduler, so a fire published
/// twice is one task.
std::string schedule_fire_id(std::string_view schedule, TimePoint at);

}  // namespace conveyor
