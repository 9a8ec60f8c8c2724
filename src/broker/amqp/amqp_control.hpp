#pragma once
// Celery's monitoring and remote control on RabbitMQ: events on the `celeryev` topic exchange
// and the pidbox (`celery.pidbox` fanout, replies through `reply.celery.pidbox`), with the
// names, flags and arguments Celery 5.2.6 uses, so `celery inspect`, `celery control`,
// `celery events` and Flower see Conveyor workers.

#include <memory>
#include <string>

#include "broker/amqp/amqp_connection.hpp"
#include "conveyor/broker.hpp"
#include "conveyor/engine.hpp"

namespace conveyor::amqp {

/// A control channel with its own connection (reconnected on demand).
/// Celery events of every worker, through a queue `conveyor.events.NAME` bound to celeryev.
std::unique_ptr<EventStream> make_event_stream(const ConnectionOptions& options, std::string name);

std::unique_ptr<ControlChannel> make_control_channel(const ConnectionOptions& options,
                                                     std::string node);

}  // namespace conveyor::amqp
