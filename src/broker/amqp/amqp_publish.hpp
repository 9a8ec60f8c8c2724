#pragma once
// Publishing tasks on RabbitMQ: where each message goes (its queue, a delay level, an ordered
// queue's partition, an exchange), and Celery's rpc reply for a result.

#include <span>
#include <string>

#include "broker/amqp/amqp_engine.hpp"
#include "conveyor/broker.hpp"

namespace conveyor::amqp {

/// Celery's rpc:// reply for a result: JSON body, correlated by task id.
Envelope rpc_reply(const TaskResult& r);
/// Where a message goes: exchange and routing key, delays and ordered queues resolved.
/// `key_storage` keeps the routing key the wire points to.
Result<Wire> route(Engine& e, const OutgoingMessage& m, std::string& key_storage);
/// Declares the messages' queues when first used, routes and publishes them, confirmed.
Result<void> publish_messages(Engine& e, std::span<const OutgoingMessage> msgs);

}  // namespace conveyor::amqp
