#include "broker/amqp/delay.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

using namespace conveyor::amqp;

namespace {

// Follows a routing key through the levels as RabbitMQ would: at each level the bit decides
// between waiting in the level's queue (2^L seconds) and passing on.
std::int64_t simulated_wait(const DelayRoute& r, std::string* destination) {
    int start = std::stoi(std::string(r.exchange.substr(r.exchange.rfind('.') + 1)));
    std::int64_t waited = 0;
    for (int level = start; level >= 0; --level) {
        char bit = r.routing_key[std::size_t(2 * (kDelayLevels - 1 - level))];
        if (bit == '1') waited += std::int64_t(1) << level;
    }
    *destination = r.routing_key.substr(2 * kDelayLevels);
    return waited;
}

}  // namespace

TEST(Delay, TenSecondsEntersAtLevelThreeWithBinaryKey) {
    auto r = delay_route(10, "orders");
    EXPECT_EQ(r.exchange, "conveyor.delay.3");
    std::string expected;
    for (int i = 0; i < 24; ++i) expected += "0.";
    EXPECT_EQ(r.routing_key, expected + "1.0.1.0.orders");
}

TEST(Delay, EveryDelayIsTheSumOfTheLevelsItWaitsIn) {
    for (std::int64_t s :
         std::initializer_list<std::int64_t>{1, 2, 3, 5, 40, 59, 3600, 86400, 86400 * 365,
                                             std::int64_t(86400) * 365 * 8, kMaxDelaySeconds}) {
        auto r = delay_route(s, "q");
        std::string dest;
        EXPECT_EQ(simulated_wait(r, &dest), s) << s;
        EXPECT_EQ(dest, "q");
        EXPECT_EQ(decode_delay_key(r.routing_key), s);
        EXPECT_LE(r.routing_key.size(), 255u);
    }
}

TEST(Delay, LongestDelayIsAboutEightAndAHalfYears) {
    EXPECT_EQ(kMaxDelaySeconds, 268435455);
    EXPECT_EQ(delay_route(kMaxDelaySeconds + 1000, "q").exchange, "conveyor.delay.27");
    EXPECT_EQ(delay_seconds(std::chrono::hours(24 * 365 * 20)), kMaxDelaySeconds);
}

TEST(Delay, SubSecondDelaysRoundUpSoATaskIsNeverEarly) {
    EXPECT_EQ(delay_seconds(std::chrono::milliseconds(1)), 1);
    EXPECT_EQ(delay_seconds(std::chrono::milliseconds(1000)), 1);
    EXPECT_EQ(delay_seconds(std::chrono::milliseconds(1001)), 2);
    EXPECT_EQ(delay_seconds(std::chrono::milliseconds(0)), 0);
    EXPECT_EQ(delay_seconds(std::chrono::milliseconds(-5)), 0);
}

TEST(Delay, BindingKeysSelectOneBitPerLevel) {
    EXPECT_EQ(delay_binding_key(27, true), "1.#");
    EXPECT_EQ(delay_binding_key(27, false), "0.#");
    EXPECT_EQ(delay_binding_key(26, true), "*.1.#");
    std::string k0 = delay_binding_key(0, false);
    EXPECT_EQ(k0.substr(k0.size() - 3), "0.#");
    EXPECT_EQ(std::count(k0.begin(), k0.end(), '*'), 27);
}

TEST(Delay, QueueNamesWithDotsAndWildcardsStayOneWord) {
    EXPECT_EQ(routing_word("orders.high"), "orders%2Ehigh");
    EXPECT_EQ(routing_word("a*b#c%d"), "a%2Ab%23c%25d");
    // "high" must not match a binding meant for "orders.high".
    EXPECT_EQ(routing_word("orders.high").find('.'), std::string::npos);
}

TEST(Delay, NonDelayKeysAreRecognised) {
    EXPECT_EQ(decode_delay_key("orders"), -1);
    EXPECT_EQ(decode_delay_key("0.1"), -1);
}
