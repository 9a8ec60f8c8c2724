#pragma once
/// Logs: what the library has to say goes to a sink the application sets, never to stderr on
/// its own. The `conveyor` command sets one (text or JSON lines on stderr).

#include <functional>
#include <string>
#include <string_view>

#include "conveyor/task.hpp"

namespace conveyor {

enum class LogLevel { debug, info, warning, error };

/// "debug", "info", "warning", "error".
std::string_view to_string(LogLevel level) noexcept;

/// One event: a line for people and fields for machines. Task events carry `id`, `task`,
/// `queue`, `attempt` (1 for the first run) and, once the task ran, `duration` (seconds).
struct LogRecord {
    LogLevel level = LogLevel::info;
    std::string event;    ///< a stable name: "task.failed", "broker.disconnected", ...
    std::string message;  ///< one line, without the fields
    Json fields = Json::object();
};

/// Where records go. Called from any of the library's threads, one record at a time.
using LogSink = std::function<void(const LogRecord&)>;

/// Sets the process's sink and the lowest level that reaches it (records below it are not
/// even made). An empty sink silences the library, which is where it starts. Thread-safe.
void set_log_sink(LogSink sink, LogLevel level = LogLevel::info);

/// `2026-12-03T11:45:52.123Z WARNING message attempt=1 id=... task=...` (fields by name): one
/// line, no newline.
std::string format_log_text(const LogRecord& record);
/// `{"time": ..., "level": ..., "event": ..., "message": ..., <fields>}`: one line, no newline.
std::string format_log_json(const LogRecord& record);

namespace detail {
/// Whether a record of `level` would reach a sink (check before building an expensive one).
bool log_enabled(LogLevel level) noexcept;
/// Hands a record to the sink, if there is one and its level is enabled.
void log(LogRecord record);
inline void log(LogLevel level, std::string event, std::string message,
                Json fields = Json::object()) {
    if (log_enabled(level))
        log(LogRecord{level, std::move(event), std::move(message), std::move(fields)});
}
}  // namespace detail

}  // namespace conveyor
