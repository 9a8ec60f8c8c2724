// The amqp engine's connection pool and publishing with confirms.
#include "broker/amqp/amqp_engine.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

namespace conveyor::amqp {

Result<std::unique_ptr<Connection>> Engine::checkout() {
    {
        std::lock_guard lk(pool_mu_);
        while (!idle_.empty()) {
            auto c = std::move(idle_.back());
            idle_.pop_back();
            if (c->healthy()) return c;
        }
    }
    return Connection::open(opts, fmt::format("conveyor-{}", getpid()));
}

void Engine::checkin(std::unique_ptr<Connection> c) {
    if (!c || !c->healthy()) return;
    // What its channels decoded is not needed any more (it lives long, and is used by many).
    amqp_maybe_release_buffers(c->raw());
    std::lock_guard lk(pool_mu_);
    if (idle_.size() < 8) idle_.push_back(std::move(c));
}

steady_clock::time_point Engine::publish_deadline() const {
    return steady_clock::now() + opts.publish_timeout;
}

Result<void> Engine::publish_wires(std::span<const Wire> wires) {
    if (wires.empty()) return {};
    std::vector<bool> confirmed(wires.size(), false);
    auto deadline = publish_deadline();
    milliseconds backoff(100);
    for (;;) {
        auto r = publish_unconfirmed(wires, confirmed, deadline);
        if (r || r.error().code != Errc::unavailable || steady_clock::now() >= deadline) return r;
        // Nacked: RabbitMQ could not take them now (a quorum queue electing a new leader
        // after a node died, say). The unconfirmed ones go again, until the deadline.
        std::this_thread::sleep_for(
            std::min(backoff, duration_cast<milliseconds>(deadline - steady_clock::now())));
        backoff = std::min(backoff * 2, milliseconds(1000));
    }
}

Result<void> Engine::publish_unconfirmed(std::span<const Wire> wires, std::vector<bool>& confirmed,
                                         steady_clock::time_point deadline) {
    return with_connection(deadline, [&](Connection& c) -> Result<void> {
        std::vector<Wire> rest;
        std::vector<std::size_t> index;
        for (std::size_t i = 0; i < wires.size(); ++i)
            if (!confirmed[i]) {
                rest.push_back(wires[i]);
                index.push_back(i);
            }
        std::unique_ptr<bool[]> sub(new bool[rest.size()]());
        auto r = c.publish(rest, deadline, std::span<bool>(sub.get(), rest.size()));
        for (std::size_t i = 0; i < rest.size(); ++i)
            if (sub[i]) confirmed[index[i]] = true;
        return r;
    });
}

}  // namespace conveyor::amqp
