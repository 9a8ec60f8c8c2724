// Backing off while the broker fails for a while: detail::StorageBackoff with a moved clock.
#include "worker/storage_backoff.hpp"

#include <gtest/gtest.h>

namespace {

using conveyor::Errc;
using conveyor::Error;
using conveyor::detail::StorageBackoff;
using namespace std::chrono_literals;

const StorageBackoff::Clock::time_point start{std::chrono::seconds(1000)};
const Error busy{Errc::unavailable, "database is locked"};

TEST(StorageBackoff, OnlyWhatMayPassByItselfIsWaitedOut) {
    StorageBackoff b;
    EXPECT_FALSE(b.failed(Error{Errc::io, "not a database"}, start));
    EXPECT_FALSE(b.failing());
    EXPECT_TRUE(b.ready(start));
    EXPECT_TRUE(b.failed(busy, start));
    EXPECT_TRUE(b.failing());
}

TEST(StorageBackoff, WaitsDoubleEachTimeUpToFiveSeconds) {
    StorageBackoff b;
    auto now = start;
    std::vector<std::chrono::milliseconds> waits;
    for (int i = 0; i < 8; ++i) {
        ASSERT_TRUE(b.failed(busy, now));
        auto start = now;
        while (!b.ready(now)) now += 1ms;
        waits.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(now - start));
    }
    EXPECT_EQ(waits, (std::vector<std::chrono::milliseconds>{100ms, 200ms, 400ms, 800ms, 1600ms,
                                                             3200ms, 5000ms, 5000ms}));
}

TEST(StorageBackoff, ASuccessStartsOver) {
    StorageBackoff b;
    ASSERT_TRUE(b.failed(busy, start));
    ASSERT_TRUE(b.failed(busy, start + 100ms));
    b.succeeded();
    EXPECT_FALSE(b.failing());
    ASSERT_TRUE(b.failed(busy, start + 1s));
    EXPECT_FALSE(b.ready(start + 1s + 99ms));
    EXPECT_TRUE(b.ready(start + 1s + 100ms));
}

}  // namespace
