#pragma once
// Celery's redis:// result backend: meta values under celery-task-meta-<id>, written with
// SETEX and announced with PUBLISH on a channel of the same name, so Python clients and
// Conveyor clients read each other's results.

#include <chrono>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/broker.hpp"
#include "conveyor/error.hpp"
#include "conveyor/task.hpp"

struct redisContext;

namespace conveyor::results {

/// What a redis:// URL says: redis://[:PASSWORD@]HOST[:PORT][/DB].
struct RedisOptions {
    std::string host = "127.0.0.1";
    int port = 6379;
    int db = 0;
    std::string password;
    std::chrono::seconds expires{86400};  ///< result_expires: how long results are kept
    std::chrono::milliseconds timeout{5000};
};

Result<RedisOptions> parse_redis_url(std::string_view url);

/// Thread-safe: connections are pooled, each used by one thread at a time.
class RedisResults {
  public:
    explicit RedisResults(RedisOptions options);
    ~RedisResults();
    RedisResults(const RedisResults&) = delete;
    RedisResults& operator=(const RedisResults&) = delete;

    /// Connects once, so a wrong address is an error when the broker is opened.
    Result<void> check();
    /// Stores results (pipelined; one round trip for the lookups, one for the writes). A stored
    /// SUCCESS is never overwritten, as Celery does.
    Result<void> store(std::span<const TaskResult> results);
    /// The stored result, or PENDING when there is none.
    Result<TaskResult> get(std::string_view id);
    /// Waits for a ready state (SUCCESS, FAILURE, REVOKED), listening on the result's channel.
    Result<TaskResult> wait(std::string_view id, std::chrono::milliseconds timeout);

    /// Celery's chord counting (celery-taskset-meta-<gid>.s/.j/.t keys), so chords whose
    /// header tasks run on Python and Conveyor workers alike complete exactly once.
    Result<void> begin_chord(std::string_view group_id, std::size_t size);
    Result<ChordParts> chord_part_done(std::string_view group_id, int index,
                                       const TaskResult& part);

    /// Unique tasks on RabbitMQ: a key is a hash in Redis (conveyor-unique-KEY) of the task that
    /// holds it and the end of its hold period. take_unique takes it for task `id` unless some
    /// task holds it, and returns the holder (`id` when taken); a taken key lapses after `lease`
    /// unless keep_unique, once the task is published, extends it to `lapse_at`.
    /// release_unique: the task finished (succeeded, dead-lettered, revoked); the key goes, or
    /// stays until its hold period ends. drop_unique: the publish failed; the key goes. Each is
    /// one script, atomic in Redis, and changes the key only while `id` holds it.
    Result<std::string> take_unique(std::string_view key, std::string_view id,
                                    std::optional<TimePoint> hold_until,
                                    std::chrono::milliseconds lease);
    Result<void> keep_unique(std::string_view key, std::string_view id, TimePoint lapse_at);
    Result<void> release_unique(std::string_view key, std::string_view id);
    Result<void> drop_unique(std::string_view key, std::string_view id);
    static std::string unique_key(std::string_view key);

    static std::string key(std::string_view id);

    /// Rate and concurrency limits on RabbitMQ (broker/amqp/amqp_consumer.cpp says how a
    /// consumer uses them). The limits are a hash, conveyor-limits: task -> {"rate",
    /// "max_concurrency", "key"}; a limit that limits nothing is removed.
    Result<void> set_limit(const TaskLimit& limit);
    /// Every limit, with the tasks held back by it (until they are admitted, or a minute after
    /// they were due back) and the concurrency slots held under it now (`counts` false: the
    /// limits alone, in one round trip).
    Result<std::vector<LimitStats>> limits(bool counts = true);

    /// A concurrency slot: the sorted set of a task's key (slots_key) and the member that a
    /// running delivery holds there, scored by the end of its lease.
    struct Slot {
        std::string key;
        std::string member;
        std::string sets;  ///< slot_sets_key of its task: the key leaves it once empty
        std::string held;  ///< held_key of its task: whether tasks wait for a slot
    };
    /// What admit decided for one delivery, by Redis's clock (every host agrees on it).
    struct Admission {
        enum class Kind {
            run,    ///< start it `wait_ms` from now (a start reserved no further ahead than `hold`)
            later,  ///< a start is reserved `wait_ms` from now: it waits in the broker till then
            full,   ///< every slot is taken: it waits in the broker and asks again
        };
        Kind kind = Kind::run;
        double wait_ms = 0;
        TimePoint start;  ///< run, later: the start the limit counted, by Redis's clock
    };
    /// One delivery of a limited task to admit.
    struct Ask {
        TaskLimit limit;
        std::string key;   ///< its key under the limit ("" when the limit is not per key)
        std::string id;    ///< the task's id
        std::string slot;  ///< the member its concurrency slot would be
        /// It comes back for a start reserved for it earlier (kept unless it came back after
        /// it: then it takes the next free start, so that starts never come closer than
        /// 1/rate).
        bool reserved = false;
    };
    /// Admits deliveries of limited tasks, one script each: the concurrency slot first (taken
    /// as `slot` for `lease`), then the next start of the rate (spaced 1/rate apart across the
    /// fleet). A task held back is counted as waiting until it is admitted, or `back` and a
    /// minute later. All in one round trip: the scripts run one after the other, in their
    /// order, as if asked one by one.
    /// An ask that Redis answered with an error has no admission (nullopt); the call fails
    /// only when the connection did (then some of them may have been admitted).
    Result<std::vector<std::optional<Admission>>> admit_many(std::span<const Ask> asks,
                                                             std::chrono::milliseconds lease,
                                                             std::chrono::milliseconds hold,
                                                             std::chrono::milliseconds back);
    /// Slots given back: their tasks settled (or were handed back). For each, whether tasks of
    /// its task are held back now (one of them may take the slot: the caller wakes one).
    Result<std::vector<bool>> release_slots(std::span<const Slot> slots);
    /// A queue whose tasks under a concurrency limit may wait for a slot there.
    struct WaitingIn {
        std::string queue;
        TaskLimit limit;
    };
    /// How many tasks held back for a slot should be woken now, for each of `where`: as many as
    /// there are free slots and waiting tasks (one at most under a limit per key, whose free
    /// slots are per key). One caller a queue and task in `every` gets a count above zero; the
    /// others get zero, so that a fleet wakes the waiters of a queue once, not once per worker.
    Result<std::vector<std::int64_t>> wakeable(std::span<const WaitingIn> where,
                                               std::chrono::milliseconds every);
    /// Slots kept for another lease (their tasks still run). One that lapsed (its worker stalled
    /// past the lease) is not taken again, since another task may hold it now: returns how
    /// many had lapsed.
    Result<std::int64_t> renew_slots(std::span<const Slot> slots, std::chrono::milliseconds lease);
    static std::string slots_key(std::string_view task, std::string_view key);
    /// The slot `member` holds under `task`'s limit for `key`.
    static Slot slot_of(std::string_view task, std::string_view key, std::string member);
    /// The set of a task's slots_key names (for the counts of `limits`).
    static std::string slot_sets_key(std::string_view task);
    /// The ids of a task's tasks held back by its limits, each scored by when it no longer
    /// counts as waiting.
    static std::string held_key(std::string_view task);

  private:
    struct Conn;
    /// Runs a unique-key script (KEYS[1]: the key's hash) once; its reply as text.
    Result<std::string> eval(std::string_view script, std::string_view key,
                             std::initializer_list<std::string_view> args, std::string_view what);
    /// Runs a script with its keys and arguments; its reply as text, an array's as its elements
    /// (numbers in decimal).
    Result<std::vector<std::string>> eval_keys(std::string_view script,
                                               std::span<const std::string_view> keys,
                                               std::span<const std::string_view> args,
                                               std::string_view what);
    Result<std::unique_ptr<Conn>> checkout();
    void checkin(std::unique_ptr<Conn> c);

    RedisOptions opts_;
    std::mutex mu_;
    std::vector<std::unique_ptr<Conn>> idle_;
};

}  // namespace conveyor::results
