#include <date/date.h>
#include <date/tz.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <vector>

#include "conveyor/schedule.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor {

namespace {

using namespace std::chrono;

std::string upper(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = char(std::toupper(static_cast<unsigned char>(c)));
    return out;
}

struct FieldDef {
    const char* name;
    int lo, hi;
    const char* const* names;  // names[i] is value lo + i (or nullptr)
};

constexpr const char* kMonths[] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                   "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
constexpr const char* kDays[] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};

Result<int> value_of(std::string_view tok, const FieldDef& f) {
    if (f.names) {
        auto u = upper(tok);
        for (int i = 0; i <= f.hi - f.lo; ++i)
            if (i < (f.hi - f.lo + 1) && f.names[i] && u == f.names[i]) return f.lo + i;
    }
    int v = 0;
    auto [p, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
    if (ec != std::errc() || p != tok.data() + tok.size() || tok.empty())
        return fail(Errc::invalid_argument, fmt::format("'{}' is not a valid {}", tok, f.name));
    int hi = f.hi;
    if (std::string_view(f.name) == "day of week") hi = 7;  // 7 is Sunday too
    if (v < f.lo || v > hi)
        return fail(Errc::invalid_argument,
                    fmt::format("{} {} is out of range {}-{}", f.name, v, f.lo, hi));
    return v;
}

/// Parses one field into `bits` (indexed by value). `any` says whether it was * or ?.
template <std::size_t N>
Result<void> parse_field(std::string_view text, const FieldDef& f, std::bitset<N>& bits,
                         bool& any) {
    any = text == "*" || text == "?";
    while (!text.empty()) {
        auto comma = text.find(',');
        std::string_view part = text.substr(0, comma);
        text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
        if (part.empty())
            return fail(Errc::invalid_argument, fmt::format("empty list item in {}", f.name));
        int step = 1;
        if (auto slash = part.find('/'); slash != std::string_view::npos) {
            auto s = part.substr(slash + 1);
            auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), step);
            if (ec != std::errc() || p != s.data() + s.size() || step < 1)
                return fail(Errc::invalid_argument,
                            fmt::format("step '{}' in {} is not a positive number", s, f.name));
            part = part.substr(0, slash);
        }
        int lo = f.lo, hi = f.hi;
        if (part == "*" || part == "?") {
        } else if (auto dash = part.find('-'); dash != std::string_view::npos) {
            auto a = value_of(part.substr(0, dash), f);
            CONVEYOR_TRY(a);
            auto b = value_of(part.substr(dash + 1), f);
            CONVEYOR_TRY(b);
            lo = *a;
            hi = *b;
            if (lo > hi)
                return fail(Errc::invalid_argument,
                            fmt::format("range {}-{} in {} runs backwards", lo, hi, f.name));
        } else {
            auto a = value_of(part, f);
            CONVEYOR_TRY(a);
            lo = *a;
            hi = step > 1 ? f.hi : *a;  // "5/15" means from 5 to the end, every 15
        }
        for (int v = lo; v <= hi; v += step) {
            int idx = v;
            if (std::string_view(f.name) == "day of week" && v == 7) idx = 0;
            bits.set(std::size_t(idx));
        }
    }
    if (bits.none()) return fail(Errc::invalid_argument, fmt::format("{} is empty", f.name));
    return {};
}

const date::time_zone* zone(std::string_view name) {
    try {
        return date::locate_zone(std::string(name));
    } catch (const std::exception&) {
        return nullptr;
    }
}

}  // namespace

Result<CronExpr> CronExpr::parse(std::string_view text) {
    CronExpr c;
    c.text_ = std::string(text);
    std::string t(text);
    // Trim.
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    t.erase(0, t.find_first_not_of(" \t"));
    if (!t.empty() && t[0] == '@') {
        static const std::pair<const char*, const char*> macros[] = {
            {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
            {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
            {"@hourly", "0 * * * *"}};
        for (auto& [m, expansion] : macros)
            if (t == m) {
                auto r = parse(expansion);
                if (r) r->text_ = std::string(text);
                return r;
            }
        return fail(Errc::invalid_argument, fmt::format("unknown cron macro '{}'", t));
    }
    std::vector<std::string_view> fields;
    std::string_view rest = t;
    while (!rest.empty()) {
        auto start = rest.find_first_not_of(" \t");
        if (start == std::string_view::npos) break;
        rest = rest.substr(start);
        auto end = rest.find_first_of(" \t");
        fields.push_back(rest.substr(0, end));
        rest = end == std::string_view::npos ? std::string_view() : rest.substr(end);
    }
    if (fields.size() != 5 && fields.size() != 6)
        return fail(Errc::invalid_argument,
                    fmt::format("cron expression '{}' has {} fields; expected 5 (minute hour "
                                "day month weekday) or 6 (seconds first)",
                                text, fields.size()));
    std::size_t i = 0;
    bool any = false;
    if (fields.size() == 6) {
        CONVEYOR_TRY(parse_field(fields[i++], FieldDef{"second", 0, 59, nullptr}, c.seconds_, any));
    } else {
        c.seconds_.set(0);
    }
    auto wrap = [&](Result<void> ok) -> Result<void> {
        if (!ok)
            return fail(Errc::invalid_argument,
                        fmt::format("cron expression '{}': {}", text, ok.error().message));
        return {};
    };
    CONVEYOR_TRY(
        wrap(parse_field(fields[i++], FieldDef{"minute", 0, 59, nullptr}, c.minutes_, any)));
    CONVEYOR_TRY(wrap(parse_field(fields[i++], FieldDef{"hour", 0, 23, nullptr}, c.hours_, any)));
    CONVEYOR_TRY(wrap(
        parse_field(fields[i++], FieldDef{"day of month", 1, 31, nullptr}, c.days_, c.any_day_)));
    CONVEYOR_TRY(wrap(parse_field(fields[i++], FieldDef{"month", 1, 12, kMonths}, c.months_, any)));
    CONVEYOR_TRY(wrap(parse_field(fields[i++], FieldDef{"day of week", 0, 6, kDays}, c.weekdays_,
                                  c.any_weekday_)));
    return c;
}

Result<TimePoint> CronExpr::next(TimePoint after, std::string_view timezone) const {
    const date::time_zone* tz = zone(timezone);
    if (!tz) return fail(Errc::invalid_argument, fmt::format("unknown time zone '{}'", timezone));
    auto after_s = floor<seconds>(after);
    // Walk wall-clock times after the local time of `after`; the first whose instant is later
    // than `after` wins (a repeated wall-clock time is taken at its first occurrence only).
    auto local = tz->to_local(after_s) + seconds(1);
    auto day = floor<date::days>(local);
    auto tod = local - day;
    int h0 = int(duration_cast<hours>(tod).count());
    int m0 = int(duration_cast<minutes>(tod).count() % 60);
    int s0 = int(tod.count() % 60);
    for (int d = 0; d < 366 * 8; ++d, h0 = m0 = s0 = 0) {
        auto cur = day + date::days(d);
        date::year_month_day ymd(cur);
        if (!months_.test(unsigned(ymd.month()))) continue;
        bool dom = days_.test(unsigned(ymd.day()));
        bool dow = weekdays_.test(date::weekday(cur).c_encoding());
        bool day_ok = any_day_ && any_weekday_ ? true
                      : any_day_               ? dow
                      : any_weekday_           ? dom
                                               : (dom || dow);
        if (!day_ok) continue;
        for (int h = h0; h < 24; ++h, m0 = s0 = 0) {
            if (!hours_.test(std::size_t(h))) continue;
            for (int m = m0; m < 60; ++m, s0 = 0) {
                if (!minutes_.test(std::size_t(m))) continue;
                for (int s = s0; s < 60; ++s) {
                    if (!seconds_.test(std::size_t(s))) continue;
                    date::local_seconds lt{cur.time_since_epoch() + hours(h) + minutes(m) +
                                           seconds(s)};
                    auto sys = tz->to_sys(lt, date::choose::earliest);
                    if (sys > after_s) return TimePoint(sys);
                }
            }
        }
    }
    return fail(Errc::invalid_argument, fmt::format("cron expression '{}' never fires", text_));
}

std::string schedule_fire_id(std::string_view schedule, TimePoint at) {
    return fmt::format("schedule:{}:{}", schedule, detail::format_iso8601(floor<seconds>(at)));
}

Result<void> ScheduleSpec::validate() const {
    if (name.empty()) return fail(Errc::invalid_argument, "a schedule has no name");
    if (task.empty())
        return fail(Errc::invalid_argument, fmt::format("schedule '{}' has no task", name));
    if (cron.empty() == !every.has_value())
        return fail(Errc::invalid_argument,
                    fmt::format("schedule '{}' needs exactly one of cron and every", name));
    constexpr double kYear = 365.0 * 86400.0;
    if (every && !(*every >= 1 && *every <= 100 * kYear))  // NaN fails too
        return fail(Errc::invalid_argument,
                    fmt::format("schedule '{}': every must be from 1 to {} seconds", name,
                                std::int64_t(100 * kYear)));
    if (!(catch_up_window >= 0 && catch_up_window <= 10 * kYear))
        return fail(Errc::invalid_argument,
                    fmt::format("schedule '{}': catch_up_window must be from 0 to {} seconds", name,
                                std::int64_t(10 * kYear)));
    if (catch_up_limit < 1 || catch_up_limit > 1000000)
        return fail(Errc::invalid_argument,
                    fmt::format("schedule '{}': catch_up_limit must be from 1 to 1000000", name));
    if (priority && (*priority < 0 || *priority > 255))
        return fail(Errc::invalid_argument,
                    fmt::format("schedule '{}': priority must be from 0 to 255", name));
    if (!cron.empty()) {
        auto c = CronExpr::parse(cron);
        if (!c)
            return fail(Errc::invalid_argument,
                        fmt::format("schedule '{}': {}", name, c.error().message));
    }
    if (!zone(timezone))
        return fail(Errc::invalid_argument,
                    fmt::format("schedule '{}': unknown time zone '{}'", name, timezone));
    if (catch_up != "skip" && catch_up != "once" && catch_up != "all")
        return fail(Errc::invalid_argument,
                    fmt::format("schedule '{}': catch_up must be skip, once or all", name));
    if (overlap != "allow" && overlap != "skip")
        return fail(Errc::invalid_argument,
                    fmt::format("schedule '{}': overlap must be allow or skip", name));
    if (!args.is_array() || !kwargs.is_object())
        return fail(Errc::invalid_argument,
                    fmt::format("schedule '{}': args must be an array, kwargs an object", name));
    return {};
}

Result<TimePoint> ScheduleSpec::next_fire(TimePoint after) const {
    if (every) {
        // Anchored at the epoch, so every scheduler computes the same instants.
        auto period = duration_cast<milliseconds>(duration<double>(*every));
        auto since = duration_cast<milliseconds>(after.time_since_epoch());
        auto k = since / period + 1;
        return TimePoint(duration_cast<SystemClock::duration>(period * k));
    }
    auto c = CronExpr::parse(cron);
    CONVEYOR_TRY(c);
    return c->next(after, timezone);
}

Json ScheduleSpec::to_json() const {
    Json j = {{"name", name},
              {"task", task},
              {"timezone", timezone},
              {"args", args},
              {"kwargs", kwargs},
              {"catch_up", catch_up},
              {"catch_up_limit", catch_up_limit},
              {"catch_up_window", catch_up_window},
              {"overlap", overlap},
              {"paused", paused}};
    if (!cron.empty()) j["cron"] = cron;
    if (every) j["every"] = *every;
    if (!queue.empty()) j["queue"] = queue;
    if (priority) j["priority"] = *priority;
    return j;
}

Result<ScheduleSpec> ScheduleSpec::from_json(const Json& j) {
    if (!j.is_object()) return fail(Errc::invalid_argument, "a schedule is not a JSON object");
    ScheduleSpec s;
    try {
        s.name = j.value("name", "");
        s.task = j.value("task", "");
        s.cron = j.value("cron", "");
        if (j.contains("every") && !j["every"].is_null()) s.every = j["every"].get<double>();
        s.timezone = j.value("timezone", "UTC");
        s.args = j.value("args", Json::array());
        s.kwargs = j.value("kwargs", Json::object());
        s.queue = j.value("queue", "");
        if (j.contains("priority") && !j["priority"].is_null())
            s.priority = j["priority"].get<int>();
        s.catch_up = j.value("catch_up", "once");
        s.catch_up_limit = j.value("catch_up_limit", 1000);
        s.catch_up_window = j.value("catch_up_window", 60.0);
        s.overlap = j.value("overlap", "allow");
        s.paused = j.value("paused", false);
    } catch (const Json::exception& e) {
        return fail(Errc::invalid_argument,
                    fmt::format("a schedule field has the wrong type ({})", e.what()));
    }
    CONVEYOR_TRY(s.validate());
    return s;
}

}  // namespace conveyor
