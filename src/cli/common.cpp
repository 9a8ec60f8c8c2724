#include "cli/common.hpp"

#include <fmt/format.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>

#include "conveyor/scheduler.hpp"
#include "conveyor/worker.hpp"
#include "core/json_bounds.hpp"
#include "core/url.hpp"
#include "server/listener.hpp"

namespace conveyor::cli {

namespace {

volatile sig_atomic_t g_signals = 0;
Worker* g_worker = nullptr;
Scheduler* g_scheduler = nullptr;

void on_signal(int) {
    g_signals = g_signals + 1;
    if (g_signals >= 2) _exit(130);  // second signal: cold shutdown
    if (g_worker) g_worker->stop();
    if (g_scheduler) g_scheduler->stop();
}

}  // namespace

void die(const std::string& sentence, int code) {
    std::string s = sentence;
    if (!s.empty() && s.back() != '.') s += '.';
    fmt::print(stderr, "conveyor: {}\n", s);
    std::fflush(stderr);
    std::exit(code);
}

Config load(const Global& g) {
    std::string path = g.config_path;
    if (path.empty() && std::filesystem::exists("conveyor.toml")) path = "conveyor.toml";
    if (path.empty()) return Config{};
    auto cfg = load_config(path);
    if (!cfg) die(cfg.error().message, 2);
    return *cfg;
}

std::string broker_url(const Global& g, const Config& cfg) {
    if (!g.broker.empty()) return g.broker;
    if (const char* env = std::getenv("CONVEYOR_BROKER"); env && *env) return env;
    if (!cfg.broker.empty()) return cfg.broker;
    return "sqlite://conveyor.db";
}

std::shared_ptr<Broker> open_broker(const std::string& url, const Config& cfg, bool wait,
                                    const std::string& http) {
    auto backoff = std::chrono::milliseconds(500);
    // While waiting: health checks that say so (the worker's own listener follows).
    std::unique_ptr<detail::HttpListener> waiting;
    auto why_waiting = std::make_shared<std::string>();
    auto mu = std::make_shared<std::mutex>();
    for (;;) {
        auto b = Broker::open(url);
        // The queues' settings (fair keys) are written as the broker opens: storage trouble
        // there is waited out as it is when opening.
        Result<void> set = b ? (*b)->set_topology(cfg.topology()) : Result<void>{};
        if (b && set) {
            if (waiting) {
                waiting->stop();
                detail::log(LogLevel::info, "broker.recovered", "the broker works again");
            }
            return *b;
        }
        const Error& e = b ? set.error() : b.error();
        // (Settings the broker refuses say so themselves.)
        std::string why =
            b && e.code == Errc::invalid_argument
                ? e.message
                : fmt::format("{} broker {}: {}",
                              b ? "cannot record the queues' settings in" : "cannot open",
                              detail::redact_url(url), e.message);
        bool passes = e.code == Errc::unavailable || e.code == Errc::timeout;
        // Stopped while it waits: nothing was started, and it ends as a stopped process does.
        auto stopped = [&] {
            if (waiting) waiting->stop();
            detail::log(LogLevel::info, "broker.wait_stopped",
                        fmt::format("stopped while waiting: {}", why));
            std::exit(0);
        };
        if (wait && passes && g_signals) stopped();
        if (!wait || !passes) {
            if (waiting) waiting->stop();
            die(why, e.code == Errc::invalid_argument || e.code == Errc::conflict ? 2 : 1);
        }
        {
            std::lock_guard lk(*mu);
            *why_waiting = why;
        }
        if (!waiting && !http.empty()) {
            auto address = detail::parse_listen_address(http);
            if (!address) die(address.error().message, 2);
            waiting = std::make_unique<detail::HttpListener>();
            for (auto* path : {"/healthz", "/readyz"})
                waiting->server().Get(
                    path, [why_waiting, mu](const httplib::Request&, httplib::Response& res) {
                        std::lock_guard lk(*mu);
                        detail::reply_json(
                            res, 503,
                            Json{{"status", "waiting for the broker"}, {"reason", *why_waiting}});
                    });
            waiting->json_errors();
            auto port = waiting->start(*address, 1);
            if (!port) die(port.error().message, 2);
            detail::log(LogLevel::info, "http.listening",
                        fmt::format("serving /healthz and /readyz on {} while waiting for the "
                                    "broker",
                                    waiting->url()),
                        Json{{"url", waiting->url()}});
        }
        detail::log(LogLevel::warning, "broker.unreachable",
                    fmt::format("{}; retrying in {:.1f} s", why, backoff.count() / 1000.0));
        for (auto until = std::chrono::steady_clock::now() + backoff;
             std::chrono::steady_clock::now() < until && !g_signals;)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (g_signals) stopped();
        backoff = std::min(backoff * 2, std::chrono::milliseconds(10000));
    }
}

Session open_session(const Global& g) {
    Session s{load(g), nullptr};
    s.broker = open_broker(broker_url(g, s.cfg), s.cfg);
    return s;
}

Json parse_json_flag(const std::string& text, const char* flag, bool want_array) {
    if (detail::json_text_depth(text) > detail::kMaxJsonDepth)
        die(fmt::format("{} nests deeper than {} levels", flag, detail::kMaxJsonDepth), 2);
    Json j = Json::parse(text, nullptr, false);
    if (j.is_discarded())
        die(fmt::format("{} is not valid JSON: {}", flag,
                        text.size() > 200 ? text.substr(0, 200) + "..." : text),
            2);
    if (want_array && !j.is_array())
        die(fmt::format("{} must be a JSON array, e.g. '[1, 2]'", flag), 2);
    if (!want_array && !j.is_object())
        die(fmt::format("{} must be a JSON object, e.g. '{{\"x\": 1}}'", flag), 2);
    return j;
}

CLI::Validator seconds_within(double lo, double hi) {
    return CLI::Validator(
        [lo, hi](std::string& in) -> std::string {
            char* end = nullptr;
            double v = std::strtod(in.c_str(), &end);
            if (in.empty() || end != in.c_str() + in.size() || !(v >= lo && v <= hi))
                return fmt::format("must be a number of seconds from {} to {}", lo, hi);
            return {};
        },
        fmt::format("SECONDS in [{} - {}]", lo, hi));
}

std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= s.size()) {
        auto comma = s.find(',', start);
        auto item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!item.empty()) out.push_back(item);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
    std::vector<std::size_t> w(header.size());
    for (std::size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
    for (auto& r : rows)
        for (std::size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
    auto line = [&](const std::vector<std::string>& r) {
        std::string s;
        for (std::size_t i = 0; i < r.size(); ++i) {
            if (i == 0)
                s += fmt::format("{:<{}}", r[i], w[i]);
            else
                s += fmt::format("  {:>{}}", r[i], w[i]);
        }
        fmt::print("{}\n", s);
    };
    line(header);
    for (auto& r : rows) line(r);
}

int print_result(Client& client, const std::string& id, std::optional<double> wait) {
    if (wait)
        if (auto now = client.result(id); !now) die(now.error().message);
    Result<TaskResult> r =
        wait ? client.wait(id, std::chrono::milliseconds(static_cast<long long>(*wait * 1000)))
             : client.result(id);
    if (!r && r.error().code == Errc::timeout) {
        auto now = client.result(id);
        if (now) fmt::print("{}\n", detail::dump_lossy(to_json(*now)));
        std::fflush(stdout);
        die(fmt::format("task {} did not finish within {} seconds", id, *wait), 3);
    }
    if (!r) die(r.error().message);
    fmt::print("{}\n", detail::dump_lossy(to_json(*r)));
    return 0;
}

void stop_on_signals(Worker* worker, Scheduler* scheduler) {
    g_worker = worker;
    g_scheduler = scheduler;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
}

bool stop_signalled() noexcept { return g_signals != 0; }

namespace {

/// One write per line, so that lines from several threads never interleave.
void write_line(std::string line) {
    line += '\n';
    (void)!::write(2, line.data(), line.size());
}

}  // namespace

void write_text_log(const LogRecord& record) { write_line(format_log_text(record)); }
void write_json_log(const LogRecord& record) { write_line(format_log_json(record)); }

}  // namespace conveyor::cli
