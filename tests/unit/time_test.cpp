#include "core/time.hpp"

#include <gtest/gtest.h>

#include "core/url.hpp"

using namespace conveyor;
using namespace conveyor::detail;

TEST(Iso8601, ParsesCeleryAndCommonForms) {
    auto a = parse_iso8601("2026-11-27T03:31:03.835497+00:00");
    auto b = parse_iso8601("2026-11-27T03:31:03.835497Z");
    auto c = parse_iso8601("2026-11-27T03:31:03.835497");
    auto d = parse_iso8601("2026-11-27T05:31:03.835497+02:00");
    ASSERT_TRUE(a && b && c && d);
    EXPECT_EQ(*a, *b);
    EXPECT_EQ(*a, *c);
    EXPECT_EQ(*a, *d);
    EXPECT_EQ(to_epoch_ms(*a), 1795750263835);
    EXPECT_TRUE(parse_iso8601("2026-11-27"));
    EXPECT_TRUE(parse_iso8601("2026-11-27 03:31"));
}

TEST(Iso8601, RejectsGarbage) {
    for (auto s : {"", "tomorrow", "2026-13-01T00:00:00", "2026-11-27T25:00:00",
                   "2026-11-27T03:31:03+0x:00", "2026-11-27T03:31:03.", "2026-11-27Tx"})
        EXPECT_FALSE(parse_iso8601(s)) << s;
}

TEST(Iso8601, FormatRoundTrips) {
    auto t = parse_iso8601("2030-01-02T03:04:05.123456Z");
    ASSERT_TRUE(t);
    EXPECT_EQ(format_iso8601(*t), "2030-01-02T03:04:05.123456+00:00");
    EXPECT_EQ(parse_iso8601(format_iso8601(*t)), t);
}

TEST(BrokerUrl, SplitsSchemePathAndQuery) {
    auto u = parse_broker_url("sqlite:///var/lib/c.db?sync=normal&result_expires=60");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->scheme, "sqlite");
    EXPECT_EQ(u->rest, "/var/lib/c.db");
    EXPECT_EQ(u->query.at("sync"), "normal");
    EXPECT_FALSE(parse_broker_url("conveyor.db"));
    EXPECT_FALSE(parse_broker_url("sqlite://x?novalue"));
}
