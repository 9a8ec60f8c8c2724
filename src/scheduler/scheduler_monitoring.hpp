#pragma once
// A scheduler's monitoring state, shared by its loop and its HTTP listener.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "conveyor/scheduler.hpp"
#include "server/listener.hpp"

namespace conveyor {

struct Scheduler::Monitoring {
    std::mutex mu;
    std::optional<std::string> trouble;          // why the store cannot be used now
    std::map<std::string, std::uint64_t> fired;  // tasks published, per schedule
    std::unique_ptr<detail::HttpListener> http;
    std::atomic<int> port{0};
};

}  // namespace conveyor
