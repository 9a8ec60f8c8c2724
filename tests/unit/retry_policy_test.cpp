#include "conveyor/retry_policy.hpp"

#include <gtest/gtest.h>

using namespace conveyor;
using std::chrono::milliseconds;

TEST(RetryPolicy, BackoffDoublesPerRetryWithoutJitter) {
    RetryPolicy p{.max_retries = 5, .backoff_base = 1.0, .backoff_max = 600, .jitter = false};
    EXPECT_EQ(retry_delay(p, 0, 0.3), milliseconds(1000));
    EXPECT_EQ(retry_delay(p, 1, 0.3), milliseconds(2000));
    EXPECT_EQ(retry_delay(p, 4, 0.3), milliseconds(16000));
}

TEST(RetryPolicy, BackoffIsCappedAtMaxDelay) {
    RetryPolicy p{.max_retries = 100, .backoff_base = 1.0, .backoff_max = 600, .jitter = false};
    EXPECT_EQ(retry_delay(p, 10, 0.5), milliseconds(600000));
    EXPECT_EQ(retry_delay(p, 1000, 0.5), milliseconds(600000));  // no overflow
}

TEST(RetryPolicy, FullJitterSpansZeroToTheBound) {
    RetryPolicy p{.max_retries = 5, .backoff_base = 2.0, .backoff_max = 60, .jitter = true};
    EXPECT_EQ(retry_delay(p, 2, 0.0), milliseconds(0));
    EXPECT_EQ(retry_delay(p, 2, 0.5), milliseconds(4000));
    EXPECT_EQ(retry_delay(p, 2, 1.0), milliseconds(8000));
    EXPECT_EQ(retry_delay(p, 9, 1.0), milliseconds(60000));
}

TEST(RetryPolicy, RetriesStopAtTheBudget) {
    RetryPolicy p{.max_retries = 2};
    EXPECT_TRUE(may_retry(p, 0));
    EXPECT_TRUE(may_retry(p, 1));
    EXPECT_FALSE(may_retry(p, 2));
    EXPECT_FALSE(may_retry(RetryPolicy{.max_retries = 0}, 0));
}
