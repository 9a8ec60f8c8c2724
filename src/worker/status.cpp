// What a worker shows of itself over HTTP: /metrics (Prometheus), /healthz and /readyz.
#include <fmt/format.h>
#include <httplib.h>

#include "conveyor/log.hpp"
#include "worker/worker_impl.hpp"

namespace conveyor {

namespace {

/// Queue depths are counted at most this often, however often the worker is scraped (a count
/// is a query on sqlite and a round trip per queue on RabbitMQ).
constexpr milliseconds kDepthEvery{2000};

/// A dispatcher call that has not returned for this long makes the worker unhealthy.
constexpr milliseconds kStalledAfter{5000};

}  // namespace

void Worker::Impl::set_trouble(std::optional<std::string> why) {
    std::lock_guard lk(health_mu);
    if (trouble != why) trouble = std::move(why);
}

std::optional<std::string> Worker::Impl::unhealthy() const {
    {
        std::lock_guard lk(health_mu);
        if (trouble) return trouble;
    }
    auto since =
        steady_clock::now() - steady_clock::time_point(steady_clock::duration(pulse.load()));
    if (life.running() && since >= kStalledAfter)
        return fmt::format("{} has not returned for {:.0f} s (the broker does not answer)",
                           doing.load(), std::chrono::duration<double>(since).count());
    return std::nullopt;
}

std::string Worker::Impl::metrics_text() {
    detail::WorkerMetrics::Gauges g;
    g.concurrency = opts.concurrency;
    g.busy = running.load();
    g.broker_up = !unhealthy();
    {
        std::lock_guard lk(depth_cache.mu);
        auto now = steady_clock::now();
        if (depth_cache.at == steady_clock::time_point{} || now - depth_cache.at >= kDepthEvery) {
            depth_cache.at = now;
            depth_cache.depths.reset();
            if (auto st = broker->stats()) {
                std::vector<QueueStats> mine;
                for (auto& q : *st)
                    if (std::find(opts.queues.begin(), opts.queues.end(), q.queue) !=
                        opts.queues.end())
                        mine.push_back(q);
                depth_cache.depths = std::move(mine);
            }
        }
        g.depths = depth_cache.depths;
    }
    return metrics.render(g);
}

Result<void> Worker::Impl::start_http() {
    if (opts.http.empty()) return {};
    auto address = detail::parse_listen_address(opts.http);
    CONVEYOR_TRY(address);
    http = std::make_unique<detail::HttpListener>();
    auto& srv = http->server();
    srv.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics_text(), std::string(detail::kPrometheusContentType));
    });
    srv.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
        auto why = unhealthy();
        Json body = {{"node", opts.node_name}};
        if (why) {
            body["status"] = "failing";
            body["reason"] = *why;
            detail::reply_json(res, 503, body);
        } else {
            body["status"] = "ok";
            detail::reply_json(res, 200, body);
        }
    });
    srv.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
        auto why = unhealthy();
        if (!why && !ready.load()) why = stopping.load() ? "shutting down" : "starting";
        Json body = {{"node", opts.node_name}, {"status", why ? "not ready" : "ready"}};
        if (why) body["reason"] = *why;
        detail::reply_json(res, why ? 503 : 200, body);
    });
    http->json_errors();
    auto port = http->start(*address);
    if (!port) {
        http.reset();
        return std::unexpected(port.error());
    }
    http_port = *port;
    detail::log(LogLevel::info, "http.listening",
                fmt::format("serving /metrics, /healthz and /readyz on {}", http->url()),
                Json{{"url", http->url()}});
    return {};
}

}  // namespace conveyor
