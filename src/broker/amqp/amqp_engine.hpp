#pragma once
// The amqp engine's shared state: a pool of connections for publishing and admin calls,
// publishing with confirms, and the topology it declares (amqp_topology.cpp).

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "broker/amqp/amqp_connection.hpp"
#include "conveyor/topology.hpp"
#include "results/redis_results.hpp"

namespace conveyor::amqp {

using std::chrono::duration_cast;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

enum class ResultsMode { none, rpc, redis };

/// Everything the engine shares between its publishers, consumers and admin calls.
class Engine : public std::enable_shared_from_this<Engine> {
  public:
    Engine(ConnectionOptions o, std::string url) : opts(std::move(o)), url(std::move(url)) {}

    ConnectionOptions opts;
    std::string url;
    ResultsMode results_mode = ResultsMode::rpc;
    std::shared_ptr<results::RedisResults> redis;  ///< results=redis://...

    // ---- connections for publishing and admin calls: checked out by one thread at a time.
    Result<std::unique_ptr<Connection>> checkout();
    void checkin(std::unique_ptr<Connection> c);

    /// Runs `fn` on a pooled connection, reconnecting on connection failures until `deadline`.
    template <class Fn>
    auto with_connection(steady_clock::time_point deadline, Fn&& fn)
        -> decltype(fn(std::declval<Connection&>())) {
        milliseconds backoff(100);
        for (;;) {
            auto c = checkout();
            if (c) {
                auto r = fn(**c);
                bool healthy = (*c)->healthy();
                checkin(std::move(*c));
                if (r || healthy || steady_clock::now() >= deadline) return r;
            } else if (c.error().code != Errc::unavailable || steady_clock::now() >= deadline) {
                return std::unexpected(c.error());
            }
            std::this_thread::sleep_for(
                std::min(backoff, duration_cast<milliseconds>(deadline - steady_clock::now())));
            backoff = std::min(backoff * 2, milliseconds(2000));
        }
    }

    steady_clock::time_point publish_deadline() const;

    // ---- publishing with confirms; unconfirmed messages are republished after a reconnect.
    Result<void> publish_wires(std::span<const Wire> wires);

    Result<void> publish_unconfirmed(std::span<const Wire> wires, std::vector<bool>& confirmed,
                                     steady_clock::time_point deadline);

    // ---- topology
    Result<void> set_topology(const Topology& t);

    std::optional<QueueSpec> spec_of(std::string_view queue);

    std::vector<std::string> known_queues();

    /// The 28 delay levels, the delivery exchange and the unroutable store.
    Result<void> declare_delay_infrastructure(Connection& c);

    /// Declares a queue (and its dead-letter queue, partitions, delay binding) once.
    Result<void> declare_queue(Connection& c, const QueueSpec& q);

    Result<void> ensure_queues(const std::vector<std::string>& names);

    Result<void> declare_topology();

    /// The wait queue of tasks named `task` from `queue` (wait_queue), declared once: of the
    /// delay levels' type, its messages dead-lettered back to `queue` after kWaitBackstop.
    Result<std::string> ensure_wait_queue(std::string_view queue, std::string_view task);
    /// A wait queue that could not be used (deleted by hand, say) is declared again next time.
    void forget_wait_queue(const std::string& name);
    /// Sends the oldest task of a wait queue back to its queue now; false when none waited (or
    /// the queue does not exist). Stops retrying after half a second without RabbitMQ.
    Result<bool> wake_one(const std::string& wait_queue);

  private:
    std::atomic<bool> delay_ready_{false};  // the delay levels exist on the broker
    std::mutex pool_mu_;
    std::vector<std::unique_ptr<Connection>> idle_;
    std::mutex topo_mu_;
    Topology topology_;
    std::map<std::string, QueueSpec> specs_;
    std::set<std::string> ensured_;
    std::set<std::string> waits_;  // wait queues declared
};

/// The arguments Conveyor declares a queue with.
Json queue_arguments(const QueueSpec& q);
/// A PRECONDITION_FAILED for `entity` `name`, said so that it can be fixed: which argument,
/// both values, and the configuration key that resolves it. Other errors pass unchanged.
Error explain_conflict(const Error& e, std::string_view entity, std::string_view name);

}  // namespace conveyor::amqp
