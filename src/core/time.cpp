#include "core/time.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>

namespace conveyor::detail {

namespace {

std::string format_impl(TimePoint t, bool with_offset) {
    using namespace std::chrono;
    auto us = time_point_cast<microseconds>(t);
    auto day = floor<days>(us);
    year_month_day ymd{day};
    hh_mm_ss hms{us - day};
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{}", int(ymd.year()),
                       unsigned(ymd.month()), unsigned(ymd.day()), hms.hours().count(),
                       hms.minutes().count(), hms.seconds().count(), hms.subseconds().count(),
                       with_offset ? "+00:00" : "");
}

bool read_int(std::string_view s, std::size_t& pos, std::size_t n, int& out) {
    if (pos + n > s.size()) return false;
    auto r = std::from_chars(s.data() + pos, s.data() + pos + n, out);
    if (r.ec != std::errc{} || r.ptr != s.data() + pos + n) return false;
    pos += n;
    return true;
}

bool expect(std::string_view s, std::size_t& pos, char c) {
    if (pos < s.size() && s[pos] == c) {
        ++pos;
        return true;
    }
    return false;
}

}  // namespace

std::string format_iso8601(TimePoint t) { return format_impl(t, true); }
std::string format_iso8601_naive(TimePoint t) { return format_impl(t, false); }

std::optional<TimePoint> parse_iso8601(std::string_view s) {
    using namespace std::chrono;
    std::size_t pos = 0;
    int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
    if (!read_int(s, pos, 4, y) || !expect(s, pos, '-') || !read_int(s, pos, 2, mo) ||
        !expect(s, pos, '-') || !read_int(s, pos, 2, d))
        return std::nullopt;
    if (pos < s.size()) {
        if (s[pos] != 'T' && s[pos] != 't' && s[pos] != ' ') return std::nullopt;
        ++pos;
        if (!read_int(s, pos, 2, h) || !expect(s, pos, ':') || !read_int(s, pos, 2, mi))
            return std::nullopt;
        if (expect(s, pos, ':') && !read_int(s, pos, 2, sec)) return std::nullopt;
    }
    std::int64_t frac_ns = 0;
    if (pos < s.size() && (s[pos] == '.' || s[pos] == ',')) {
        ++pos;
        int digits = 0;
        while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
            if (digits < 9) {
                frac_ns = frac_ns * 10 + (s[pos] - '0');
                ++digits;
            }
            ++pos;
        }
        if (digits == 0) return std::nullopt;
        for (int i = digits; i < 9; ++i) frac_ns *= 10;
    }
    int offset_min = 0;
    if (pos < s.size()) {
        if (s[pos] == 'Z' || s[pos] == 'z') {
            ++pos;
        } else if (s[pos] == '+' || s[pos] == '-') {
            int sign = s[pos] == '-' ? -1 : 1;
            ++pos;
            int oh = 0, om = 0;
            if (!read_int(s, pos, 2, oh)) return std::nullopt;
            expect(s, pos, ':');
            if (pos < s.size() && !read_int(s, pos, 2, om)) return std::nullopt;
            offset_min = sign * (oh * 60 + om);
        } else {
            return std::nullopt;
        }
    }
    if (pos != s.size()) return std::nullopt;
    year_month_day ymd{year{y}, month{unsigned(mo)}, day{unsigned(d)}};
    if (!ymd.ok() || h > 23 || mi > 59 || sec > 60) return std::nullopt;
    // Years 0000-9999 do not all fit the clock's nanoseconds: compare in days first.
    sys_days day_of = sys_days{ymd};
    if (day_of >= floor<days>(kLatestTime) + days{1}) return kLatestTime;
    if (day_of < floor<days>(kEarliestTime)) return kEarliestTime;
    auto tp = time_point_cast<SystemClock::duration>(sys_seconds{day_of}) + hours{h} + minutes{mi} +
              seconds{sec} + nanoseconds{frac_ns} - minutes{offset_min};
    return std::clamp(TimePoint(tp), kEarliestTime, kLatestTime);
}

TimePoint add_clamped(TimePoint t, std::chrono::milliseconds d) noexcept {
    using namespace std::chrono;
    // In milliseconds: the span from the earliest to the latest time overflows nanoseconds.
    auto ms = [](TimePoint p) { return duration_cast<milliseconds>(p.time_since_epoch()); };
    t = std::clamp(t, kEarliestTime, kLatestTime);
    if (d >= ms(kLatestTime) - ms(t)) return kLatestTime;
    if (d <= ms(kEarliestTime) - ms(t)) return kEarliestTime;
    return t + d;
}

std::optional<std::chrono::milliseconds> seconds_to_ms(double seconds) noexcept {
    if (std::isnan(seconds)) return std::nullopt;
    constexpr double kLimit = 200.0 * 365.25 * 86400.0;  // within the clock's range from now
    double s = std::clamp(seconds, -kLimit, kLimit);
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(s * 1000.0)));
}

Result<void> check_time(TimePoint t, std::string_view what) {
    if (t < kLatestTime) return {};
    return fail(Errc::invalid_argument,
                fmt::format("{} is after 2262-01-01T00:00:00Z, the latest time Conveyor can "
                            "represent",
                            what));
}

std::int64_t to_epoch_ms(TimePoint t) noexcept {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

TimePoint from_epoch_ms(std::int64_t ms) noexcept {
    return TimePoint{
        std::chrono::duration_cast<SystemClock::duration>(std::chrono::milliseconds{ms})};
}

}  // namespace conveyor::detail
