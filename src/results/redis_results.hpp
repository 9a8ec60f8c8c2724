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

  private:
    struct Conn;
    /// Runs a unique-key script (KEYS[1]: the key's hash) once; its reply as text.
    Result<std::string> eval(std::string_view script, std::string_view key,
                             std::initializer_list<std::string_view> args, std::string_view what);
    Result<std::unique_ptr<Conn>> checkout();
    void checkin(std::unique_ptr<Conn> c);

    RedisOptions opts_;
    std::mutex mu_;
    std::vector<std::unique_ptr<Conn>> idle_;
};

}  // namespace conveyor::results
