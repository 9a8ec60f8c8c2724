#pragma once
// ISO-8601 and epoch conversions used by the codec, the CLI and the stores.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/task.hpp"

namespace conveyor::detail {

/// "2026-11-27T03:31:03.835497+00:00" (UTC, microseconds), as Celery writes eta/expires.
std::string format_iso8601(TimePoint t);
/// Naive UTC form Celery uses for date_done: "2026-11-27T03:31:03.835497".
std::string format_iso8601_naive(TimePoint t);
/// Accepts "Z", "+hh:mm"/"-hh:mm" offsets, naive (UTC) forms, a space instead of 'T',
/// and 0..9 fractional digits.
std::optional<TimePoint> parse_iso8601(std::string_view text);

std::int64_t to_epoch_ms(TimePoint t) noexcept;
TimePoint from_epoch_ms(std::int64_t ms) noexcept;

}  // namespace conveyor::detail
