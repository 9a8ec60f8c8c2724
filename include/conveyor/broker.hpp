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
///
/// Applications see three faces: Publisher (enqueue), ResultStore (results), BrokerAdmin
/// (counts, dead letters, topology). Consumers and the other engine-facing parts are in
/// conveyor/engine.hpp.

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
#include "conveyor/limits.hpp"
#include "conveyor/task.hpp"
#include "conveyor/topology.hpp"

namespace conveyor {

/// A message to publish, with its destination and earliest delivery time.
struct OutgoingMessage {
    std::string queue;  ///< destination queue (when `exchange` is empty)
    /// The task's id: the broker's id for the message (an id it already holds is dropped).
    /// Empty: the id in the envelope, or a new one when the envelope has none.
    std::string task_id;
    Envelope envelope;
    std::optional<TimePoint> not_before;  ///< delayed delivery; waits in the broker
    std::string exchange;     ///< amqp: publish to this exchange instead (fan-out, topic routing)
    std::string routing_key;  ///< amqp: the routing key with `exchange`
    std::string
        ordering_key;  ///< ordered queues: tasks with the same key run in order, one at a time
    /// The task itself, for an engine that takes tasks published in this process as they are
    /// (detail::task_form): the memory engine hands them to its workers, and encodes one only
    /// when something asks for the message (a dead letter's listing); the sqlite engine writes
    /// it as its stored text, and RabbitMQ's as its header table, without building the Celery
    /// message first. The envelope is then left empty. Publishers set it only where the engine
    /// says so.
    std::shared_ptr<const TaskMessage> task;
};

/// A chord's header results once every part is in (chord_part_done).
struct ChordParts {
    bool complete = false;          ///< this part was the last one
    std::vector<TaskResult> parts;  ///< when complete: every part, in group_index order
};

/// Counts for one queue.
struct QueueStats {
    std::string queue;
    std::int64_t ready = 0;  ///< can be delivered now
    /// Waiting for their time (countdown, ETA, retry backoff); -1 where the engine cannot
    /// tell per queue (RabbitMQ: delayed messages wait in shared delay queues).
    std::int64_t delayed = 0;
    std::int64_t in_flight = 0;  ///< delivered and not yet settled; -1 where not visible
    std::int64_t dead = 0;       ///< in the dead-letter store
    /// Waiting in the broker for a task's rate or concurrency limit (TaskLimit) to let them run.
    std::int64_t limited = 0;
    bool paused = false;  ///< workers take nothing from it (pause_queue)
};

/// A dead-lettered message and why it died.
struct DeadLetter {
    std::string message_id;
    std::string queue;
    Envelope envelope;
    std::string reason;
    TimePoint dead_at{};
};

/// Producing: hands tasks to the broker. Thread-safe.
class Publisher {
  public:
    virtual ~Publisher() = default;
    /// Stores messages durably (sqlite: committed before return). A message whose id is already
    /// known (waiting, in flight, dead, or completed with a stored result) is dropped, so
    /// republishing with the same id is idempotent.
    [[nodiscard]] virtual Result<void> publish(std::span<const OutgoingMessage> messages) = 0;
};

/// Results: what became of a task, waiting for it, and what workflows store besides
/// settlements. Thread-safe.
class ResultStore {
  public:
    virtual ~ResultStore() = default;
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
};

/// Operating a broker: counts, dead letters and topology. Thread-safe.
class BrokerAdmin {
  public:
    virtual ~BrokerAdmin() = default;
    /// Counts for each queue the broker knows.
    [[nodiscard]] virtual Result<std::vector<QueueStats>> stats() = 0;
    [[nodiscard]] virtual Result<std::vector<DeadLetter>> dead_letters(std::string_view queue,
                                                                       std::size_t limit) = 0;
    /// Moves dead messages of a queue back to it (all of them, or those in `ids`), with their
    /// retry count reset. Returns how many moved.
    [[nodiscard]] virtual Result<std::size_t> replay_dead(std::string_view queue,
                                                          std::span<const std::string> ids) = 0;
    /// Deletes dead messages of a queue. Returns how many.
    [[nodiscard]] virtual Result<std::size_t> purge_dead(std::string_view queue) = 0;
    /// Pauses a queue (workers take nothing from it until it is resumed; what they hold runs
    /// on; enqueueing goes on) or resumes it. Errc::invalid_argument where the engine cannot.
    [[nodiscard]] virtual Result<void> pause_queue(std::string_view queue, bool paused);
    /// Records the topology; engines declare what they use of it when they first use it.
    /// The embedded engines have queues only: exchanges or bindings are an error there.
    [[nodiscard]] virtual Result<void> set_topology(const Topology& topology) = 0;
    /// Declares the recorded topology now, idempotently (`conveyor topology apply`). An entity
    /// that exists with other arguments is an Errc::conflict naming it and the argument.
    [[nodiscard]] virtual Result<void> declare_topology() = 0;
};

class Consumer;
class ControlChannel;
class ScheduleStore;
class TaskHistory;
class EventStream;
struct ConsumerOptions;

/// One engine (memory, sqlite, amqp) behind all three faces, and the engine-facing calls
/// (consumers, remote control, schedules: conveyor/engine.hpp). Thread-safe: publish and the
/// result and admin calls may be used from any thread, and consume() and control() at once (a
/// worker opens both together); each consumer and control channel belongs to one thread at a
/// time.
class Broker : public Publisher, public ResultStore, public BrokerAdmin {
  public:
    /// Opens the engine named by `url` ("memory://", "sqlite://conveyor.db", ...).
    [[nodiscard]] static Result<std::shared_ptr<Broker>> open(std::string_view url);

    /// Takes deliveries from queues (the worker does; see conveyor/engine.hpp).
    [[nodiscard]] virtual Result<std::unique_ptr<Consumer>> consume(
        const ConsumerOptions& options) = 0;
    /// Monitoring and remote control for the worker called `node` ("name@host"): Celery
    /// events and pidbox on amqp. nullptr where the engine has neither.
    [[nodiscard]] virtual Result<std::unique_ptr<ControlChannel>> control(std::string_view node);
    /// Schedules' leadership and bookkeeping (sqlite). Errc::invalid_argument where the engine
    /// has none.
    [[nodiscard]] virtual Result<std::unique_ptr<ScheduleStore>> schedule_store();
    /// A worker says it is alive and what it does (`info`: node, pid, queues, concurrency,
    /// busy, counts; "offline": true as it stops), every few seconds, for the dashboard's
    /// workers view: sqlite keeps it in the file. Engines with Celery events (amqp) ignore it:
    /// there the worker-heartbeat events say the same.
    [[nodiscard]] virtual Result<void> report_worker(std::string_view node, const Json& info);
    /// Every worker's monitoring events (Celery events: amqp), for a monitor called `name`.
    /// Errc::invalid_argument where the engine has none.
    [[nodiscard]] virtual Result<std::unique_ptr<EventStream>> events(std::string_view name);
    /// What the broker remembers of tasks after they ran (conveyor/history.hpp): sqlite.
    /// Errc::invalid_argument where the engine keeps no history.
    [[nodiscard]] virtual Result<std::unique_ptr<TaskHistory>> history();
    /// Unique tasks: stores `message` unless a task published with `unique_key` is waiting,
    /// delayed or running, or the key is held until `hold_until` by an earlier one; returns
    /// the id of the task that holds the key (this message's when it was stored). sqlite decides
    /// in the transaction that stores it; amqp in the Redis result backend (a script takes the
    /// key before the publish, with a lease that a publisher dying in between holds no longer),
    /// so that of any number of concurrent publishers exactly one stores a task. The key goes
    /// when its task succeeds, is dead-lettered or revoked (and `hold_until` has passed); it
    /// stays through retries and a worker's crash (the task is still waiting or running); on
    /// amqp it also lapses a week after the task was due if the task never settles (a message
    /// purged from its queue). Errc::invalid_argument where the engine cannot (memory; amqp
    /// without the Redis result backend).
    [[nodiscard]] virtual Result<std::string> publish_unique(const OutgoingMessage& message,
                                                             std::string_view unique_key,
                                                             std::optional<TimePoint> hold_until);
    /// Sets a task's limits for every worker sharing the broker (a limit that limits nothing
    /// removes the task's): tasks over a limit wait in the broker, not in a worker, and run as
    /// soon as the limit lets them; tasks of other names are not held up behind them. Workers
    /// set the limits of the tasks they handle as they start (TaskOptions); `conveyor limit`
    /// and Celery's `control rate_limit` change them while they run. Errc::invalid_argument
    /// where the engine cannot (all but sqlite) for a limit that limits something.
    [[nodiscard]] virtual Result<void> set_limit(const TaskLimit& limit);
    /// Every task's limits, with what waits on them and what runs under them.
    [[nodiscard]] virtual Result<std::vector<LimitStats>> limits();
    /// The broker's URL for people: passwords are masked ("amqp://user:***@host/").
    virtual std::string url() const = 0;
};

}  // namespace conveyor
