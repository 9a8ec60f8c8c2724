#include "server/dashboard.hpp"

#include <fmt/format.h>
#include <openssl/rand.h>

#include <filesystem>
#include <functional>

#include "broker/sqlite/sqlite_events.hpp"
#include "broker/sqlite/sqlite_history.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/log.hpp"
#include "core/node.hpp"
#include "core/try.hpp"
#include "server/dashboard_impl.hpp"

namespace conveyor::server {

void reply_error(httplib::Response& res, int status, std::string message) {
    reply_json(res, status, Json{{"error", std::move(message)}});
}

std::string cookie(const httplib::Request& req, std::string_view name) {
    std::string all = req.get_header_value("Cookie");
    std::string_view rest = all;
    while (!rest.empty()) {
        auto end = rest.find(';');
        std::string_view part = rest.substr(0, end);
        while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
        if (part.size() > name.size() && part.substr(0, name.size()) == name &&
            part[name.size()] == '=')
            return std::string(part.substr(name.size() + 1));
        if (end == std::string_view::npos) break;
        rest.remove_prefix(end + 1);
    }
    return {};
}

std::string random_token() {
    unsigned char bytes[32];
    if (RAND_bytes(bytes, sizeof bytes) != 1) throw std::runtime_error("no random bytes");
    std::string out;
    for (unsigned char b : bytes) out += fmt::format("{:02x}", b);
    return out;
}

namespace {

bool loopback(const std::string& host) {
    return host == "127.0.0.1" || host == "::1" || host == "localhost" || host.starts_with("127.");
}

}  // namespace

Dashboard::Dashboard(std::shared_ptr<Broker> broker, Config config, DashboardOptions options)
    : impl_(std::make_unique<Impl>()) {
    impl_->broker = std::move(broker);
    impl_->config = std::move(config);
    impl_->opts = std::move(options);
}

Dashboard::~Dashboard() { stop(); }

Result<int> Dashboard::start() {
    auto& o = impl_->opts;
    if (!loopback(o.listen.host) && o.token.empty() && o.user.empty())
        return fail(Errc::invalid_argument,
                    fmt::format("the dashboard would listen on {} without authentication: set a "
                                "token or basic-auth credentials, or listen on 127.0.0.1",
                                o.listen.host));
    auto& srv = impl_->http.server();
    srv.set_payload_max_length(1 << 20);
    // Every answer: no framing, no sniffing, scripts and styles from here only.
    srv.set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
        res.set_header("Content-Security-Policy",
                       "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                       "form-action 'self'; base-uri 'none'");
        res.set_header("X-Content-Type-Options", "nosniff");
        res.set_header("X-Frame-Options", "DENY");
        res.set_header("Referrer-Policy", "no-referrer");
        res.set_header("Cache-Control", "no-store");
    });
    impl_->start_history();
    impl_->install_auth(srv);
    impl_->install_api(srv);
    srv.Get("/", [this](const httplib::Request&, httplib::Response& res) {
        const Asset* index = find_asset("/index.html");
        res.set_content(std::string(index->body), std::string(index->content_type));
        // The CSRF cookie the page's script sends back in X-Conveyor-CSRF.
        res.set_header("Set-Cookie",
                       fmt::format("conveyor_csrf={}; Path=/; SameSite=Strict", random_token()));
    });
    srv.Get(R"(/assets/[a-z0-9._-]+)", [](const httplib::Request& req, httplib::Response& res) {
        const Asset* a = find_asset(req.path);
        if (!a) return reply_error(res, 404, fmt::format("no such asset: {}", req.path));
        res.set_content(std::string(a->body), std::string(a->content_type));
    });
    impl_->http.json_errors();
    srv.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
            std::string what = "internal error";
            try {
                if (ep) std::rethrow_exception(ep);
            } catch (const std::exception& e) {
                what = e.what();
            } catch (...) {
            }
            reply_error(res, 500, what);
        });
    auto port = impl_->http.start(o.listen, 4);
    CONVEYOR_TRY(port);
    detail::log(
        LogLevel::info, "http.listening",
        fmt::format("dashboard on {}{}", impl_->http.url(), o.read_only ? " (read-only)" : ""),
        Json{{"url", impl_->http.url()}});
    return *port;
}

void Dashboard::stop() {
    impl_->http.stop();
    if (impl_->event_feed.joinable()) {
        impl_->event_feed.request_stop();
        impl_->event_feed.join();
    }
    if (impl_->indexer.joinable()) {
        impl_->indexer.request_stop();
        impl_->indexer_cv.notify_all();
        impl_->indexer.join();
    }
}

void Dashboard::Impl::start_history() {
    auto h = broker->history();
    if (!h && !opts.history_file.empty()) {
        // No history in the broker: Celery events into a file of our own, if it has events.
        sqlite::SqliteOptions so;
        so.path = opts.history_file;
        so.synchronous = "NORMAL";
        std::string name = fmt::format(
            "dashboard-{:016x}",
            std::hash<std::string>{}(detail::host_name() + "|" +
                                     std::filesystem::absolute(opts.history_file).string()));
        auto events = broker->events(name);
        if (!events) {
            history_error = h.error().message;
            return;
        }
        auto folder = sqlite::open_event_folder(so);
        if (!folder) {
            history_error =
                fmt::format("the history file '{}': {}", opts.history_file, folder.error().message);
            return;
        }
        h = sqlite::open_history(so, /*from_events=*/true);
        if (!h) {
            history_error = h.error().message;
            return;
        }
        history_source = "events";
        event_feed = std::jthread([folder = std::move(*folder),
                                   events = std::move(*events)](std::stop_token stop) mutable {
            std::string trouble;
            while (!stop.stop_requested()) {
                auto batch = events->next(std::chrono::milliseconds(500));
                Result<void> ok =
                    batch ? folder->apply(*batch) : Result<void>(std::unexpected(batch.error()));
                if (!ok && ok.error().message != trouble) {
                    trouble = ok.error().message;
                    detail::log(LogLevel::warning, "dashboard.events",
                                fmt::format("task events: {}; trying again", trouble));
                }
                if (ok && !trouble.empty()) {
                    trouble.clear();
                    detail::log(LogLevel::info, "dashboard.events", "task events flow again");
                }
                if (!ok) std::this_thread::sleep_for(std::chrono::seconds(1));
            }
        });
        detail::log(
            LogLevel::info, "dashboard.history",
            fmt::format("task history in {}, from the workers' task events", opts.history_file),
            Json{{"file", opts.history_file}});
    }
    if (!h) {
        history_error = h.error().message;
        return;
    }
    history = std::move(*h);
    if (history_source.empty()) history_source = "broker";
    // The search index follows the writers: what was enqueued is searchable within seconds.
    indexer = std::jthread([this](std::stop_token stop) {
        bool warned = false;
        while (!stop.stop_requested()) {
            auto added = history->index(20000);
            if (!added && !warned) {
                detail::log(LogLevel::warning, "dashboard.search_index",
                            fmt::format("the search index is behind: {}", added.error().message));
                warned = true;
            }
            if (added && *added == 20000) continue;  // more to do
            std::unique_lock lk(indexer_mu);
            indexer_cv.wait_for(lk, stop, std::chrono::seconds(1), [] { return false; });
        }
    });
}

std::string Dashboard::url() const { return impl_->http.url(); }

}  // namespace conveyor::server
