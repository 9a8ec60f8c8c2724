#pragma once
// The sqlite engine's task history (conveyor/history.hpp).

#include <memory>

#include "broker/sqlite/sqlite_broker.hpp"
#include "conveyor/history.hpp"

namespace conveyor::sqlite {

/// A history with a connection of its own.
Result<std::unique_ptr<TaskHistory>> open_history(const SqliteOptions& sqlite);

}  // namespace conveyor::sqlite
