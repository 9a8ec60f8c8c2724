#pragma once
// RabbitMQ's management plugin, read over its HTTP API: every queue of the vhost with its
// counts, those Conveyor's configuration does not name included.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "broker/amqp/amqp_connection.hpp"
#include "conveyor/broker.hpp"
#include "conveyor/error.hpp"

namespace conveyor::amqp {

struct ManagedQueue {
    std::string name;
    std::int64_t ready = 0;    ///< messages_ready
    std::int64_t unacked = 0;  ///< messages_unacknowledged: delivered, not settled
    bool exclusive = false;    ///< a connection's own (reply queues)
    bool auto_delete = false;
    std::string dead_letter_to;  ///< its x-dead-letter-routing-key argument, if any
};

/// GET /api/queues/VHOST from `o.management` with the broker's credentials (5 s deadline).
[[nodiscard]] Result<std::vector<ManagedQueue>> management_queues(const ConnectionOptions& o);

/// Conveyor's view of them: a queue's `.dead` queue and an ordered queue's partitions fold into
/// it (`partitioned(name)` says whether `name` is an ordered queue), delay levels into one
/// "(delayed, all queues)" row, and RabbitMQ's and Celery's own queues (amq.*, pidbox, events,
/// exclusive or auto-delete reply queues) are left out.
std::vector<QueueStats> fold_queues(const std::vector<ManagedQueue>& queues,
                                    const std::function<bool(const std::string&)>& partitioned);

}  // namespace conveyor::amqp
