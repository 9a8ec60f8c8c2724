#pragma once
// Out-of-process handler kinds. Both throw TaskError/Reject on failure, like any handler.

#include <string>
#include <vector>

#include "conveyor/worker.hpp"

namespace conveyor::detail {

/// A JSON string of `text`, with invalid UTF-8 replaced by U+FFFD.
inline Json text_value(const std::string& text) {
    return Json::parse(Json(text).dump(-1, ' ', false, Json::error_handler_t::replace));
}

/// Runs argv with the task JSON on stdin and CONVEYOR_TASK_* in the environment. Kills the
/// process group at the context's deadline or when a stop is requested.
Json run_exec(const std::vector<std::string>& argv, TaskContext& ctx);

/// POSTs the task JSON to url (http:// or https://) with the context's deadline as timeout.
Json run_http(const std::string& url, TaskContext& ctx);

}  // namespace conveyor::detail
