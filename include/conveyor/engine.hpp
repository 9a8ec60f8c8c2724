#pragma once
/// The engine-facing side of a broker: consumers and their deliveries and settlements, the
/// worker's monitoring and remote-control channel, and the schedulers' store. Applications
/// publish, read results and administer through conveyor/broker.hpp; this header is for the
/// worker, the scheduler, tests that drive a consumer by hand, and those who write an engine.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/broker.hpp"

namespace conveyor {

/// A message handed to a consumer. `tag` identifies it in settlements.
struct Delivery {
    std::uint64_t tag = 0;
    std::string queue;
    std::string message_id;  ///< the broker's id for it (the task id when it has one)
    /// The message as it came; with `task`, none (its headers null: nothing is allocated).
    Envelope envelope{.headers = nullptr};
    int deliveries = 1;  ///< 1 on first delivery; more when redelivered after a crash
    /// From an ordered queue: the key whose order this delivery keeps. A worker runs one
    /// delivery per key at a time and retries a failing one in place.
    std::string ordering_key;
    /// When it became deliverable (published, or its delay ended), where the engine knows:
    /// what a worker's wait-time metric measures from.
    std::optional<TimePoint> due;
    /// When the broker handed it to this consumer, where the engine says (sqlite: the moment
    /// of the claim, when the task's limits counted it).
    std::optional<TimePoint> taken;
    /// The task itself, from an engine that passes tasks published in this process without
    /// encoding them (memory; OutgoingMessage::task), or one that decoded the message as it
    /// read it (RabbitMQ, sqlite, with ConsumerOptions::decode): the worker takes it instead of
    /// decoding `envelope`, which is then empty.
    std::shared_ptr<const TaskMessage> task;
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
    /// retry: the updated message; dead_letter: the message; else none (its headers null)
    Envelope envelope{.headers = nullptr};
    TimePoint not_before{};  ///< retry: earliest redelivery
    std::string reason;      ///< dead_letter: why
    /// How the run went, for engines that keep a task history (sqlite): ack, retry and
    /// dead_letter of a task that ran. Absent: it did not run (revoked, undecodable, ...).
    struct Attempt {
        std::string task;      ///< its name (per-minute counts)
        TimePoint started{};   ///< its handler's start
        TimePoint finished{};  ///< and end
        double waited = -1;    ///< seconds from due to start; -1: unknown
        std::string error;     ///< retry, dead_letter: what it raised
    };
    std::optional<Attempt> attempt;
};

/// What a consumer takes from which queues.
struct ConsumerOptions {
    std::vector<std::string> queues;
    std::size_t prefetch = 16;               ///< most unsettled deliveries at once
    std::chrono::milliseconds lease{30000};  ///< sqlite: claim lifetime without renewal
    std::string name;                        ///< for diagnostics; unique per consumer
    /// sqlite: once a fetch returned tasks, a thread of the consumer claims the next batch (as
    /// many again) while the caller works on these, so that claiming and reading rows overlap
    /// the caller's work. Those tasks are leased to this consumer meanwhile (renewed and
    /// handed back with its others). The worker sets it; other engines ignore it.
    bool read_ahead = false;
    /// RabbitMQ and sqlite: each Celery message is decoded as it is read (Delivery::task),
    /// from its header table as it came (RabbitMQ) or its stored headers as text (sqlite, on
    /// the thread that claims ahead), without a JSON tree of the headers. A message that does
    /// not decode comes as its envelope, for the worker to dead-letter with the reason; so do
    /// the messages of `raw_queues`, those delivered before, and (RabbitMQ) those of limited
    /// tasks. The worker sets it; the memory engine ignores it.
    bool decode = false;
    /// With `decode`: the raw-format queues, whose messages are not Celery's.
    std::vector<std::string> raw_queues;
    /// With `decode`: a larger body is not decoded (the worker refuses it).
    std::size_t max_body = std::size_t(16) << 20;
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
    /// The message of an unsettled delivery whose task the engine decoded as it read it
    /// (Delivery::task with ConsumerOptions::decode), as it came: what a retry or a dead letter
    /// sends on. nullopt where the engine keeps none (memory passes tasks as they are).
    [[nodiscard]] virtual std::optional<Envelope> message(std::uint64_t tag) const {
        (void)tag;
        return std::nullopt;
    }
    /// Why the consumer cannot reach its broker now (RabbitMQ: the connection is lost and being
    /// re-established); nullopt while it can. Engines whose failures show as errors of fetch
    /// and settle keep the default.
    virtual std::optional<std::string> trouble() const { return std::nullopt; }
    /// Fetches nothing ahead any more and hands back what was claimed ahead and not returned by
    /// fetch yet (read_ahead), so that other consumers can take it at once; deliveries fetch
    /// returned stay this consumer's to settle. The worker calls it as it begins to stop.
    /// Engines that do not read ahead keep the default.
    [[nodiscard]] virtual Result<void> stop_reading_ahead() { return {}; }
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
    /// Connects now rather than at the first call (the worker does it while its consumer
    /// opens). Errc::unavailable when the broker cannot be reached; the calls try again.
    [[nodiscard]] virtual Result<void> connect() { return {}; }
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

/// Monitoring events of every worker on the broker (Celery's task-* and worker-*), as a monitor
/// such as the dashboard receives them. Used by one thread. Best effort, as in Celery: events
/// sent while nobody listens are lost; a named stream's queue keeps them for a while (an hour,
/// at most 1,000,000) across the receiver's restarts.
class EventStream {
  public:
    virtual ~EventStream() = default;
    /// The events that came within `wait` (none: an empty vector). Each is an object with
    /// "type", "hostname", "timestamp" (seconds) and its fields. Errc::unavailable while the
    /// broker cannot be reached (the next call tries again).
    [[nodiscard]] virtual Result<std::vector<Json>> next(std::chrono::milliseconds wait) = 0;
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

}  // namespace conveyor
