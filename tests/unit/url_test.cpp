// One parser for every URL authority (amqp, amqps, redis), and the names this process gives
// itself.
#include "core/url.hpp"

#include <gtest/gtest.h>

#include "core/node.hpp"
#include "results/redis_results.hpp"

using namespace conveyor;

TEST(Authority, SplitsUserPasswordHostAndPort) {
    auto a = detail::parse_authority("guest:p%40ss%3Aword@rabbit.local:5673", "amqp URL");
    ASSERT_TRUE(a) << a.error().message;
    EXPECT_EQ(a->user, "guest");
    EXPECT_EQ(a->password, "p@ss:word");
    EXPECT_TRUE(a->has_password);
    EXPECT_EQ(a->host, "rabbit.local");
    EXPECT_EQ(a->port, 5673);

    a = detail::parse_authority("host-only", "amqp URL");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->host, "host-only");
    EXPECT_FALSE(a->port);
    EXPECT_FALSE(a->has_password);

    a = detail::parse_authority(":secret@127.0.0.1", "x");  // redis://:PASSWORD@host
    ASSERT_TRUE(a);
    EXPECT_EQ(a->user, "");
    EXPECT_EQ(a->password, "secret");

    a = detail::parse_authority("[::1]:5672", "x");  // the port after an IPv6 address
    ASSERT_TRUE(a);
    EXPECT_EQ(a->host, "[::1]");
    EXPECT_EQ(a->port, 5672);
    a = detail::parse_authority("[::1]", "x");
    ASSERT_TRUE(a);
    EXPECT_FALSE(a->port);

    for (const char* bad : {"h:0", "h:65536", "h:port", "h:", "h:-1", "h:99999999999"}) {
        auto r = detail::parse_authority(bad, "amqp URL");
        ASSERT_FALSE(r) << bad;
        EXPECT_EQ(r.error().code, Errc::invalid_argument);
        EXPECT_EQ(r.error().message.rfind("amqp URL port '", 0), 0u) << r.error().message;
    }
}

TEST(Authority, PercentDecodingLeavesLoneEscapesAlone) {
    EXPECT_EQ(detail::percent_decode("a%2Fb%2fc"), "a/b/c");
    EXPECT_EQ(detail::percent_decode("100%"), "100%");
    EXPECT_EQ(detail::percent_decode("%zz%4"), "%zz%4");
}

TEST(Authority, RedisAndAmqpReadCredentialsTheSameWay) {
    auto r = results::parse_redis_url("redis://:p%40ss@localhost:6380/2");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->password, "p@ss");
    EXPECT_EQ(r->host, "127.0.0.1");
    EXPECT_EQ(r->port, 6380);
    EXPECT_EQ(r->db, 2);
    r = results::parse_redis_url("redis://bare-password@h");  // as redis-py takes it
    ASSERT_TRUE(r);
    EXPECT_EQ(r->password, "bare-password");
    auto bad = results::parse_redis_url("redis://:secret@h:http/0");
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("port 'http' is not a port number"), std::string::npos)
        << bad.error().message;
    EXPECT_EQ(bad.error().message.find("secret"), std::string::npos) << bad.error().message;
}

TEST(NodeName, CeleryFormWithThisHost) {
    auto host = detail::host_name();
    EXPECT_FALSE(host.empty());
    EXPECT_EQ(detail::node_name("w1"), "w1@" + host);
    EXPECT_EQ(detail::node_name("w1@elsewhere"), "w1@elsewhere");
    EXPECT_EQ(detail::node_name(), "conveyor-" + std::to_string(getpid()) + "@" + host);
    EXPECT_EQ(detail::process_name(), host + ":" + std::to_string(getpid()));
}
