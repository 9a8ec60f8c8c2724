// Per-key order: detail::KeyOrder, one task per key at a time, in arrival order.
#include "worker/key_order.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace {

using conveyor::detail::KeyOrder;

TEST(KeyOrder, TasksWithoutAKeyAreNeverHeld) {
    KeyOrder<int> k;
    EXPECT_TRUE(k.admit("", 1));
    EXPECT_TRUE(k.admit("", 2));
    EXPECT_EQ(k.done(""), std::nullopt);
}

TEST(KeyOrder, OneTaskPerKeyRunsTheOthersFollowInArrivalOrder) {
    KeyOrder<int> k;
    EXPECT_TRUE(k.admit("customer-1", 1));
    EXPECT_TRUE(k.admit("customer-2", 2));  // another key is not held up
    EXPECT_FALSE(k.admit("customer-1", 3));
    EXPECT_FALSE(k.admit("customer-1", 4));
    EXPECT_EQ(k.waiting(), 2u);
    EXPECT_EQ(k.done("customer-1"), 3);
    EXPECT_EQ(k.done("customer-1"), 4);
    EXPECT_EQ(k.done("customer-1"), std::nullopt);
    // The key is free again.
    EXPECT_TRUE(k.admit("customer-1", 5));
}

TEST(KeyOrder, DroppingAWaitingTaskKeepsTheRunningOne) {
    KeyOrder<int> k;
    k.admit("a", 1);
    k.admit("a", 2);
    k.admit("a", 3);
    EXPECT_EQ(k.drop("a", 2), std::nullopt);
    EXPECT_EQ(k.done("a"), 3);
}

TEST(KeyOrder, DroppingTheTaskAllowedToRunLetsTheNextOneUp) {
    KeyOrder<int> k;
    k.admit("a", 1);
    k.admit("a", 2);
    EXPECT_EQ(k.drop("a", 1), 2);
    EXPECT_EQ(k.done("a"), std::nullopt);
    EXPECT_TRUE(k.admit("a", 3));
}

TEST(KeyOrder, ShutdownTakesTheWaitingOnes) {
    KeyOrder<int> k;
    k.admit("a", 1);
    k.admit("a", 2);
    k.admit("b", 3);
    k.admit("b", 4);
    auto w = k.take_waiting();
    std::sort(w.begin(), w.end());
    EXPECT_EQ(w, (std::vector<int>{2, 4}));
    EXPECT_EQ(k.waiting(), 0u);
    EXPECT_EQ(k.done("a"), std::nullopt);
}

}  // namespace
