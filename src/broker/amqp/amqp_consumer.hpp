#pragma once
// Consuming from RabbitMQ: a worker's connection, its deliveries and their settlements.

#include <memory>

#include "broker/amqp/amqp_engine.hpp"
#include "conveyor/engine.hpp"

namespace conveyor::amqp {

/// A consumer of `options.queues`, connected (or an error saying why it could not be).
Result<std::unique_ptr<Consumer>> open_consumer(std::shared_ptr<Engine> engine,
                                                const ConsumerOptions& options);

}  // namespace conveyor::amqp
