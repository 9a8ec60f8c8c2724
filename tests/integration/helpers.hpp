#pragma once
// Helpers shared by the integration tests (the suite's shared RabbitMQ node).

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <thread>

#include "conveyor/broker.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/worker.hpp"
#include "support/process.hpp"
#include "support/rabbitmq.hpp"

namespace itest {

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::eventually;

/// A broker on `url` (default: the shared node) with `t` as its topology.
inline std::shared_ptr<Broker> open_with(const Topology& t, std::string url = {}) {
    auto b = Broker::open(url.empty() ? testsupport::shared_rabbitmq_url() : url);
    EXPECT_TRUE(b) << b.error().message;
    if (!b) return nullptr;
    auto ok = (*b)->set_topology(t);
    EXPECT_TRUE(ok) << ok.error().message;
    return *b;
}

inline Topology queues(std::initializer_list<std::string> names) {
    Topology t;
    for (auto& n : names) t.queues.push_back(QueueSpec{.name = n});
    return t;
}

/// A worker running on its own thread until the end of the scope.
struct BackgroundWorker {
    Worker worker;
    std::thread thread;
    Result<void> outcome;
    BackgroundWorker(std::shared_ptr<Broker> b, WorkerOptions o) : worker(std::move(b), o) {}
    void start() {
        thread = std::thread([this] { outcome = worker.run(); });
    }
    ~BackgroundWorker() {
        worker.stop();
        if (thread.joinable()) thread.join();
    }
};

/// The first delivery that arrives within `timeout`.
inline std::optional<Delivery> next_delivery(Consumer& consumer,
                                             std::chrono::milliseconds timeout) {
    std::optional<Delivery> got;
    eventually(
        [&] {
            auto r = consumer.fetch(1, 100ms);
            if (r && !r->empty()) got = std::move(r->front());
            return got.has_value();
        },
        timeout);
    return got;
}

/// The queue's dead letters once there are `n` of them (or what there is at the deadline).
inline std::vector<DeadLetter> dead_letters_once(Broker& broker, const std::string& queue,
                                                 std::size_t n, std::chrono::milliseconds timeout) {
    std::vector<DeadLetter> dead;
    eventually(
        [&] {
            auto d = broker.dead_letters(queue, 10);
            if (d) dead = *d;
            return dead.size() == n;
        },
        timeout);
    return dead;
}

inline WorkerOptions options_for(std::vector<std::string> qs, int concurrency = 4) {
    WorkerOptions o;
    o.queues = std::move(qs);
    o.concurrency = concurrency;
    o.shutdown_grace = 5s;
    return o;
}

}  // namespace itest
