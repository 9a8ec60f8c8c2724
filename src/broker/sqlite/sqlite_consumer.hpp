#pragma once
// Consuming from the sqlite engine: claims with leases, settlements in one transaction.

#include <memory>

#include "broker/sqlite/sqlite_broker.hpp"
#include "conveyor/engine.hpp"

namespace conveyor::sqlite {

/// A consumer with a connection of its own.
Result<std::unique_ptr<Consumer>> open_consumer(const SqliteOptions& sqlite,
                                                const ConsumerOptions& options);

}  // namespace conveyor::sqlite
