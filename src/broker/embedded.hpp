#pragma once
// What the embedded engines (memory, sqlite) accept of the AMQP-shaped parts of the API.

#include <fmt/format.h>

#include "conveyor/broker.hpp"

namespace conveyor::detail {

/// Exchanges, bindings and ordered (partitioned) queues need the amqp engine.
inline Result<void> check_embedded_topology(const Topology& t, std::string_view engine) {
    if (!t.exchanges.empty())
        return fail(
            Errc::invalid_argument,
            fmt::format("exchange '{}' needs the amqp engine; the {} engine has queues only",
                        t.exchanges.front().name, engine));
    if (!t.bindings.empty())
        return fail(
            Errc::invalid_argument,
            fmt::format("bindings need the amqp engine; the {} engine has queues only", engine));
    for (auto& q : t.queues)
        if (q.partitions > 0)
            return fail(
                Errc::invalid_argument,
                fmt::format("ordered queue '{}' (partitions) needs the amqp engine", q.name));
        else if (!q.fair_key.empty() && engine != "sqlite")
            return fail(Errc::invalid_argument,
                        fmt::format("fair queue '{}' (fair_key) needs the sqlite engine", q.name));
    return {};
}

/// Messages for exchanges or with ordering keys need the amqp engine.
inline Result<void> check_embedded_message(const OutgoingMessage& m, std::string_view engine) {
    if (!m.exchange.empty())
        return fail(Errc::invalid_argument,
                    fmt::format("publishing to exchange '{}' needs the amqp engine; the {} engine "
                                "publishes to queues",
                                m.exchange, engine));
    if (!m.ordering_key.empty())
        return fail(Errc::invalid_argument,
                    fmt::format("ordering keys need the amqp engine (an ordered queue); the {} "
                                "engine does not keep per-key order",
                                engine));
    return {};
}

}  // namespace conveyor::detail
