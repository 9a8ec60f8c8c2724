#pragma once
// memory://: an in-process engine with the same semantics as the durable ones.

#include <memory>
#include <string>

#include "conveyor/broker.hpp"
#include "conveyor/engine.hpp"

namespace conveyor::memory {

/// Returns the process-wide instance called `name`, creating it when no one holds it.
std::shared_ptr<Broker> open_memory_broker(const std::string& name);

}  // namespace conveyor::memory
