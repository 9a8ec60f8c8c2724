#pragma once
// sqlite://PATH: the embedded default engine.

#include <chrono>
#include <memory>
#include <string>

#include "conveyor/broker.hpp"
#include "conveyor/engine.hpp"

namespace conveyor::sqlite {

struct SqliteOptions {
    std::string path;
    std::string synchronous = "FULL";            ///< FULL (durable), NORMAL or OFF
    std::chrono::seconds result_expires{86400};  ///< completed results are kept this long
    /// How long a write waits for another process's lock before it fails (and the worker
    /// backs off and tries again).
    std::chrono::milliseconds busy_timeout{10000};
    /// Finished tasks (succeeded, revoked) stay in the file this long, for the dashboard's
    /// history, with their attempts; 0 deletes them when they finish. Dead letters stay until
    /// replayed or purged. Per-minute counts are kept as long.
    std::chrono::seconds history{7 * 86400};
    /// ... and at most this many of them (the oldest go first).
    std::int64_t history_max = 1'000'000;
};

Result<std::shared_ptr<Broker>> open_sqlite_broker(const SqliteOptions& options);

}  // namespace conveyor::sqlite
