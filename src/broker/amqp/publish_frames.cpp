#include "broker/amqp/publish_frames.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace conveyor::amqp {

namespace {

constexpr std::size_t kHeaderSize = 7;  // type, channel, payload size
constexpr std::size_t kFooterSize = 1;  // AMQP_FRAME_END

void put16(std::string& b, std::size_t at, std::uint16_t v) {
    b[at] = char(v >> 8);
    b[at + 1] = char(v);
}

void put32(std::string& b, std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b[at + std::size_t(i)] = char(v >> (24 - 8 * i));
}

void put64(std::string& b, std::size_t at, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) b[at + std::size_t(i)] = char(v >> (56 - 8 * i));
}

}  // namespace

std::size_t PublishFrames::open_frame(std::uint8_t type, amqp_channel_t channel) {
    std::size_t at = buf_.size();
    buf_.resize(at + kHeaderSize);
    buf_[at] = char(type);
    put16(buf_, at + 1, channel);
    return at + kHeaderSize;
}

void PublishFrames::close_frame(std::size_t payload_at) {
    put32(buf_, payload_at - 4, std::uint32_t(buf_.size() - payload_at));
    buf_.push_back(char(AMQP_FRAME_END));
}

bool PublishFrames::add(amqp_channel_t channel, amqp_bytes_t exchange, amqp_bytes_t routing_key,
                        bool mandatory, const amqp_basic_properties_t& properties,
                        amqp_bytes_t body, std::size_t frame_max) {
    const std::size_t start = buf_.size();
    // What an encoder may write: as much as fits in one frame, as in rabbitmq-c's buffer.
    auto encode = [&](std::size_t fixed, auto&& write) {
        std::size_t cap = frame_max - kHeaderSize - kFooterSize - fixed;
        std::size_t at = buf_.size();
        for (std::size_t room = std::min<std::size_t>(cap, 1024);; room = std::min(cap, room * 4)) {
            buf_.resize(at + room);
            int n = write(amqp_bytes_t{room, buf_.data() + at});
            if (n >= 0) {
                buf_.resize(at + std::size_t(n));
                return true;
            }
            if (room == cap) return false;
        }
    };

    // basic.publish
    std::size_t method = open_frame(AMQP_FRAME_METHOD, channel);
    buf_.resize(method + 4);
    put32(buf_, method, AMQP_BASIC_PUBLISH_METHOD);
    amqp_basic_publish_t m{};
    m.exchange = exchange;
    m.routing_key = routing_key;
    m.mandatory = mandatory ? 1 : 0;
    if (!encode(4, [&](amqp_bytes_t out) {
            return amqp_encode_method(AMQP_BASIC_PUBLISH_METHOD, &m, out);
        })) {
        buf_.resize(start);
        return false;
    }
    close_frame(method);

    // Content header: class, weight 0, body size, then the properties.
    std::size_t header = open_frame(AMQP_FRAME_HEADER, channel);
    buf_.resize(header + 12);
    put16(buf_, header, AMQP_BASIC_CLASS);
    put16(buf_, header + 2, 0);
    put64(buf_, header + 4, body.len);
    auto props = properties;  // (the encoder takes a non-const pointer; it only reads)
    if (!encode(12, [&](amqp_bytes_t out) {
            return amqp_encode_properties(AMQP_BASIC_CLASS, &props, out);
        })) {
        buf_.resize(start);
        return false;
    }
    close_frame(header);

    // Body, in pieces of at most a frame.
    const std::size_t piece = frame_max - kHeaderSize - kFooterSize;
    for (std::size_t off = 0; off < body.len; off += piece) {
        std::size_t len = std::min(piece, body.len - off);
        std::size_t at = open_frame(AMQP_FRAME_BODY, channel);
        buf_.append(static_cast<const char*>(body.bytes) + off, len);
        close_frame(at);
    }
    return true;
}

Result<void> send_all(int fd, std::string_view data,
                      std::chrono::steady_clock::time_point deadline) {
    using namespace std::chrono;
    while (!data.empty()) {
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
            data.remove_prefix(std::size_t(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            auto left = duration_cast<milliseconds>(deadline - steady_clock::now()).count();
            if (left <= 0)
                return fail(Errc::timeout, "RabbitMQ did not take the published messages in time");
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, int(std::min<long long>(left, 60'000))) < 0 && errno != EINTR)
                return fail(Errc::unavailable,
                            fmt::format("publishing to RabbitMQ: {}", std::strerror(errno)));
            continue;
        }
        return fail(Errc::unavailable,
                    fmt::format("publishing to RabbitMQ: {}",
                                n == 0 ? "the connection was closed" : std::strerror(errno)));
    }
    return {};
}

}  // namespace conveyor::amqp
