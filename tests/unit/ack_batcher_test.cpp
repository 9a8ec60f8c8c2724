// When settled RabbitMQ deliveries are acked: AckBatcher with a clock the test moves.
#include "broker/amqp/ack_batcher.hpp"

#include <gtest/gtest.h>

namespace {

using conveyor::amqp::AckBatcher;
using namespace std::chrono_literals;

const AckBatcher::Clock::time_point t0{};

std::vector<std::uint64_t> singles(const AckBatcher::Acks& a) { return a.singles; }

TEST(AckBatcher, EverythingSettledGoesInOneMultipleAck) {
    AckBatcher b(1000);
    for (std::uint64_t t = 1; t <= 10; ++t) b.settled(t);
    auto a = b.due(std::nullopt, false, t0);
    ASSERT_TRUE(a.up_to);
    EXPECT_EQ(*a.up_to, 10u);
    EXPECT_TRUE(a.singles.empty());
    EXPECT_TRUE(b.empty());
}

TEST(AckBatcher, AcksBelowTheOldestHeldDeliveryLingerBrieflyThenGoTogether) {
    AckBatcher b(1000);
    for (std::uint64_t t = 1; t <= 5; ++t) b.settled(t);
    // Delivery 6 is still running: 1..5 are covered, but few, so they wait a moment for more.
    EXPECT_TRUE(b.due(6, false, t0).empty());
    EXPECT_TRUE(b.due(6, false, t0 + 4ms).empty());
    auto a = b.due(6, false, t0 + AckBatcher::kLinger);
    ASSERT_TRUE(a.up_to);
    EXPECT_EQ(*a.up_to, 5u);
    EXPECT_TRUE(b.empty());
}

TEST(AckBatcher, AFullBatchBelowTheOldestHeldGoesAtOnce) {
    AckBatcher b(1000);
    for (std::uint64_t t = 1; t <= AckBatcher::kBatch; ++t) b.settled(t);
    auto a = b.due(AckBatcher::kBatch + 1, false, t0);
    ASSERT_TRUE(a.up_to);
    EXPECT_EQ(*a.up_to, AckBatcher::kBatch);
}

TEST(AckBatcher, AcksAboveAnUnsettledDeliveryWaitThenGoOneByOne) {
    AckBatcher b(1000);
    b.settled(2);
    b.settled(3);
    // Delivery 1 still runs: a multiple-ack would ack it too, so 2 and 3 wait...
    EXPECT_TRUE(b.due(1, false, t0).empty());
    EXPECT_TRUE(b.due(1, false, t0 + 99ms).empty());
    // ...at most kDelay, then go singly.
    auto a = b.due(1, false, t0 + AckBatcher::kDelay);
    EXPECT_FALSE(a.up_to);
    EXPECT_EQ(singles(a), (std::vector<std::uint64_t>{2, 3}));
    EXPECT_TRUE(b.empty());
}

TEST(AckBatcher, WaitingAcksNeverTakeMoreThanAQuarterOfThePrefetchWindow) {
    AckBatcher b(16);  // a quarter: 4
    for (std::uint64_t t = 2; t <= 4; ++t) b.settled(t);
    EXPECT_TRUE(b.due(1, false, t0).empty());  // 3 waiting: fewer than 4
    b.settled(5);
    auto a = b.due(1, false, t0);  // 4 waiting: sent at once
    EXPECT_EQ(singles(a), (std::vector<std::uint64_t>{2, 3, 4, 5}));
}

TEST(AckBatcher, WhenTheWindowIsCrowdedTheCoveredAcksGoInOneFrameNotOneByOne) {
    AckBatcher b(16);  // a quarter of the window: 4 (and a batch of 4)
    // Delivery 3 still runs: 1 and 2 are covered (too few to go at once), 4 and 5 above it.
    for (std::uint64_t t : {1, 2}) b.settled(t);
    EXPECT_TRUE(b.due(3, false, t0).empty());
    for (std::uint64_t t : {4, 5}) b.settled(t);
    // Four waiting fill their quarter: 1 and 2 go as one multiple-ack at once, which leaves
    // two, under the quarter: 4 and 5 keep waiting for 3...
    auto a = b.due(3, false, t0 + 1ms);
    ASSERT_TRUE(a.up_to);
    EXPECT_EQ(*a.up_to, 2u);
    EXPECT_TRUE(a.singles.empty());
    EXPECT_EQ(b.size(), 2u);
    // ...at most kDelay, then go singly.
    EXPECT_EQ(singles(b.due(3, false, t0 + AckBatcher::kDelay)),
              (std::vector<std::uint64_t>{4, 5}));
    EXPECT_TRUE(b.empty());
}

TEST(AckBatcher, AllSendsEverythingNowCoveredOnesAsOneFrame) {
    AckBatcher b(1000);
    for (std::uint64_t t : {1, 2, 3, 7, 8}) b.settled(t);
    auto a = b.due(5, true, t0);
    ASSERT_TRUE(a.up_to);
    EXPECT_EQ(*a.up_to, 3u);
    EXPECT_EQ(singles(a), (std::vector<std::uint64_t>{7, 8}));
    EXPECT_TRUE(b.empty());
}

TEST(AckBatcher, ClearForgetsAcksOfALostConnection) {
    AckBatcher b(1000);
    b.settled(1);
    b.clear();
    EXPECT_TRUE(b.due(std::nullopt, true, t0).empty());
}

}  // namespace
