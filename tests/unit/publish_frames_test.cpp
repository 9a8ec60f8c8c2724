// basic.publish frames written by amqp::PublishFrames are byte for byte what rabbitmq-c sends for
// the same publish (read from the other end of a socket pair), for a task's full properties,
// empty and multi-frame bodies, and a burst of several messages; and send_all's deadline.
#include "broker/amqp/publish_frames.hpp"

#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "broker/amqp/amqp_connection.hpp"
#include "conveyor/task.hpp"
#include "core/codec.hpp"

using namespace conveyor;
using namespace std::chrono_literals;

namespace {

struct Message {
    std::string exchange;
    std::string routing_key;
    bool mandatory = true;
    TaskMessage task;
    std::string body;
};

Message task_message(std::string body) {
    Message m;
    m.routing_key = "orders";
    m.task.id = "0190b2f4-8a41-7cc2-9d1e-3f3a8b2c1d00";
    m.task.name = "orders.bill";
    m.task.args = Json::array({42, "x"});
    m.task.kwargs = Json{{"card", "visa"}, {"n", 3}};
    m.task.priority = 7;
    m.task.retries = 2;
    m.task.reply_to = "replies";
    m.task.extra_headers = Json{{"tenant", "acme"}};
    m.body = std::move(body);
    return m;
}

/// What rabbitmq-c writes for `msgs`, each with amqp_basic_publish, and its frame_max.
std::pair<std::string, std::size_t> rabbitmq_c_bytes(const std::vector<Message>& msgs) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    std::string got;
    std::thread reader([&] {
        char buf[65536];
        for (ssize_t n; (n = ::read(sv[1], buf, sizeof buf)) > 0;) got.append(buf, std::size_t(n));
    });
    auto conn = amqp_new_connection();
    auto* sock = amqp_tcp_socket_new(conn);
    amqp_tcp_socket_set_sockfd(sock, sv[0]);
    std::size_t frame_max = std::size_t(amqp_get_frame_max(conn));
    amqp::Pool pool;
    for (auto& m : msgs) {
        auto props = amqp::properties(pool, m.task, 1700000000000);
        EXPECT_EQ(amqp_basic_publish(conn, 1, pool.bytes(m.exchange), pool.bytes(m.routing_key),
                                     m.mandatory ? 1 : 0, 0, &props,
                                     amqp_bytes_t{m.body.size(), const_cast<char*>(m.body.data())}),
                  AMQP_STATUS_OK);
    }
    ::shutdown(sv[0], SHUT_WR);
    reader.join();
    amqp_destroy_connection(conn);
    ::close(sv[1]);
    return {got, frame_max};
}

std::string our_bytes(const std::vector<Message>& msgs, std::size_t frame_max) {
    amqp::PublishFrames frames;
    amqp::Pool pool;
    for (auto& m : msgs) {
        auto props = amqp::properties(pool, m.task, 1700000000000);
        EXPECT_TRUE(frames.add(1, pool.bytes(m.exchange), pool.bytes(m.routing_key), m.mandatory,
                               props, amqp_bytes_t{m.body.size(), const_cast<char*>(m.body.data())},
                               frame_max));
    }
    return std::string(frames.bytes());
}

}  // namespace

TEST(PublishFrames, AreWhatRabbitmqCSendsForTheSamePublishes) {
    std::vector<std::vector<Message>> cases;
    cases.push_back({task_message(R"([[42, "x"], {"card": "visa"}, {}])")});
    cases.push_back({task_message("")});  // no body frame at all
    // Headers past the encoder's first guess of room (1 KiB): it grows and tries again.
    auto big_headers = task_message("[]");
    big_headers.task.extra_headers = Json{{"trace", std::string(3000, 't')}, {"n", 1}};
    cases.push_back({big_headers});
    // A body over several frames, cut where rabbitmq-c cuts it.
    cases.push_back({task_message(std::string(200'000, 'b'))});
    // A burst: several messages, one to an exchange, one not mandatory.
    std::vector<Message> burst;
    for (int i = 0; i < 5; ++i) {
        auto m = task_message(std::string(std::size_t(100 * i), char('a' + i)));
        m.task.id += std::to_string(i);
        if (i == 2) m.exchange = "events", m.routing_key = "order.created";
        if (i == 3) m.mandatory = false;
        burst.push_back(std::move(m));
    }
    cases.push_back(std::move(burst));
    for (std::size_t c = 0; c < cases.size(); ++c) {
        auto [theirs, frame_max] = rabbitmq_c_bytes(cases[c]);
        ASSERT_FALSE(theirs.empty());
        EXPECT_EQ(our_bytes(cases[c], frame_max), theirs) << "case " << c;
    }
}

TEST(PublishFrames, RefusesWhatDoesNotFitInAFrameAndAppendsNothing) {
    amqp::PublishFrames frames;
    amqp::Pool pool;
    auto ok = task_message("[]");
    auto props = amqp::properties(pool, ok.task, 0);
    ASSERT_TRUE(frames.add(1, pool.bytes(""), pool.bytes("q"), true, props,
                           amqp_bytes_t{ok.body.size(), ok.body.data()}, 4096));
    auto before = frames.size();
    // Headers larger than one frame: rabbitmq-c refuses them too.
    auto big = task_message("[]");
    big.task.extra_headers = Json{{"blob", std::string(10'000, 'z')}};
    auto big_props = amqp::properties(pool, big.task, 0);
    EXPECT_FALSE(frames.add(1, pool.bytes(""), pool.bytes("q"), true, big_props,
                            amqp_bytes_t{big.body.size(), big.body.data()}, 4096));
    EXPECT_EQ(frames.size(), before);
}

TEST(PublishFrames, SendAllWaitsForRoomUntilItsDeadline) {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ::fcntl(sv[0], F_SETFL, ::fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    std::string data(8 << 20, 'x');  // more than the socket buffers hold
    // Nobody reads: the deadline ends it.
    auto t0 = std::chrono::steady_clock::now();
    auto r = amqp::send_all(sv[0], data, t0 + 200ms);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::timeout);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 190ms);
    // With a reader, all of it arrives, in order.
    ::close(sv[0]);
    ::close(sv[1]);
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ::fcntl(sv[0], F_SETFL, ::fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = char('a' + i % 26);
    std::string got;
    std::thread reader([&] {
        char buf[65536];
        for (ssize_t n; (n = ::read(sv[1], buf, sizeof buf)) > 0;) got.append(buf, std::size_t(n));
    });
    ASSERT_TRUE(amqp::send_all(sv[0], data, std::chrono::steady_clock::now() + 10s));
    ::shutdown(sv[0], SHUT_WR);
    reader.join();
    EXPECT_EQ(got, data);
    ::close(sv[0]);
    ::close(sv[1]);
    // A peer that closed is an error, not a wait.
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ::fcntl(sv[0], F_SETFL, ::fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    ::close(sv[1]);
    auto closed = amqp::send_all(sv[0], "more", std::chrono::steady_clock::now() + 10s);
    ASSERT_FALSE(closed);
    EXPECT_EQ(closed.error().code, Errc::unavailable);
    ::close(sv[0]);
}
