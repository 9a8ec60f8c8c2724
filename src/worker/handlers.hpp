#pragma once
// Out-of-process handler kinds. Both throw TaskError/Reject on failure, like any handler.

#include <string>
#include <vector>

#include "conveyor/worker.hpp"
#include "core/json_bounds.hpp"

namespace conveyor::detail {

/// A JSON string of `text`, with invalid UTF-8 replaced by U+FFFD.
inline Json text_value(const std::string& text) {
    return Json::parse(Json(text).dump(-1, ' ', false, Json::error_handler_t::replace));
}

/// What a handler printed or answered, as its result: JSON when it is JSON (nested at most
/// detail::kMaxJsonDepth deep), else the text.
inline Json output_value(const std::string& text) {
    if (detail::json_text_depth(text) <= detail::kMaxJsonDepth) {
        Json parsed = Json::parse(text, nullptr, false);
        if (!parsed.is_discarded()) return parsed;
    }
    return text_value(text);
}

/// `text` fit for an HTTP header value: control characters and '%' percent-encoded.
std::string header_value(std::string_view text);

/// Runs argv with the task JSON on stdin and CONVEYOR_TASK_* in the environment. Kills the
/// process group at the context's deadline or when a stop is requested.
Json run_exec(const std::vector<std::string>& argv, TaskContext& ctx);

/// POSTs the task JSON to url (http:// or https://) with the context's deadline as timeout.
Json run_http(const std::string& url, TaskContext& ctx);

}  // namespace conveyor::detail
