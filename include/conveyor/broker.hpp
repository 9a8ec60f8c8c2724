#pragma once
/// The Broker interface: where tasks wait, who holds them, and what became of them.
///
/// Engines, chosen by URL:
///   memory://[name]   in-process, for tests and single-process programs
///   sqlite://PATH     the embedded default: a durable SQLite file (WAL) shared by processes
///   amqp://USER:PASS@HOST:PORT/VHOST, amqps://...   RabbitMQ (AMQP 0-9-1), the distributed engine
///
/// Delivery guarantee: at least once. A delivery stays owned by its consumer until the consumer
/// settles it (ack, retry, dead-letter, release); if the consumer dies, the delivery goes back to
/// the queue (sqlite: when its lease expires; memory: when the consumer is destroyed).

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/error.hpp"
#include "conveyor/task.hpp"
#include "conveyor/topology.hpp"

namespace conveyor {

/// A message to publish, with its destination and earliest delivery time.
struct OutgoingMessage {
    std::string queue;  ///< destination queue (when `exchange` is empty)
    Envelope envelope;
    std::optional<TimePoint> not_before;  ///< delayed delivery; waits in the broker
    std::string exchange;     ///< amqp: publish to this exchange instead (fan-out, topic routing)
    std::string routing_key;  ///< amqp: the routing key with `exchange`
    std::string
        ordering_key;  ///< ordered queues: tasks with the same key run in order, one at a time
};

/// A message handed to a consumer. `tag` identifies it in settlements.
struct Delivery {
    std::uint64_t tag = 0;
    std::string queue;
    std::string message_id;  ///< the broker's id for it (the task id when it has one)
    Envelope envelope;
    int deliveries = 1;  ///< 1 on first delivery; more when redelivered after a crash
    /// From an ordered queue: the key whose order this delivery keeps. A worker runs one
    /// delivery per key at a time and retries a failing one in place.
    std::string ordering_key;
};

/// What a consumer does with a delivery once it is done with it.
struct Settlement {
    enum class Kind {
        ack,          ///< done; removed from the queue; `result` stored
        retry,        ///< back to the queue with `envelope` at `not_before`; counts as a retry
        dead_letter,  ///< moved to the queue's dead-letter store with `reason`; `result` stored
        release,      ///< handed back untouched (shutdown); not a retry
    };
    Kind kind = Kind::ack;
    std::uint64_t tag = 0;
    std::optional<TaskResult> result;  ///< ack, dead_letter: what to store (none: store nothing)
    Envelope envelope;                 ///< retry: the updated message; dead_letter: the message
    TimePoint not_before{};            ///< retry: earliest redelivery
    std::string reason;                ///< dead_letter: why
};

/// A chord's header results once every part is in (chord_part_done).
struct ChordParts {
    bool complete = false;          ///< this part was the last one
    std::vector<TaskResult> parts;  ///< when complete: every part, in group_index order
};

/// Counts for one queue.
struct QueueStats {
    std::string queue;
    std::int64_t ready = 0;      ///< can be delivered now
    std::int64_t delayed = 0;    ///< waiting for their time (countdown, ETA, retry backoff)
    std::int64_t in_flight = 0;  ///< delivered and not yet settled
    std::int64_t dead = 0;       ///< in the dead-letter store
};

/// A dead-lettered message and why it died.
struct DeadLetter {
    std::string message_id;
    std::string queue;
    Envelope envelope;
    std::string reason;
    TimePoint dead_at{};
};

/// What a consumer takes from which queues.
struct ConsumerOptions {
    std::vector<std::string> queues;
    std::size_t prefetch = 16;               ///< most unsettled deliveries at once
    std::chrono::milliseconds lease{30000};  ///< sqlite: claim lifetime without renewal
    std::string name;                        ///< for diagnostics; unique per consumer
};

/// One consumer's session. Not thread-safe: the thread that created it uses it alone.
class Consumer {
  public:
    virtual ~Consumer() = default;
    /// Up to `max` deliveries; waits at most `wait` when none is ready. An empty vector
    /// means nothing was ready in time.
    [[nodiscard]] virtual Result<std::vector<Delivery>> fetch(std::size_t max,
                                                              std::chrono::milliseconds wait) = 0;
    /// Settles deliveries; sqlite commits them in one transaction (group commit). May move the
    /// settlements' envelopes out. An empty call lets the consumer send what it held back
    /// (RabbitMQ: acks that wait for an older delivery).
    [[nodiscard]] virtual Result<void> settle(std::span<Settlement> settlements) = 0;
    /// Extends the leases of every unsettled delivery. Returns the tags of deliveries that are
    /// no longer this consumer's (sqlite: a lease ran out and another consumer claimed the
    /// task; RabbitMQ: the connection they came on was lost, so they are delivered again):
    /// whoever runs them should stop. Errc::unavailable while the broker fails for a while.
    [[nodiscard]] virtual Result<std::vector<std::uint64_t>> renew() = 0;
    /// Starts (`consume`) or stops taking deliveries from `queue` while running (`celery
    /// control add_consumer / cancel_consumer`). Deliveries already taken stay settleable.
    [[nodiscard]] virtual Result<void> set_consuming(const std::string& queue, bool consume) {
        (void)queue;
        (void)consume;
        return fail(Errc::invalid_argument, "this engine cannot change a consumer's queues");
    }
};

/// A remote-control request addressed to a worker (Celery's pidbox: `celery inspect ping`,
/// `celery control revoke`, ...).
struct ControlRequest {
    std::string method;
    Json arguments = Json::object();
    std::int64_t clock = 0;      ///< the sender's Lamport clock
    std::string reply_exchange;  ///< empty: a cast, answered by nobody
    std::string reply_routing_key;
    std::string ticket;
};

/// A worker's line to monitors and remote control. Used by one thread.
class ControlChannel {
  public:
    virtual ~ControlChannel() = default;
    /// Publishes monitoring events (transient; lost when nobody listens). Each is an object
    /// with "type" ("task-succeeded", "worker-heartbeat", ...) and its fields.
    [[nodiscard]] virtual Result<void> publish_events(std::span<const Json> events) = 0;
    /// The next request for this worker, waiting at most `wait`; nullopt when none came.
    [[nodiscard]] virtual Result<std::optional<ControlRequest>> next_request(
        std::chrono::milliseconds wait) = 0;
    /// Answers a request (not a cast) with `value`, as reply `{node: value}`.
    [[nodiscard]] virtual Result<void> reply(const ControlRequest& request, const Json& value,
                                             std::int64_t clock) = 0;
};

/// One fire of a schedule: the task it publishes (none for a fire skipped by policy).
struct ScheduleFire {
    std::string schedule;
    TimePoint at{};                          ///< the scheduled time
    std::optional<OutgoingMessage> message;  ///< what it publishes
};

/// Leadership and fire bookkeeping for `conveyor scheduler` instances sharing one broker, and
/// the schedules added from the CLI. Used by one thread.
class ScheduleStore {
  public:
    virtual ~ScheduleStore() = default;
    /// Takes or renews leadership for `ttl`; false while another scheduler holds it.
    [[nodiscard]] virtual Result<bool> lead(std::string_view owner,
                                            std::chrono::milliseconds ttl) = 0;
    /// Gives leadership up at once (clean shutdown).
    [[nodiscard]] virtual Result<void> resign(std::string_view owner) = 0;
    /// Each schedule's last fire, and the last one that published a task.
    struct Mark {
        TimePoint last_fire{};
        std::optional<TimePoint> last_run;
    };
    [[nodiscard]] virtual Result<std::map<std::string, Mark>> last_fires(
        const std::vector<std::string>& schedules) = 0;
    /// Publishes the fires' tasks and records each schedule's last fire in one atomic step
    /// (sqlite: one transaction; amqp: each task is routed to its queue and to the schedule's
    /// record by one publish), only while `owner` still leads (false otherwise).
    [[nodiscard]] virtual Result<bool> fire(std::string_view owner,
                                            std::span<const ScheduleFire> fires) = 0;
    /// Schedules added from the CLI, and pause flags (which apply to configured ones too),
    /// read together.
    struct Overrides {
        std::vector<Json> added;
        std::map<std::string, bool> paused;
    };
    [[nodiscard]] virtual Result<Overrides> overrides() = 0;
    [[nodiscard]] virtual Result<void> add(const Json& schedule) = 0;
    [[nodiscard]] virtual Result<bool> remove(std::string_view name) = 0;
    [[nodiscard]] virtual Result<void> set_paused(std::string_view name, bool paused) = 0;
};

/// "schedules need ..." for an engine without a schedule store.
std::string fmt_unsupported_schedules(const std::string& url);

/// Engine-independent broker. Thread-safe: publish and the admin calls may be used from any
/// thread; each consumer belongs to one thread.
class Broker {
  public:
    virtual ~Broker() = default;

    /// Opens the engine named by `url` ("memory://", "sqlite://conveyor.db", ...).
    [[nodiscard]] static Result<std::shared_ptr<Broker>> open(std::string_view url);

    /// Stores messages durably (sqlite: committed before return). A message whose id is already
    /// known (waiting, in flight, dead, or completed with a stored result) is dropped, so
    /// republishing with the same id is idempotent.
    [[nodiscard]] virtual Result<void> publish(std::span<const OutgoingMessage> messages) = 0;
    /// As publish, for a caller that is done with the messages: their envelopes may be moved
    /// out instead of copied (the memory engine keeps them as they are).
    [[nodiscard]] virtual Result<void> publish_moved(std::span<OutgoingMessage> messages) {
        return publish(std::span<const OutgoingMessage>(messages));
    }
    [[nodiscard]] virtual Result<std::unique_ptr<Consumer>> consume(
        const ConsumerOptions& options) = 0;
    [[nodiscard]] virtual Result<std::vector<QueueStats>> stats() = 0;
    /// State and result of a task id; PENDING for ids the broker does not know.
    [[nodiscard]] virtual Result<TaskResult> result(std::string_view id) = 0;
    /// Waits until the task is ready (SUCCESS, FAILURE, REVOKED) or `timeout` passed
    /// (Errc::timeout). Engines that can be told when a result arrives override the polling.
    [[nodiscard]] virtual Result<TaskResult> wait_result(std::string_view id,
                                                         std::chrono::milliseconds timeout);
    /// Stores results directly, besides settlements: workflows use it for the rest of a chain
    /// whose link failed, or a chord body whose header failed. `reply_to`: where rpc results go.
    [[nodiscard]] virtual Result<void> store_results(std::span<const TaskResult> results,
                                                     std::string_view reply_to) = 0;
    /// Chords: group `group_id` has `size` header tasks. Called before they are published.
    [[nodiscard]] virtual Result<void> begin_chord(std::string_view group_id, std::size_t size);
    /// Chords: a header task finished (SUCCESS or FAILURE in `part`). Exactly one call per
    /// chord sees `complete`, with every part: that caller runs the body.
    [[nodiscard]] virtual Result<ChordParts> chord_part_done(std::string_view group_id, int index,
                                                             const TaskResult& part);
    /// Where results of tasks published by this process come back (amqp rpc backend: this
    /// process's reply queue, declared on first use). Empty when results are stored elsewhere.
    [[nodiscard]] virtual Result<std::string> reply_to() { return std::string(); }
    [[nodiscard]] virtual Result<std::vector<DeadLetter>> dead_letters(std::string_view queue,
                                                                       std::size_t limit) = 0;
    /// Moves dead messages of a queue back to it (all of them, or those in `ids`), with their
    /// retry count reset. Returns how many moved.
    [[nodiscard]] virtual Result<std::size_t> replay_dead(std::string_view queue,
                                                          std::span<const std::string> ids) = 0;
    /// Deletes dead messages of a queue. Returns how many.
    [[nodiscard]] virtual Result<std::size_t> purge_dead(std::string_view queue) = 0;
    /// Records the topology; engines declare what they use of it when they first use it.
    /// The embedded engines have queues only: exchanges or bindings are an error there.
    [[nodiscard]] virtual Result<void> set_topology(const Topology& topology) = 0;
    /// Declares the recorded topology now, idempotently (`conveyor topology apply`). An entity
    /// that exists with other arguments is an Errc::conflict naming it and the argument.
    [[nodiscard]] virtual Result<void> declare_topology() = 0;
    /// Monitoring and remote control for the worker called `node` ("name@host"): Celery
    /// events and pidbox on amqp. nullptr where the engine has neither.
    [[nodiscard]] virtual Result<std::unique_ptr<ControlChannel>> control(std::string_view node) {
        (void)node;
        return std::unique_ptr<ControlChannel>();
    }
    /// Schedules' leadership and bookkeeping (sqlite). Errc::invalid_argument where the engine
    /// has none.
    [[nodiscard]] virtual Result<std::unique_ptr<ScheduleStore>> schedule_store() {
        return fail(Errc::invalid_argument, fmt_unsupported_schedules(url()));
    }
    /// The broker's URL for people: passwords are masked ("amqp://user:***@host/").
    virtual std::string url() const = 0;
};

}  // namespace conveyor
