#pragma once
// Schedules on the sqlite engine.

#include <memory>

#include "broker/sqlite/sqlite_broker.hpp"
#include "conveyor/engine.hpp"

namespace conveyor::sqlite {

/// A schedule store with a connection of its own.
Result<std::unique_ptr<ScheduleStore>> open_schedule_store(const SqliteOptions& sqlite);

}  // namespace conveyor::sqlite
