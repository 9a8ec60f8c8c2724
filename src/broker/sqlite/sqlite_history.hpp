#pragma once
// The sqlite engine's task history (conveyor/history.hpp).

#include <memory>

#include "broker/sqlite/sqlite_broker.hpp"
#include "conveyor/history.hpp"

namespace conveyor::sqlite {

/// A history with a connection of its own. `from_events`: a file fed by Celery events
/// (RabbitMQ), whose tasks live in the broker: retry and revoke are refused there.
Result<std::unique_ptr<TaskHistory>> open_history(const SqliteOptions& sqlite,
                                                  bool from_events = false);

}  // namespace conveyor::sqlite
