#pragma once
// Results as Celery's result backends store them (rpc:// reply bodies, redis:// meta values).

#include <string>
#include <string_view>

#include "conveyor/error.hpp"
#include "conveyor/task.hpp"

namespace conveyor::result_meta {

/// Which backend's shape: rpc replies carry no date_done; redis meta values do.
enum class Style { rpc, redis };

/// The JSON body Celery 5.2.6 writes for a stored state (ASCII-escaped, like Python's json).
std::string encode(const TaskResult& result, Style style);

/// Reads a result body written by Celery or by Conveyor. Unknown states (RECEIVED, ...) read
/// as PENDING; REJECTED and IGNORED as FAILURE and SUCCESS. Errc::malformed when it is not a
/// result at all.
Result<TaskResult> decode(std::string_view body);

}  // namespace conveyor::result_meta
