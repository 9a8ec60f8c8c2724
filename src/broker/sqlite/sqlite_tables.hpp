#pragma once
// How the sqlite engine keeps tasks: the tables, a task row to and from an envelope, the
// prepared statements of a connection, transactions, and a write-ahead log someone deleted.

#include <array>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>

#include "broker/sqlite/sqlite_broker.hpp"
#include "broker/sqlite/sqlite_db.hpp"
#include "conveyor/broker.hpp"
#include "core/try.hpp"

namespace conveyor::sqlite {

// A task's state column.
inline constexpr int kReady = 0;
inline constexpr int kInFlight = 1;
inline constexpr int kDead = 2;
inline constexpr int kDelayed = 3;
// Finished, kept as history until pruned (SqliteOptions::history).
inline constexpr int kSucceeded = 4;
inline constexpr int kRevoked = 5;
// Waiting in the broker for its task's limits (TaskLimit) to let it run.
inline constexpr int kLimited = 6;

/// Creates the tables of a new file, and moves an older file's tables forward.
Result<void> create_schema(Db& db);

/// Wall-clock time as stored: milliseconds since the epoch.
std::int64_t now_ms();
/// A message's properties as stored (JSON text).
std::string props_json(const Envelope& e);
/// The properties codec::encode gives a task's message, as stored.
std::string props_json(const TaskMessage& t);
/// A task row's columns back into an envelope.
Envelope make_envelope(const std::string& props, const std::string& headers, std::string body);
std::string headers_json(const Envelope& e);
int retries_of(const Envelope& e);
/// The task name a Celery message's headers carry; empty when none.
std::string_view task_name_of(const Envelope& e);

/// Sets a message's retry count in its headers back to 0 (where it has one): an UPDATE of
/// `messages` to which the caller adds its WHERE.
inline constexpr std::string_view kRetriesReset =
    "UPDATE messages SET headers=CASE WHEN json_valid(headers) AND "
    "json_type(headers,'$.retries') IS NOT NULL THEN json_set(headers,'$.retries',0) "
    "ELSE headers END";

/// Prepared statements of one connection.
struct Statements {
    /// Enqueueing writes tasks and their messages a chunk of rows per statement: 64, then 8,
    /// then 1 at a time (SQLite's work per statement run was as much as its work per row).
    static constexpr std::array<std::size_t, 3> kChunks = {64, 8, 1};
    std::array<Stmt, kChunks.size()> insert_tasks, insert_messages;
    /// A claim reads its tasks' messages the same way, a chunk of seqs a statement.
    std::array<Stmt, kChunks.size()> read_messages;
    /// Settling acks the same way, a chunk of kChunks[0] or kChunks[1] tasks a statement
    /// (RETURNING the seqs it settled; a single ack goes by `finish` or `ack`): kept as
    /// history, or deleted.
    std::array<Stmt, 2> finish_chunk, ack_chunk;
    Stmt top_seq, task_at, read_message, update_message, insert_queue, promote, reclaim, pick,
        claim, ack, finish, retry, dead, release, renew, store_result, probe_ready, next_delayed,
        next_lease, data_version, expire_results, count_minute, add_count, oldest_finished,
        count_finished, delete_seq, expire_minutes, expire_unique, read_limits, wake_due, next_wake,
        release_limited, clear_wake, bucket_next, bucket_running, bucket_waits, set_bucket, park,
        bucket_started, ensure_bucket, wake_now, wake_bucket, user_version, read_fair, fair_turn,
        fair_last, fair_keep, fair_taken, fair_forget;

    /// Prepares every statement on `db`.
    static Result<Statements> prepare(Db& db);
};

/// What a transaction changes in the number of tasks by queue and state (ready, dead, delayed,
/// limited),
/// written to the `counts` table before it commits: counting a queue then reads a row per
/// state, whatever the queue holds. Tasks in flight are counted from their index (there are
/// as many as the workers hold, and settling them then writes no count); finished tasks
/// (history) are not counted.
class CountDeltas {
  public:
    void add(std::string_view queue, int state, std::int64_t n) {
        if ((state != kReady && state != kDead && state != kDelayed && state != kLimited) || n == 0)
            return;
        for (auto& e : d_)
            if (e.state == state && e.queue == queue) {
                e.n += n;
                return;
            }
        d_.push_back({std::string(queue), state, n});
    }
    void move(std::string_view queue, int from, int to) {
        add(queue, from, -1);
        add(queue, to, 1);
    }
    /// Adds them to `counts` (inside the transaction) and forgets them.
    Result<void> write(Statements& st);

  private:
    struct Entry {
        std::string queue;
        int state;
        std::int64_t n;
    };
    std::vector<Entry> d_;  // a few queues at a time: a list beats a map
};

/// Steps a statement once: its first row's first column as an integer (0 without a row); the
/// statement is reset.
Result<std::int64_t> first_i64(Stmt& st);

/// Runs a statement that changes at most one task row and returns its queue (RETURNING
/// queue): 1 and the queue when it changed one, 0 when none.
Result<int> run_returning_queue(Stmt& st, std::string& queue);

/// Deletes (inside a transaction) results past result_expires, and finished tasks and
/// per-minute counts past the history period or beyond history_max, a bounded number of tasks
/// at a time.
Result<void> prune_history(Statements& st, const SqliteOptions& sqlite);

/// Tasks finished in one minute, for one queue and task name (the `minutes` table).
struct MinuteCount {
    std::int64_t succeeded = 0, failed = 0, retried = 0, dead = 0, run_ms = 0, waited = 0,
                 wait_ms = 0;
};
/// Adds `c` to the row of (minute, queue, name) (inside a transaction).
Result<void> count_minute(Statements& st, std::int64_t minute, std::string_view queue,
                          std::string_view name, const MinuteCount& c);

/// Stores a result (inside a transaction).
Result<void> store_result(Statements& s, const TaskResult& r);
/// A write-ahead log someone deleted is copied into the database and the connection reopened
/// with fresh statements before this connection writes again (see Db::recover_replaced_wal).
Result<void> keep_wal(Db& db, Statements& st);

/// Runs `fn` inside BEGIN IMMEDIATE. A failure that may pass by itself (a moment's I/O error, a
/// lock SQLite gave up on early) is retried, a few times; a lock another process held for the
/// whole busy timeout is the caller's to see at once (a worker backs off and says so: README,
/// "Storage trouble is waited out").
template <class Fn>
auto in_transaction(Db& db, Statements& st, Fn&& fn, Commit how = Commit::durable)
    -> decltype(fn()) {
    CONVEYOR_TRY(keep_wal(db, st));
    auto again = [](const Error& e) { return e.code == Errc::unavailable && !lock_wait_ran_out(); };
    for (int attempt = 0;; ++attempt) {
        (void)lock_wait_ran_out();
        auto tx = Transaction::begin(db, how);
        if (!tx) {
            if (attempt < 5 && again(tx.error())) continue;
            return std::unexpected(tx.error());
        }
        auto r = fn();
        if (!r) return r;
        (void)lock_wait_ran_out();
        if (auto c = tx->commit(); !c) {
            if (attempt < 5 && again(c.error())) continue;
            return std::unexpected(c.error());
        }
        return r;
    }
}

/// What a connection knows of the queues it publishes to: which have their row, and the fair
/// queues with their keys, read again when the file says queue settings changed (its
/// user_version, which set_fair_keys raises).
struct KnownQueues {
    std::set<std::string, std::less<>> rows;
    std::map<std::string, std::string, std::less<>> fair;  // fair queue -> its fair_key
    std::int64_t version = -1;                             // the user_version `fair` is from

    /// After the transaction that inserted `msgs` committed (not before: a commit retried
    /// runs the inserts again), their queues have their rows.
    void committed(std::span<const OutgoingMessage> msgs) {
        for (auto& m : msgs)
            if (!rows.contains(m.queue)) rows.insert(m.queue);
    }
};

/// Inserts messages (inside a transaction); an id already known is dropped. (The caller
/// tells `known` once the transaction committed: KnownQueues::committed.) With a
/// `unique_key`, the tasks hold it (tasks_unique). A task of a fair queue gets its turn: one
/// after its key's latest task's, and not before the turn the queue's workers have reached,
/// so that keys take turns (SFQ: a key that was idle joins at the current turn).
Result<void> insert_messages(Statements& st, std::span<const OutgoingMessage> msgs,
                             KnownQueues& known, std::string_view unique_key = {});

/// Records the fair keys of the topology's queues (inside a transaction), raising the file's
/// user_version when one changed so that every publisher reads them again.
Result<void> set_fair_keys(Db& db, const Topology& topology);
/// Whether set_fair_keys would write anything (a read, outside a transaction: a process opening
/// the broker takes the write lock only when its settings are new).
Result<bool> fair_keys_differ(Db& db, const Topology& topology);

}  // namespace conveyor::sqlite
