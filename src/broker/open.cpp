// Broker::open: the engine a URL names, with its options checked.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "broker/amqp/amqp_broker.hpp"
#include "broker/memory/memory_broker.hpp"
#include "broker/sqlite/sqlite_broker.hpp"
#include "conveyor/broker.hpp"
#include "core/try.hpp"
#include "core/url.hpp"

namespace conveyor {

Result<std::shared_ptr<Broker>> Broker::open(std::string_view url) {
    auto u = detail::parse_broker_url(url);
    CONVEYOR_TRY(u);
    if (u->scheme == "memory") {
        if (!u->query.empty())
            return fail(
                Errc::invalid_argument,
                fmt::format("memory broker URL '{}' takes no options", detail::redact_url(url)));
        return memory::open_memory_broker(u->rest.empty() ? "default" : u->rest);
    }
    if (u->scheme == "sqlite") {
        sqlite::SqliteOptions o;
        o.path = u->rest;
        for (auto& [k, v] : u->query) {
            if (k == "sync") {
                std::string up = v;
                std::transform(up.begin(), up.end(), up.begin(), ::toupper);
                if (up != "FULL" && up != "NORMAL" && up != "OFF")
                    return fail(
                        Errc::invalid_argument,
                        fmt::format("sqlite option sync={} must be full, normal or off", v));
                o.synchronous = up;
            } else if (k == "result_expires") {
                auto s = detail::seconds_option("sqlite", k, v, 1, 10 * 365 * 86400.0);
                CONVEYOR_TRY(s);
                o.result_expires = std::chrono::duration_cast<std::chrono::seconds>(*s);
            } else if (k == "history") {
                auto s = detail::seconds_option("sqlite", k, v, 0, 10 * 365 * 86400.0);
                CONVEYOR_TRY(s);
                o.history = std::chrono::duration_cast<std::chrono::seconds>(*s);
            } else if (k == "history_max") {
                std::int64_t n = -1;
                auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
                if (ec != std::errc() || end != v.data() + v.size() || n < 0)
                    return fail(Errc::invalid_argument,
                                fmt::format("sqlite option history_max={} must be a number of "
                                            "tasks (0 or more)",
                                            v));
                o.history_max = n;
            } else if (k == "busy_timeout") {
                auto s = detail::seconds_option("sqlite", k, v, 0, 3600);
                CONVEYOR_TRY(s);
                o.busy_timeout = *s;
            } else {
                return fail(Errc::invalid_argument,
                            fmt::format("unknown sqlite broker option '{}'", k));
            }
        }
        return sqlite::open_sqlite_broker(o);
    }
    if (u->scheme == "amqp" || u->scheme == "amqps")
        return amqp::open_amqp_broker(*u, std::string(url));
    return fail(
        Errc::invalid_argument,
        fmt::format(
            "unsupported broker scheme '{}' in '{}'; use sqlite://PATH, amqp://HOST or memory://",
            u->scheme, detail::redact_url(url)));
}

}  // namespace conveyor
