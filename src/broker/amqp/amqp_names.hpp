#pragma once
// Names and headers the amqp engine puts on RabbitMQ: dead-letter and partition queues, the
// channels it uses, the headers it adds to messages.

#include <amqp.h>
#include <fmt/format.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "conveyor/task.hpp"

namespace conveyor::amqp {

inline constexpr std::string_view kReasonHeader = "x-conveyor-reason";
inline constexpr std::string_view kDeadAtHeader = "x-conveyor-dead-at";
inline constexpr std::string_view kKeyHeader = "x-conveyor-ordering-key";
/// Deliveries of a message without a settlement, counted by Conveyor on classic queues (quorum
/// queues count them as x-delivery-count): a redelivered message is published again with it.
inline constexpr std::string_view kDeliveriesHeader = "x-conveyor-deliveries";
inline constexpr std::string_view kDeliveryCountHeader = "x-delivery-count";
/// When a task message was published (milliseconds since the epoch): where a consumer
/// measures its wait from (or from its ETA, when later).
inline constexpr std::string_view kSentAtHeader = "x-conveyor-sent-at";
/// A unique task's key (publish_unique): released in the Redis result backend when the task
/// settles for good (acked or dead-lettered; kept through retries).
inline constexpr std::string_view kUniqueHeader = "x-conveyor-unique";
/// The longest unique key (publish_unique refuses longer ones).
inline constexpr std::size_t kMaxUniqueKey = 1024;
/// How long after it was due a unique task's key lapses if the task never settles (a message
/// purged or deleted with its queue).
inline constexpr std::chrono::hours kUniqueLapse{24 * 7};

/// A limited task that went back through the delay levels to a start reserved for it
/// (RedisResults::admit): the rate it was reserved under. A changed rate reserves anew.
inline constexpr std::string_view kLimitRateHeader = "x-conveyor-limit-rate";
/// How often a limited task found every concurrency slot taken and went back to wait.
inline constexpr std::string_view kLimitWaitsHeader = "x-conveyor-limit-waits";

/// A message published anew starts its count again.
inline void forget_deliveries(Envelope& env) {
    if (!env.headers.is_object()) return;
    env.headers.erase(std::string(kDeliveriesHeader));
    env.headers.erase(std::string(kDeliveryCountHeader));
}
inline constexpr amqp_channel_t kConsumeChannel = 1;
inline constexpr amqp_channel_t kBrowseChannel = 3;

inline std::string dead_queue(std::string_view queue) { return std::string(queue) + ".dead"; }

/// How long a task that found every concurrency slot of its limit taken waits in its wait
/// queue at most: a freed slot wakes one at once, and a worker that finds free slots and
/// waiting tasks (a dead worker's slots lapsed) wakes them within a second; this catches the
/// rest (a slot of another key freed, a wake that came before the task reached the queue).
inline constexpr std::chrono::milliseconds kWaitBackstop{5000};
/// The queue where tasks named `task` taken from `queue` wait for a concurrency slot (they go
/// back to `queue` when woken or after kWaitBackstop): conveyor.wait.QUEUE.TASK, the queue's
/// dots escaped; a name longer than RabbitMQ takes ends in a hash of the whole instead.
std::string wait_queue(std::string_view queue, std::string_view task);
inline std::string partition_queue(std::string_view queue, int i) {
    return fmt::format("{}.p{}", queue, i);
}

}  // namespace conveyor::amqp
