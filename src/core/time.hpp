#pragma once
// ISO-8601 and epoch conversions used by the codec, the CLI and the stores.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/error.hpp"
#include "conveyor/task.hpp"

namespace conveyor::detail {

/// "2026-11-27T03:31:03.835497+00:00" (UTC, microseconds), as Celery writes eta/expires.
std::string format_iso8601(TimePoint t);
/// Naive UTC form Celery uses for date_done: "2026-11-27T03:31:03.835497".
std::string format_iso8601_naive(TimePoint t);
/// Accepts "Z", "+hh:mm"/"-hh:mm" offsets, naive (UTC) forms, a space instead of 'T',
/// and 0..9 fractional digits. Times after kLatestTime (or before kEarliestTime) come back as
/// that limit.
std::optional<TimePoint> parse_iso8601(std::string_view text);

/// The latest time Conveyor represents (2262-01-01T00:00:00Z; the clock's own limit is in April
/// 2262). Later times read from the wire are taken as this one: such a task waits. A caller
/// asking for a later time gets an error instead (`check_time`).
inline constexpr TimePoint kLatestTime{
    std::chrono::sys_days{std::chrono::year{2262} / std::chrono::January / 1}};
/// The earliest, symmetric to it (1678-01-01).
inline constexpr TimePoint kEarliestTime{
    std::chrono::sys_days{std::chrono::year{1678} / std::chrono::January / 1}};

/// `t + d`, held within [kEarliestTime, kLatestTime] instead of overflowing.
TimePoint add_clamped(TimePoint t, std::chrono::milliseconds d) noexcept;
/// Seconds (a config value, a header, a CLI flag) as milliseconds, held within +/- 200 years;
/// nullopt for NaN.
std::optional<std::chrono::milliseconds> seconds_to_ms(double seconds) noexcept;
/// Invalid argument when `t` is at or after kLatestTime: "{what} is after 2262-01-01, the
/// latest time Conveyor can represent".
Result<void> check_time(TimePoint t, std::string_view what);

std::int64_t to_epoch_ms(TimePoint t) noexcept;
TimePoint from_epoch_ms(std::int64_t ms) noexcept;

}  // namespace conveyor::detail
