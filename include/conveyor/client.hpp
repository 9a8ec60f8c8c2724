#pragma once
/// The producer side: enqueue tasks and read their results.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/broker.hpp"
#include "conveyor/config.hpp"
#include "conveyor/error.hpp"
#include "conveyor/task.hpp"

namespace conveyor {

/// Per-enqueue options; unset fields take the task's configuration.
struct EnqueueOptions {
    std::string queue;  ///< default: the task's queue, else "celery"
    std::optional<std::chrono::milliseconds> countdown;  ///< run after this delay
    std::optional<TimePoint> eta;                        ///< or at this time
    std::optional<TimePoint> expires;                    ///< do not run after this time
    std::optional<int> priority;                         ///< 0..255, higher first
    std::string id;                  ///< default: a new UUID (version 7: time-ordered)
    std::optional<int> max_retries;  ///< overrides the task's retry budget
    std::string exchange;      ///< amqp: publish to this exchange (fan-out) instead of a queue
    std::string routing_key;   ///< amqp: routing key with `exchange`
    std::string ordering_key;  ///< ordered queues: same key, same order, one at a time
    /// Publish the one argument as the plain body, as a foreign publisher would (also the
    /// default for a raw queue, a `format = "raw"` exchange, and an exchange whose configured
    /// bindings all lead to raw queues).
    bool raw = false;
    /// A raw publish's content type; default: text/plain for a string of UTF-8 text,
    /// application/octet-stream for a string of other bytes, application/json otherwise.
    /// A string argument is sent as its bytes, exactly.
    std::string content_type;
    /// Unique tasks (sqlite; RabbitMQ with the Redis result backend): while a task enqueued with
    /// this key is waiting, delayed or running, enqueueing another with it stores nothing and
    /// returns that task's id (see Broker::publish_unique). At most 1,024 bytes.
    std::string unique_key;
    /// ... and the key stays taken this long after the enqueue that took it, even once its
    /// task has finished (whichever ends later).
    std::optional<std::chrono::milliseconds> unique_for;
};

/// One task of a workflow (Celery's signature).
struct Signature {
    std::string task;
    Json args = Json::array();
    Json kwargs = Json::object();
    std::string queue;       ///< default: the task's queue, else "celery"
    std::string id;          ///< default: a new UUID (version 7: time-ordered)
    bool immutable = false;  ///< true: does not receive the previous task's result
};

/// Thread-safe. Holds a broker and the configuration used for routing.
class Client {
  public:
    explicit Client(std::shared_ptr<Broker> broker, Config config = {});

    /// Enqueues one task; returns its id once the broker has stored it durably.
    [[nodiscard]] Result<std::string> enqueue(std::string_view task, Json args = Json::array(),
                                              Json kwargs = Json::object(),
                                              const EnqueueOptions& options = {});
    /// Enqueues many tasks in one broker round trip (one transaction on sqlite).
    /// `options` apply to all of them; a task's own id/priority/eta win when set.
    [[nodiscard]] Result<std::vector<std::string>> enqueue_many(std::vector<TaskMessage> tasks,
                                                                const EnqueueOptions& options = {});
    /// Workflows, Celery-compatible (Python workers can run any of their tasks):
    /// a chain runs its tasks one after the other, each receiving the previous result as its
    /// first argument; returns the last task's id (its result is the chain's).
    [[nodiscard]] Result<std::string> chain(std::vector<Signature> tasks);
    /// A group runs its tasks in parallel; returns their ids.
    [[nodiscard]] Result<std::vector<std::string>> group(std::vector<Signature> tasks);
    /// A chord runs `header` in parallel, then `body` with the list of their results (in
    /// header order) as first argument; returns the body's id. Needs a result store that
    /// counts (sqlite, or amqp with results=redis://).
    [[nodiscard]] Result<std::string> chord(std::vector<Signature> header, Signature body);

    /// The task's current state and result.
    [[nodiscard]] Result<TaskResult> result(std::string_view id);
    /// Waits until the task succeeded or failed for good, or `timeout` passed (Errc::timeout).
    [[nodiscard]] Result<TaskResult> wait(std::string_view id, std::chrono::milliseconds timeout);

    Broker& broker() noexcept { return *broker_; }

  private:
    Result<OutgoingMessage> prepare(TaskMessage task, const EnqueueOptions& options) const;
    /// A signature as workflows embed it, with its id, queue and reply queue settled.
    Result<Json> embed(Signature& s) const;

    std::shared_ptr<Broker> broker_;
    Config config_;
};

}  // namespace conveyor
