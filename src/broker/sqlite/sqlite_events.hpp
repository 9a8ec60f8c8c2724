#pragma once
// A task history fed by Celery events (RabbitMQ): the events are folded into a local sqlite
// file laid out as the sqlite engine's own (tasks, minutes, workers), so that the same
// TaskHistory reads it.

#include <memory>
#include <span>

#include "broker/sqlite/sqlite_broker.hpp"
#include "conveyor/history.hpp"

namespace conveyor::sqlite {

/// Writes events into the file at `sqlite.path` (created with the engine's schema).
class EventFolder {
  public:
    virtual ~EventFolder() = default;
    /// Applies a batch of events (Celery's task-* and worker-*) in one transaction; unknown
    /// types and malformed fields are skipped. Prunes as the engine does, once a minute.
    [[nodiscard]] virtual Result<void> apply(std::span<const Json> events) = 0;
};

Result<std::unique_ptr<EventFolder>> open_event_folder(const SqliteOptions& sqlite);

}  // namespace conveyor::sqlite
