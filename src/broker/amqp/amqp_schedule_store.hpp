#pragma once
// Schedules on RabbitMQ: leadership, fires and CLI-added schedules kept in queues.

#include <memory>

#include "broker/amqp/amqp_engine.hpp"
#include "conveyor/engine.hpp"

namespace conveyor::amqp {

std::unique_ptr<ScheduleStore> make_schedule_store(std::shared_ptr<Engine> engine);

}  // namespace conveyor::amqp
