#pragma once
// Flow control in the sqlite engine: tasks' rate and concurrency limits held for every worker
// sharing the file, decided in the claim's write transaction.
//
// A claimed task whose limits do not let it start now is put back to wait (state kLimited,
// out of the ready index, so tasks behind it and tasks of other names are not held up) in its
// bucket (task and key). A bucket is looked at again at its wake time: for a rate limit when
// the next start is allowed, for a concurrency limit as soon as one of its tasks is settled
// (by any worker) or a limit changes; then the waiting tasks it may start go back to ready,
// in their order (priority, then age). A crashed worker's tasks count until their leases run
// out and they go back to ready.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include "broker/sqlite/sqlite_tables.hpp"
#include "conveyor/limits.hpp"

namespace conveyor::sqlite {

/// Every task's limits (a few rows), by task name.
using Limits = std::unordered_map<std::string, TaskLimit>;

/// Reads the limits (inside the claim's transaction, so a change applies to the next claim).
Result<Limits> read_limits(Statements& st);

/// Releases the tasks waiting in buckets whose wake time has come (inside a transaction):
/// as many as the bucket's limits let start (all of them once the task has no limit).
Result<void> wake_limited(Statements& st, const Limits& limits, std::int64_t now_ms,
                          CountDeltas& counts);

/// A claimed task under `limit`, decided: admitted (and counted against its bucket), or put
/// back to wait in its bucket.
struct Admission {
    bool admitted = true;
    std::string bucket;  ///< its bucket (task and key)
};
/// The tasks running in each bucket, as one claim has counted them: counted once per bucket
/// (up to its limit) and kept up as the claim admits more, so that admitting a batch reads
/// the bucket's running tasks once, not once per task.
using RunningCounts = std::unordered_map<std::string, std::int64_t>;
/// Decides whether a claimed task (row `seq` of `queue`, with its message's body) may start
/// now under `limit` (inside the claim's transaction; `running` is that claim's own, and the
/// claim has cleared its tasks' buckets, so none of them counts before it is admitted).
Result<Admission> admit(Statements& st, const TaskLimit& limit, std::int64_t seq,
                        std::string_view queue, std::string_view body, std::int64_t now_us,
                        RunningCounts& running, CountDeltas& counts);

/// Tasks of these buckets were settled: the buckets are looked at again now.
Result<void> wake_buckets(Statements& st, std::span<const std::string> buckets,
                          std::int64_t now_ms);

/// Stores a task's limits (removes them when it limits nothing) and wakes its buckets
/// (inside a transaction).
Result<void> store_limit(Db& db, const TaskLimit& limit);

/// Every limit with what waits on it and what runs under it.
Result<std::vector<LimitStats>> limit_stats(Db& db);

}  // namespace conveyor::sqlite
