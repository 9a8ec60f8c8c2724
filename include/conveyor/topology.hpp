#pragma once
/// Exchanges, queues and bindings: the "declare exchange, declare queue, bind" step as data.
/// The amqp engine declares them on RabbitMQ; the embedded engines have queues only.

#include <cstdint>
#include <string>
#include <vector>

#include "conveyor/task.hpp"

namespace conveyor {

/// An exchange to declare (amqp engine).
struct ExchangeSpec {
    std::string name;
    std::string type = "direct";  ///< direct, fanout, topic, headers, x-consistent-hash
    bool durable = true;          ///< survives a broker restart
    bool auto_delete = false;     ///< deleted when its last binding goes
    bool internal = false;        ///< only other exchanges publish to it
    bool passive = false;         ///< owned elsewhere: only checked to exist, never declared
    /// "raw": what is published to it goes out as the plain body (see QueueFormat::raw).
    std::string format = "celery";
    Json arguments = Json::object();
};

/// How a queue is declared.
struct QueueSpec {
    std::string name;
    std::string type = "classic";  ///< amqp: classic or quorum
    int max_priority = 0;          ///< amqp: x-max-priority (classic queues); 0: none
    std::int64_t max_length = 0;   ///< amqp: x-max-length; 0: unbounded
    std::string overflow;          ///< amqp: drop-head, reject-publish or reject-publish-dlx
    /// amqp: > 0 makes the queue ordered: a consistent-hash exchange named after the queue
    /// spreads tasks over this many partition queues (NAME.p0...) by ordering key, each with a
    /// single active consumer, so tasks of one key run in order and different keys in parallel.
    int partitions = 0;
    /// sqlite: a fair queue: tasks are taken round-robin across the keys this names in their
    /// arguments ("kwargs.NAME" or "args.N"), so one key's burst does not hold up another key's
    /// task by more than a turn. Empty: first in, first out (by priority).
    std::string fair_key;
    Json arguments = Json::object();  ///< any other x- arguments
    bool durable = true;              ///< amqp: survives a broker restart
    bool auto_delete = false;         ///< amqp: deleted when its last consumer goes
    bool exclusive = false;           ///< amqp: this connection's only, gone with it
    /// amqp: owned elsewhere (another team, a PHP service): only checked to exist, never
    /// declared, whatever its arguments.
    bool passive = false;
};

/// A binding of a queue (or of another exchange) to an exchange.
struct BindingSpec {
    std::string exchange;     ///< source
    std::string queue;        ///< destination queue, or
    std::string to_exchange;  ///< destination exchange
    std::string routing_key;
    Json arguments = Json::object();
};

/// Exchanges, queues and bindings, as `conveyor.toml` declares them.
struct Topology {
    std::vector<ExchangeSpec> exchanges;
    std::vector<QueueSpec> queues;
    std::vector<BindingSpec> bindings;
};

}  // namespace conveyor
