#pragma once
// The one way a task becomes a message to publish, for the client, workflows and the
// scheduler alike.

#include <string>

#include "broker/publish_moved.hpp"
#include "conveyor/broker.hpp"
#include "conveyor/task.hpp"

namespace conveyor::detail {

/// Where a task goes and in which format.
struct Destination {
    std::string queue;     ///< the queue (when `exchange` is empty)
    std::string exchange;  ///< amqp: an exchange instead, with `routing_key`
    std::string routing_key;
    std::string ordering_key;  ///< ordered queues: the key whose order the task keeps
    bool raw = false;          ///< the bare body (a plain AMQP consumer's format), not Celery's
};

/// Fills what the task leaves open (an id, empty args and kwargs for JSON null, this
/// process as origin), refuses what no worker would take (args that are not an array,
/// kwargs not an object, nesting deeper than workers accept, a priority outside 0..255),
/// encodes it (Celery protocol v2, or raw) and addresses it: the message's `task_id`, its
/// delay (`not_before` = the task's eta) and destination. `form`: how the engine takes tasks
/// (task_form); for one that takes them as objects, a Celery task is not encoded but set as the
/// message's `task` (TaskForm::decoded: as a worker would decode it).
Result<OutgoingMessage> make_outgoing(TaskMessage task, const Destination& to,
                                      TaskForm form = TaskForm::message);

}  // namespace conveyor::detail
