// `conveyor dashboard`: the web UI and its JSON API until SIGTERM/SIGINT.

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "cli/commands.hpp"
#include "core/url.hpp"
#include "server/dashboard.hpp"

namespace conveyor::cli {

namespace {

struct DashboardFlags {
    std::string listen = "127.0.0.1:9800";
    bool read_only = false;
    std::string token_file;
    std::string basic_auth_file;
    std::string history = "conveyor-history.db";
};

/// A secret from a file (its first line) or else an environment variable; never from the
/// command line, where `ps` shows it.
std::string secret(const std::string& file, const char* env, const char* what) {
    if (!file.empty()) {
        std::ifstream in(file);
        if (!in) die(fmt::format("cannot read the {} file '{}'", what, file), 2);
        std::string line;
        std::getline(in, line);
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
        if (line.empty()) die(fmt::format("the {} file '{}' is empty", what, file), 2);
        return line;
    }
    const char* v = std::getenv(env);
    return v ? std::string(v) : std::string();
}

int run_dashboard(const Global& g, const DashboardFlags& f) {
    Config cfg = load(g);
    server::DashboardOptions o;
    auto address = detail::parse_listen_address(f.listen);
    if (!address) die(address.error().message, 2);
    o.listen = *address;
    o.read_only = f.read_only;
    o.history_file = f.history;
    o.token = secret(f.token_file, "CONVEYOR_DASHBOARD_TOKEN", "token");
    if (!o.token.empty() && o.token.size() < 16)
        die("the dashboard token must be at least 16 characters", 2);
    std::string basic = secret(f.basic_auth_file, "CONVEYOR_DASHBOARD_BASIC_AUTH", "basic-auth");
    if (!basic.empty()) {
        auto colon = basic.find(':');
        if (colon == std::string::npos || colon == 0 || colon + 1 == basic.size())
            die("basic-auth credentials must be USER:PASSWORD", 2);
        o.user = basic.substr(0, colon);
        o.password = basic.substr(colon + 1);
    }
    stop_on_signals(nullptr, nullptr);
    auto broker = open_broker(broker_url(g, cfg), cfg, /*wait=*/true);
    server::Dashboard dashboard(broker, cfg, o);
    if (auto port = dashboard.start(); !port) die(port.error().message, 2);
    while (!stop_signalled()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    dashboard.stop();
    return 0;
}

}  // namespace

Command add_dashboard(CLI::App& app, const Global& g) {
    auto* cmd = app.add_subcommand("dashboard", "Serve the web dashboard and its JSON API");
    auto f = std::make_shared<DashboardFlags>();
    cmd->add_option("--listen", f->listen, "HOST:PORT to serve on (default 127.0.0.1:9800)");
    cmd->add_flag("--read-only", f->read_only, "Show everything, change nothing");
    cmd->add_option("--token-file", f->token_file,
                    "File whose first line is the access token (or CONVEYOR_DASHBOARD_TOKEN)");
    cmd->add_option("--basic-auth-file", f->basic_auth_file,
                    "File whose first line is USER:PASSWORD (or CONVEYOR_DASHBOARD_BASIC_AUTH)");
    cmd->add_option("--history", f->history,
                    "RabbitMQ: the sqlite file that keeps the task history, fed by Celery events "
                    "(default conveyor-history.db)");
    return {cmd, [&g, f] { return run_dashboard(g, *f); }};
}

}  // namespace conveyor::cli
