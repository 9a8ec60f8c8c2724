#pragma once
// amqp:// and amqps://: RabbitMQ through rabbitmq-c.

#include <memory>
#include <string>

#include "conveyor/broker.hpp"
#include "conveyor/engine.hpp"
#include "core/url.hpp"

namespace conveyor::amqp {

/// Connects once (so a wrong address or login fails here) and returns the engine.
Result<std::shared_ptr<Broker>> open_amqp_broker(const detail::BrokerUrl& url,
                                                 std::string url_text);

}  // namespace conveyor::amqp
