#include <fmt/format.h>
#include <httplib.h>

#include <charconv>

#include "core/json_bounds.hpp"
#include "worker/handlers.hpp"

namespace conveyor::detail {

Json run_http(const std::string& url, TaskContext& ctx, HandlerInput input) {
    auto scheme_end = url.find("://");
    auto path_start = url.find('/', scheme_end == std::string::npos ? 0 : scheme_end + 3);
    std::string base = path_start == std::string::npos ? url : url.substr(0, path_start);
    std::string path = path_start == std::string::npos ? "/" : url.substr(path_start);
    httplib::Client cli(base);
    double seconds = 30.0;
    if (auto d = ctx.deadline()) {
        seconds = std::chrono::duration<double>(*d - std::chrono::steady_clock::now()).count();
        if (seconds <= 0)
            throw TaskError("TimeLimitExceeded", "no time left for the HTTP call", true,
                            "celery.exceptions");
    }
    auto us = std::chrono::microseconds(static_cast<long long>(seconds * 1e6));
    cli.set_connection_timeout(std::chrono::duration_cast<std::chrono::seconds>(us).count(),
                               (us % std::chrono::seconds(1)).count());
    cli.set_read_timeout(std::chrono::duration_cast<std::chrono::seconds>(us).count(),
                         (us % std::chrono::seconds(1)).count());
    cli.set_write_timeout(std::chrono::duration_cast<std::chrono::seconds>(us).count(),
                          (us % std::chrono::seconds(1)).count());
    httplib::Headers headers = {{"X-Conveyor-Task-Id", header_value(ctx.id())},
                                {"X-Conveyor-Task-Name", header_value(ctx.name())},
                                {"X-Conveyor-Attempt", std::to_string(ctx.attempt())}};
    std::string body, content_type = "application/json";
    if (input == HandlerInput::body) {
        auto b = handler_body(ctx.task());
        body = std::move(b.bytes);
        if (!b.content_type.empty()) content_type = std::move(b.content_type);
        if (content_type.starts_with("text/") && content_type.find("charset") == std::string::npos)
            content_type += "; charset=utf-8";
    } else {
        body = dump_lossy(task_payload(ctx.task(), ctx.queue()));
    }
    auto res = cli.Post(path, headers, body, content_type);
    if (!res) {
        auto err = res.error();
        if (err == httplib::Error::Read || err == httplib::Error::Write ||
            err == httplib::Error::ConnectionTimeout)
            throw TaskError("TimeoutError",
                            fmt::format("POST {}: {}", url, httplib::to_string(err)));
        throw TaskError("ConnectionError",
                        fmt::format("POST {}: {}", url, httplib::to_string(err)));
    }
    int status = res->status;
    if (status >= 200 && status < 300) {
        return output_value(res->body);
    }
    // 4xx other than 429 is not retried; 429 and 5xx are, after Retry-After when given
    // (seconds; dates and nonsense are ignored; at most a day).
    const bool retryable = status == 429 || status >= 500;
    std::optional<std::chrono::milliseconds> retry_after;
    if (retryable && res->has_header("Retry-After")) {
        std::string v = res->get_header_value("Retry-After");
        std::int64_t secs = 0;
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), secs);
        if (ec == std::errc() && end == v.data() + v.size() && secs >= 0)
            retry_after = std::chrono::seconds(std::min<std::int64_t>(secs, 86400));
    }
    // An answer may describe the failure as Celery's exception shape (a JSON object with
    // "exc_type", optionally "retry_in" seconds): a Python client then raises that type.
    if (auto typed = typed_failure(res->body)) {
        TaskError e(typed->type, typed->message, retryable, typed->module);
        if (retryable) e.retry_after = typed->retry_in ? typed->retry_in : retry_after;
        throw e;
    }
    std::string snippet = res->body.substr(0, 500);
    std::string msg = fmt::format("POST {} answered {}: {}", url, status, snippet);
    if (retryable) {
        TaskError e("HTTPError", msg);
        e.retry_after = retry_after;
        throw e;
    }
    throw Reject(msg);
}

}  // namespace conveyor::detail
