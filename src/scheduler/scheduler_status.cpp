// What a scheduler shows of itself over HTTP: /metrics (whether it leads, tasks fired per
// schedule), /healthz (its store is reachable) and /readyz.
#include <fmt/format.h>
#include <httplib.h>

#include <array>
#include <map>
#include <mutex>
#include <optional>

#include "conveyor/log.hpp"
#include "conveyor/scheduler.hpp"
#include "core/try.hpp"
#include "core/url.hpp"
#include "scheduler/scheduler_monitoring.hpp"
#include "server/listener.hpp"
#include "server/prometheus.hpp"

namespace conveyor {

namespace {}  // namespace

std::string Scheduler::metrics() const {
    using Pair = std::pair<std::string_view, std::string_view>;
    detail::PromText out;
    out.family("conveyor_scheduler_leading", "gauge", "1 while this scheduler leads, else 0.");
    out.sample("conveyor_scheduler_leading", {}, std::uint64_t(leading_ ? 1 : 0));
    out.family("conveyor_scheduler_up", "gauge",
               "1 while the scheduler reaches its store, 0 while it fails.");
    std::lock_guard lk(mon_->mu);
    out.sample("conveyor_scheduler_up", {}, std::uint64_t(mon_->trouble ? 0 : 1));
    out.family("conveyor_schedule_fires_total", "counter",
               "Tasks this scheduler published per schedule.");
    for (auto& [name, n] : mon_->fired) {
        std::array<Pair, 1> labels = {Pair{"schedule", name}};
        out.sample("conveyor_schedule_fires_total", labels, n);
    }
    return out.take();
}

int Scheduler::http_port() const noexcept { return mon_->port.load(); }

Result<void> Scheduler::start_http() {
    if (opts_.http.empty()) return {};
    auto address = detail::parse_listen_address(opts_.http);
    CONVEYOR_TRY(address);
    auto http = std::make_unique<detail::HttpListener>();
    auto& srv = http->server();
    srv.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics(), std::string(detail::kPrometheusContentType));
    });
    auto health = [this](bool readiness) {
        return [this, readiness](const httplib::Request&, httplib::Response& res) {
            std::optional<std::string> why;
            {
                std::lock_guard lk(mon_->mu);
                why = mon_->trouble;
            }
            if (readiness && !why && stop_) why = "shutting down";
            Json body = {{"node", opts_.name}, {"leading", leading_.load()}};
            body["status"] =
                why ? (readiness ? "not ready" : "failing") : (readiness ? "ready" : "ok");
            if (why) body["reason"] = *why;
            detail::reply_json(res, why ? 503 : 200, body);
        };
    };
    srv.Get("/healthz", health(false));
    srv.Get("/readyz", health(true));
    http->json_errors();
    auto port = http->start(*address);
    CONVEYOR_TRY(port);
    mon_->port = *port;
    detail::log(LogLevel::info, "http.listening",
                fmt::format("serving /metrics, /healthz and /readyz on {}", http->url()),
                Json{{"url", http->url()}});
    mon_->http = std::move(http);
    return {};
}

void Scheduler::stop_http() {
    if (!mon_->http) return;
    mon_->http->stop();
    mon_->http.reset();
    mon_->port = 0;
}

}  // namespace conveyor
