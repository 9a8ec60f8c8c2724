#include <fmt/format.h>

#include <cstdint>
#include <random>

#include "conveyor/task.hpp"

namespace conveyor {

std::string make_task_id() {
    thread_local std::mt19937_64 rng{std::random_device{}() ^
                                     (std::uint64_t(std::random_device{}()) << 32)};
    std::uint64_t hi = rng(), lo = rng();
    hi = (hi & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
    lo = (lo & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // RFC 4122 variant
    return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", std::uint32_t(hi >> 32),
                       std::uint32_t((hi >> 16) & 0xffff), std::uint32_t(hi & 0xffff),
                       std::uint32_t(lo >> 48), lo & 0xffffffffffffULL);
}

}  // namespace conveyor
