#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <random>

#include "conveyor/task.hpp"

namespace conveyor {

// RFC 9562's version 7: 48 bits of Unix time in milliseconds, then random bits. Ids made one
// after another sort one after another, so an index on them grows at its end, as a sequence
// does: the sqlite engine's id index takes new tasks at the rate of a table without one,
// however many it holds, where random (version 4) ids touch a different page of it per task.
// Within one millisecond a thread's ids still increase: the 12 bits after the version count
// on from a random start.
std::string make_task_id() {
    thread_local std::mt19937_64 rng{std::random_device{}() ^
                                     (std::uint64_t(std::random_device{}()) << 32)};
    thread_local std::uint64_t last_ms = 0;
    thread_local std::uint64_t counter = 0;
    auto ms = std::uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
    if (ms > last_ms) {
        last_ms = ms;
        counter = rng() & 0x7ff;  // room to count up before the 12 bits run out
    } else {
        ms = last_ms;  // the clock stepped back: keep the order
        if (++counter > 0xfff) {
            counter = 0;
            last_ms = ++ms;
        }
    }
    std::uint64_t hi = (ms << 16) | 0x7000 | counter;                            // version 7
    std::uint64_t lo = (rng() & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // variant
    return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", std::uint32_t(hi >> 32),
                       std::uint32_t((hi >> 16) & 0xffff), std::uint32_t(hi & 0xffff),
                       std::uint32_t(lo >> 48), lo & 0xffffffffffffULL);
}

}  // namespace conveyor
