#pragma once
// basic.publish frames written into one buffer, as rabbitmq-c writes them (its own encoders: the
// same frames, byte for byte), so that a burst of publishes leaves in one send() rather than
// three per message (rabbitmq-c's method, header and body frames, each a system call).

#include <amqp.h>
#include <amqp_framing.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "conveyor/error.hpp"

namespace conveyor::amqp {

class PublishFrames {
  public:
    /// A message whose body is larger than this is better sent by rabbitmq-c from where it is
    /// than copied here.
    static constexpr std::size_t kMaxCopiedBody = std::size_t{64} << 10;

    /// Appends one message's frames (method, content header, body in pieces of at most
    /// `frame_max` - 8 bytes, as rabbitmq-c splits it). False when rabbitmq-c's encoders refuse
    /// the message (nothing is appended then).
    bool add(amqp_channel_t channel, amqp_bytes_t exchange, amqp_bytes_t routing_key,
             bool mandatory, const amqp_basic_properties_t& properties, amqp_bytes_t body,
             std::size_t frame_max);

    std::string_view bytes() const noexcept { return buf_; }
    std::size_t size() const noexcept { return buf_.size(); }
    bool empty() const noexcept { return buf_.empty(); }
    void clear() noexcept { buf_.clear(); }

  private:
    /// Opens a frame of `type` (its size is filled in by close_frame); the payload's offset.
    std::size_t open_frame(std::uint8_t type, amqp_channel_t channel);
    void close_frame(std::size_t payload_at);

    std::string buf_;
};

/// Sends all of `data` on `fd` (a connected, possibly non-blocking stream socket), waiting for
/// room until `deadline`. Fails with Errc::timeout at the deadline and Errc::unavailable when
/// the connection failed; what part of `data` went is then unknown.
Result<void> send_all(int fd, std::string_view data,
                      std::chrono::steady_clock::time_point deadline);

}  // namespace conveyor::amqp
