#pragma once
// The dashboard's insides: the listener, who may do what (dashboard_auth.cpp), the API
// (dashboard_api.cpp) and the embedded assets (generated at build time).

#include <httplib.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "conveyor/engine.hpp"
#include "conveyor/history.hpp"
#include "conveyor/scheduler.hpp"
#include "server/dashboard.hpp"
#include "server/listener.hpp"

namespace conveyor::server {

/// An asset compiled into the binary (src/server/assets/).
struct Asset {
    std::string_view path;  ///< "/assets/app.js"
    std::string_view content_type;
    std::string_view body;
};
const Asset* find_asset(std::string_view path);

struct Dashboard::Impl {
    std::shared_ptr<Broker> broker;
    Config config;
    DashboardOptions opts;
    detail::HttpListener http;
    std::mutex mu;
    std::set<std::string> sessions;  // signed-in browsers (token mode)
    /// The broker's task history (null where the engine keeps none: `history_error` says so),
    /// and the thread that keeps its search index up to date.
    std::unique_ptr<TaskHistory> history;
    std::string history_error;
    std::string history_source;  // "broker", "events" (RabbitMQ), or empty: none
    std::jthread indexer;
    std::jthread event_feed;  // RabbitMQ: Celery events into the history file
    std::condition_variable_any indexer_cv;
    std::mutex indexer_mu;
    void start_history();

    // ---- dashboard_auth.cpp
    enum class Access { denied, browser, bearer };
    /// Who sent the request: a browser with ambient credentials (a session cookie, basic auth
    /// or nothing when no authentication is set), an API client with a bearer token, or nobody
    /// allowed.
    Access access(const httplib::Request& req);
    /// A POST from a browser must carry the CSRF cookie's value in X-Conveyor-CSRF, and come
    /// from this origin.
    static bool csrf_ok(const httplib::Request& req);
    std::string new_session();
    void install_auth(httplib::Server& srv);

    // ---- dashboard_api.cpp
    void install_api(httplib::Server& srv);
    /// The schedule called `name` with the store that keeps it; nullopt (and a 404 or the
    /// store's error sent) otherwise.
    std::optional<std::pair<std::unique_ptr<ScheduleStore>, ScheduleStatus>> find_schedule(
        const std::string& name, httplib::Response& res);
};

using detail::reply_json;
void reply_error(httplib::Response& res, int status, std::string message);
/// A cookie of the request; empty when it has none.
std::string cookie(const httplib::Request& req, std::string_view name);
/// 32 random bytes as hex.
std::string random_token();

}  // namespace conveyor::server
