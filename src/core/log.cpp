// The process's log sink, and the text and JSON line formats.
#include "conveyor/log.hpp"

#include <fmt/format.h>

#include <atomic>
#include <memory>
#include <mutex>

#include "core/time.hpp"

namespace conveyor {

namespace {

struct SinkState {
    std::mutex mu;
    std::shared_ptr<const LogSink> sink;
};

SinkState& state() {
    static SinkState s;
    return s;
}

std::atomic<int> g_level{int(LogLevel::error) + 1};  // no sink: nothing is enabled

std::string field_text(const Json& v) {
    if (v.is_string()) {
        const auto& s = v.get_ref<const std::string&>();
        bool plain = !s.empty() && s.find_first_of(" \"=\t\r\n") == std::string::npos;
        return plain ? s : v.dump(-1, ' ', false, Json::error_handler_t::replace);
    }
    return v.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace

std::string_view to_string(LogLevel level) noexcept {
    switch (level) {
        case LogLevel::debug:
            return "debug";
        case LogLevel::info:
            return "info";
        case LogLevel::warning:
            return "warning";
        case LogLevel::error:
            return "error";
    }
    return "info";
}

void set_log_sink(LogSink sink, LogLevel level) {
    auto& s = state();
    std::lock_guard lk(s.mu);
    if (sink) {
        s.sink = std::make_shared<const LogSink>(std::move(sink));
        g_level = int(level);
    } else {
        s.sink.reset();
        g_level = int(LogLevel::error) + 1;
    }
}

std::string format_log_text(const LogRecord& r) {
    std::string level(to_string(r.level));
    for (auto& c : level) c = char(std::toupper(static_cast<unsigned char>(c)));
    std::string out =
        fmt::format("{} {} {}", detail::format_iso8601(SystemClock::now()), level, r.message);
    if (r.fields.is_object())
        for (auto& [k, v] : r.fields.items()) out += fmt::format(" {}={}", k, field_text(v));
    // One line whatever a field holds.
    for (auto& c : out)
        if (c == '\n' || c == '\r') c = ' ';
    return out;
}

std::string format_log_json(const LogRecord& r) {
    Json j = {{"time", detail::format_iso8601(SystemClock::now())},
              {"level", to_string(r.level)},
              {"event", r.event},
              {"message", r.message}};
    if (r.fields.is_object())
        for (auto& [k, v] : r.fields.items())
            if (!j.contains(k)) j[k] = v;
    return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

namespace detail {

bool log_enabled(LogLevel level) noexcept {
    return int(level) >= g_level.load(std::memory_order_relaxed);
}

void log(LogRecord record) {
    if (!log_enabled(record.level)) return;
    std::shared_ptr<const LogSink> sink;
    {
        auto& s = state();
        std::lock_guard lk(s.mu);
        sink = s.sink;
    }
    if (!sink) return;
    try {
        (*sink)(record);
    } catch (...) {
        // A sink that throws loses its record, never the caller's work.
    }
}

}  // namespace detail

}  // namespace conveyor
