#pragma once
// Test helper: one queue's counts.

#include <string>

#include "conveyor/broker.hpp"

namespace testsupport {

inline conveyor::QueueStats stats_of(conveyor::Broker& broker, const std::string& queue) {
    auto all = broker.stats();
    if (all) {
        for (auto& s : *all)
            if (s.queue == queue) return s;
    }
    return {};
}

}  // namespace testsupport
