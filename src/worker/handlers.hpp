#pragma once
// Out-of-process handler kinds. Both throw TaskError/Reject on failure, like any handler.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
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

/// What `input = "body"` sends: a raw message's body as published, else the task's one
/// argument (a string as it is, anything else as JSON), with its content type.
struct HandlerBody {
    std::string bytes;
    std::string content_type;
};
HandlerBody handler_body(const TaskMessage& task);

/// A failure a handler described itself (Celery's exception shape, and when to retry).
struct TypedFailure {
    std::string type;
    std::string message;
    std::string module = "builtins";
    std::optional<std::chrono::milliseconds> retry_in;
};

/// The last non-empty line of `text`, when it is a JSON object with a non-empty string
/// "exc_type" (and optionally "exc_message", "exc_module", "retry_in" in seconds).
std::optional<TypedFailure> typed_failure(std::string_view text);

/// Runs argv with the task JSON (or the body) on stdin and CONVEYOR_TASK_* in the
/// environment. Kills the process group at the context's deadline or when a stop is requested.
Json run_exec(const std::vector<std::string>& argv, TaskContext& ctx,
              HandlerInput input = HandlerInput::task);

/// POSTs the task JSON (or the body) to url (http:// or https://) with the context's deadline
/// as timeout.
Json run_http(const std::string& url, TaskContext& ctx, HandlerInput input = HandlerInput::task);

}  // namespace conveyor::detail
