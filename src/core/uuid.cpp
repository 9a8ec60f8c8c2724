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
    // 8-4-4-4-12 hex digits, written by hand (fmt took 6% of an enqueue in the profile).
    static constexpr char kHex[] = "0123456789abcdef";
    std::string id(36, '-');
    std::size_t at = 0;
    auto put = [&](std::uint64_t bits, int digits) {
        for (int i = digits - 1; i >= 0; --i) id[at++] = kHex[(bits >> (4 * i)) & 0xf];
    };
    put(hi >> 32, 8);
    ++at;
    put(hi >> 16, 4);
    ++at;
    put(hi, 4);
    ++at;
    put(lo >> 48, 4);
    ++at;
    put(lo, 12);
    return id;
}

}  // namespace conveyor
